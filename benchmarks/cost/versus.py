"""Before and after in one run: UMAP steps of this checkout and of an earlier commit, interleaved.

``python -m benchmarks.cost.versus --baseline REV`` imports ``um_plugin`` as it was at ``REV``
(``git archive`` into a temporary folder, under another package name) beside this checkout's,
and times plain, UMAP-before and UMAP-after steps in the same interleaved rounds, so a shared
machine's load falls on all three alike. It then checks that both versions hold identical
masks, equal to the stable sort's, after the same steps. The load average is recorded at the
start and the end; on a loaded machine the ratios say little, and the record says so.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

from um_plugin.core.config import OFFICIAL_UMAP_KEEP_RATIO
from um_plugin.core.masks import iter_score_masks
from um_plugin.core.topk import sorted_reference_mask

from ..checks import BenchmarkError, writable_folder
from ..cli import OneLineParser, comma_list, run_main
from .measure import (MODELS, XI, count_syncs, interleaved, median, paired_ratio, tuner_for,
                      tuner_settings)
from .profile import self_cpu_by_op
from .run import model_and_batch

PROG = "python -m benchmarks.cost.versus"
ALIAS = "um_plugin_baseline"


def load_baseline(rev: str, folder: str):
    """``um_plugin`` as of ``rev``, importable as :data:`ALIAS` (its imports are relative)."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", root or ".", "archive", rev, "um_plugin"],
                             capture_output=True)
    if archive.returncode:
        raise BenchmarkError(f"--baseline {rev!r} is not a commit of this checkout with "
                             f"um_plugin/ ({archive.stderr.decode().strip()})")
    path = os.path.join(folder, "archive.tar")
    with open(path, "wb") as fh:
        fh.write(archive.stdout)
    with tarfile.open(path) as tar:
        tar.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "um_plugin"), os.path.join(folder, ALIAS))
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        del sys.modules[name]  # an earlier run's baseline in this process
    sys.path.insert(0, folder)
    return importlib.import_module(f"{ALIAS}.core.finetune"), importlib.import_module(
        f"{ALIAS}.core.config")


def baseline_tuner(finetune, config, model, keep_ratio: float, steps: int):
    """The same UMAP run as :func:`measure.tuner_for`, built by the baseline's engine."""
    settings = tuner_settings("umap", keep_ratio)
    return finetune.Finetuner(model, XI, config.FinetuneConfig(**settings), steps_per_epoch=steps)


def load() -> list:
    return list(os.getloadavg())


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def compare(name: str, batch: int, rounds: int, steps: int, warmup: int, keep_ratio: float,
            modules, clock: str, device: torch.device) -> dict:
    """Interleaved plain / UMAP-after / UMAP-before steps of one model; masks compared after;
    on a GPU, host-device syncs per step of each."""
    base, x, y = model_and_batch(name, batch, device)
    batches = [(x, y)] * steps
    tuners = {"plain": tuner_for(copy.deepcopy(base).train(), "um", 0.0, keep_ratio, steps),
              "umap_after": tuner_for(copy.deepcopy(base).train(), "umap", XI, keep_ratio, steps),
              "umap_before": baseline_tuner(*modules, copy.deepcopy(base).train(), keep_ratio,
                                            steps)}
    fns = {k: (lambda t=t: t.train_epoch(batches)) for k, t in tuners.items()}
    start = load()
    times = interleaved(fns, rounds, warmup, device, CLOCKS[clock])
    res = {"model": name, "batch": batch, "rounds": rounds, "round_steps": steps, "clock": clock,
           "load_start": start, "load_end": load(),
           "step_s": {k: v / steps for k, v in median(times).items()}}
    for num, den in (("umap_after", "plain"), ("umap_before", "plain"),
                     ("umap_after", "umap_before")):
        ratio, iqr = paired_ratio(times, num, den)
        res[f"ratio_{num}_vs_{den}"], res[f"ratio_{num}_vs_{den}_iqr"] = ratio, iqr
        # load only ever adds time: the fastest rounds are the least disturbed ones
        res[f"fastest_{num}_vs_{den}"] = min(times[num]) / min(times[den])
    # a count, which the machine's load does not change
    res["aten_calls_per_step"] = {k: sum(c for op, (_, c) in self_cpu_by_op(t, batches).items()
                                         if op.startswith("aten::"))
                                  for k, t in tuners.items()}
    if device.type == "cuda":
        res["syncs_per_step"] = {k: count_syncs(f) / steps for k, f in fns.items()}
    after = [m for _, _, m in iter_score_masks(tuners["umap_after"].model)]
    before = [m for _, _, m in _masks_of(tuners["umap_before"].model)]
    after[0].group.refresh()
    before[0].group.refresh()
    res["masks_identical_before_after"] = all(
        torch.equal(a.mask, b.mask) and torch.equal(a.scores, b.scores)
        for a, b in zip(after, before)) and len(after) == len(before)
    res["masks_equal_stable_sort"] = all(
        torch.equal(m.mask, sorted_reference_mask(m.scores, keep_ratio)) for m in after)
    return res


