"""Real ``main.py`` runs on several processes / "machines" (localhost) for the launch tests.

Each run is ``um-openood run --cpu main.py`` on the tiny benchmark, with a LeNet that fits it,
test-time images (so ranks and runs see the same pixels) and the probe in ``launch_probe/``
saving what each rank holds after every epoch.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

import torch

from openood_fixtures import checkout_env, lenet, make_tiny_benchmark

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_probe")
DIST_TIMEOUT_S = 30  # gloo's collective timeout in these runs (OpenOOD's default: 30 minutes)
RUN_TIMEOUT_S = 400  # a hung run fails the test instead of hanging it


def tiny_setup(root) -> dict:
    """The tiny benchmark's dataset YAML and a LeNet checkpoint that fits it (loss ~0.5)."""
    from openood.datasets import get_dataloader
    from openood.utils import Config

    from um_plugin.openood.registry.datasets import dataset_config, save_yaml
    bench = make_tiny_benchmark(os.path.join(root, "data"))
    keys = ("name", "data_root", "num_classes", "id_train", "id_val", "id_test", "data_dir",
            "image_size")
    config = dataset_config(**{k: bench[k] for k in keys}, batch_size=12)
    yml = save_yaml(config, os.path.join(root, "tiny.yml"), "tiny")
    cfg = Config({**config, "preprocessor": {"name": "base"}, "num_workers": 0, "num_gpus": 1,
                  "num_machines": 1})
    cfg.parse_refs()
    [batch] = list(get_dataloader(cfg)["val"])  # 24 test-time images, one batch
    net = lenet(3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(batch["data"]), batch["label"]).backward()
        opt.step()
    ckpt = os.path.join(root, "base.ckpt")
    torch.save(net.state_dict(), ckpt)
    return {"yml": yml, "ckpt": ckpt, "root": str(root), "n_train": 24}


def start(checkout, tiny, trainer, out, *extra, probe=None, env=None):
    """Start ``um-openood run --cpu main.py`` (2 epochs, test-time images); a Popen."""
    from um_plugin.shipped import configs_root
    args = [sys.executable, "-m", "um_plugin.cli", "run", "--cpu",
            os.path.join(checkout, "main.py"), "--config", tiny["yml"],
            os.path.join(checkout, "configs/networks/lenet.yml"),
            os.path.join(configs_root(), f"train_{trainer}.yml"),
            os.path.join(checkout, "configs/preprocessors/base_preprocessor.yml"),
            "--network.checkpoint", tiny["ckpt"], "--num_workers", "0",
            "--output_dir", str(out), "--optimizer.num_epochs", "2",
            "--trainer.trainer_args.preprocessing", "test", "--merge_option", "merge",
            "--dist_timeout", str(DIST_TIMEOUT_S), *map(str, extra)]
    environment = checkout_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    if probe is not None:
        os.makedirs(probe, exist_ok=True)
        environment["PYTHONPATH"] = os.pathsep.join([PROBE, environment["PYTHONPATH"]])
        environment["UM_PROBE_DIR"] = str(probe)
    return subprocess.Popen(args, cwd=tiny["root"], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(*procs, timeout=RUN_TIMEOUT_S) -> list:
    """Wait for every started run (killing all if one hangs); ``(returncode, out, err)`` each."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:  # the launcher and any rank it spawned that is still there
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.returncode is None:
                proc.communicate()
    return results


def probes(folder) -> dict:
    """``{(rank, epoch): what that rank saved}`` from a probed run."""
    found = {}
    for path in glob.glob(os.path.join(str(folder), "rank*_epoch*.pt")):
        rank, epoch = os.path.basename(path)[4:-3].split("_epoch")
        found[int(rank), int(epoch)] = torch.load(path, weights_only=False)
    return found


def run_folder(out) -> str:
    [run] = glob.glob(os.path.join(str(out), "*", "s0"))
    return run


def load(path):
    return torch.load(path, weights_only=True)


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
