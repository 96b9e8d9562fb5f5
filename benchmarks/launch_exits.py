"""Do launched ``main.py`` runs exit cleanly? Real runs in a row, counting any abort at exit.

    python -m benchmarks.launch_exits --openood <OpenOOD checkout> --out DIR [--runs 30]

A gloo process group that outlives ``destroy_process_group`` (something still holding it) lets
its threads race interpreter exit, and the rank dies of SIGABRT ("terminate called without an
active exception") after its work is done: before the fix, 6 of 30 test runs. Each run here is
``um-openood run --cpu main.py`` with ``--num_gpus 2`` (UM and UMAP in turn, 1 epoch, the tiny
benchmark); a rank that aborts makes the launch exit non-zero with a line naming the signal.
Writes ``DIR/launch_exits.json`` (every run's exit code, seconds and error line) and prints a
summary. Too slow for the test suite (about half a minute a run on 2 cores): run it by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.tiny import write_benchmark


def _setup(out: str) -> dict:
    """The tiny benchmark's dataset YAML and a (seeded, untrained) LeNet checkpoint."""
    from openood.networks.lenet import LeNet

    from um_plugin.openood.registry.datasets import dataset_config, save_yaml
    data = os.path.join(out, "data")
    write_benchmark(data, name="tiny", per_split=24)
    lists = {s: f"benchmark_imglist/tiny/{s}_tiny.txt" for s in ("train", "val", "test")}
    config = dataset_config("tiny", data, num_classes=3, id_train=lists["train"],
                            id_val=lists["val"], id_test=lists["test"],
                            data_dir="images_classic/", image_size=28, batch_size=12)
    torch.manual_seed(0)
    ckpt = os.path.join(out, "base.ckpt")
    torch.save(LeNet(num_classes=3, num_channel=3).state_dict(), ckpt)
    return {"yml": save_yaml(config, os.path.join(out, "tiny.yml"), "tiny"), "ckpt": ckpt}


def _run(openood: str, setup: dict, trainer: str, out: str) -> dict:
    from um_plugin.shipped import configs_root
    args = [sys.executable, "-m", "um_plugin.cli", "run", "--cpu",
            os.path.join(openood, "main.py"), "--config", setup["yml"],
            os.path.join(openood, "configs/networks/lenet.yml"),
            os.path.join(configs_root(), f"train_{trainer}.yml"),
            os.path.join(openood, "configs/preprocessors/base_preprocessor.yml"),
            "--network.checkpoint", setup["ckpt"], "--num_workers", "0", "--num_gpus", "2",
            "--output_dir", out, "--optimizer.num_epochs", "1", "--merge_option", "merge",
            "--dataset.train.batch_size", "12", "--trainer.trainer_args.preprocessing", "test",
            "--trainer.trainer_args.fit_check", "warn", "--dist_timeout", "60"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    errors = [line for line in proc.stderr.splitlines()
              if "error" in line.lower() or "terminate called" in line or "Abort" in line]
    return {"trainer": trainer, "exit": proc.returncode,
            "seconds": round(time.perf_counter() - start, 1),
            "completed": "Completed!" in proc.stdout.splitlines(), "errors": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launch_exits",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--openood", required=True, help="OpenOOD checkout (main.py, configs/)")
    parser.add_argument("--out", required=True, help="working folder (created)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    setup = _setup(args.out)
    runs = []
    for index in range(args.runs):
        trainer = ("um", "umap")[index % 2]
        runs.append(_run(args.openood, setup, trainer, os.path.join(args.out, f"run{index}")))
        print(f"run {index + 1}/{args.runs} {trainer}: exit {runs[-1]['exit']}, "
              f"{runs[-1]['seconds']} s {runs[-1]['errors'] or ''}", flush=True)
    bad = [r for r in runs if r["exit"] != 0 or not r["completed"] or r["errors"]]
    summary = {"runs": len(runs), "clean": len(runs) - len(bad), "load": os.getloadavg(),
               "details": runs}
    with open(os.path.join(args.out, "launch_exits.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{len(runs) - len(bad)} of {len(runs)} runs finished and exited cleanly "
          f"(load average {os.getloadavg()[0]:.1f})")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