def _masks_of(model):
    module = importlib.import_module(f"{ALIAS}.core.masks")
    return module.iter_score_masks(model)


def markdown(results: dict) -> str:
    lines = [f"Before ({results['baseline']}) / after ({results['after']}), one process on "
             f"{results['device']}, {results['threads']} thread(s), {results['clock']} clock, "
             "plain / UMAP-after / "
             "UMAP-before interleaved; "
             "median of the ratio within a round [interquartile range] (ratio of the fastest "
             "rounds, which load disturbs least); load average "
             "(1, 5, 15 min) at the start and end of each row.\n",
             "| model | batch | rounds x steps | UMAP/plain after | UMAP/plain before | "
             "after/before | aten calls per step, plain / after / before | masks identical, "
             "= stable sort | load start -> end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        def cell(key):
            lo, hi = r[f"{key}_iqr"]
            fastest = r[key.replace("ratio_", "fastest_", 1)]
            return f"{r[key]:.3f} [{lo:.3f}-{hi:.3f}] ({fastest:.3f})"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['rounds']} x {r['round_steps']} | "
            f"{cell('ratio_umap_after_vs_plain')} | {cell('ratio_umap_before_vs_plain')} | "
            f"{cell('ratio_umap_after_vs_umap_before')} | "
            + " / ".join(f"{r['aten_calls_per_step'][k]:g}"
                         for k in ("plain", "umap_after", "umap_before")) + " | "
            f"{r['masks_identical_before_after']}, {r['masks_equal_stable_sort']} | "
            f"{' '.join(f'{v:.2f}' for v in r['load_start'])} -> "
            f"{' '.join(f'{v:.2f}' for v in r['load_end'])} |"
            + ("" if "syncs_per_step" not in r else " host syncs per step (an epoch's, end "
               "included, / its steps) plain / after / before: "
               + " / ".join(f"{r['syncs_per_step'][k]:g}"
                            for k in ("plain", "umap_after", "umap_before"))))
    return "\n".join(lines) + "\n"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the commit to compare with (e.g. main)")
    p.add_argument("--models", type=comma_list, default=list(MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--round-steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this thread's CPU time (which other processes' load "
                        "does not inflate; with --threads 1 it is all of the work)")
    p.add_argument("--out", default="results/cost")
    return p


def run(a) -> dict:
    bad = [m for m in a.models if m not in MODELS]
    if bad or a.batch < 1 or a.rounds < 1 or a.round_steps < 1 or a.threads < 1:
        raise BenchmarkError(f"need models from {list(MODELS)} and batch, rounds, round-steps, "
                             f"threads >= 1; got models {a.models}, batch {a.batch}, rounds "
                             f"{a.rounds}, round-steps {a.round_steps}, threads {a.threads}")
    if a.device == "cuda" and (not torch.cuda.is_available() or a.clock == "cpu"):
        raise BenchmarkError("--device cuda needs a GPU and the wall clock (--clock wall); "
                             f"GPU available: {torch.cuda.is_available()}, --clock {a.clock}")
    writable_folder("out", a.out)
    torch.set_num_threads(a.threads)
    after = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        modules = load_baseline(a.baseline, folder)
        results = {"baseline": a.baseline, "after": after, "threads": torch.get_num_threads(),
                   "clock": a.clock, "device": a.device,
                   "rows": []}
        for name in a.models:
            results["rows"].append(compare(name, a.batch, a.rounds, a.round_steps, a.warmup,
                                           OFFICIAL_UMAP_KEEP_RATIO, modules, a.clock,
                                           torch.device(a.device)))
            print(markdown(results).splitlines()[-1], flush=True)
    results["table"] = markdown(results)
    with open(os.path.join(a.out, "versus.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(a.out, "versus.md"), "w") as fh:
        fh.write(results["table"])
    return results


def main(argv=None) -> int:
    return run_main(PROG, build_parser(), argv, lambda a: a, run)


if __name__ == "__main__":
    sys.exit(main())
