"""Where UMAP's extra time goes: self time by op, UMAP minus plain, as a share of plain.

``python -m benchmarks.cost --profile`` profiles steps of both variants with
``torch.profiler`` (interleaved, a few rounds each) and prints, per op, how much more self
CPU time a UMAP step spends than a plain one (each op's least time over the rounds, since
load only adds time), as a percentage of the plain step. It also
states the *floor*: the element-wise passes over the masked weights that UMAP cannot avoid,
timed here as plain memory passes over those weights. On a GPU the time is the kernels'.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from um_plugin.core.masks import score_parameters

from .measure import sync

# The passes over every masked weight that any UMAP step needs, whatever the implementation:
# the forward's ``weight * mask``, the backward's ``grad * weight * sign(scores)`` (one fused
# pass at best) and the selection reading every score once against the threshold.
FLOOR_PASSES = (("forward: weight * mask", 1), ("backward: grad * weight * sign(scores)", 1),
                ("selection: |scores| against the cut, with its count", 1))
TOP = 14  # ops listed, largest difference first


def self_cpu_by_op(tuner, batches, device: torch.device = torch.device("cpu")
                   ) -> Dict[str, tuple]:
    """``(self microseconds, calls)`` per step by op name over one profiled epoch: CPU time,
    or on a GPU the time its kernels ran (the host's time there is mostly waiting)."""
    totals: Dict[str, list] = defaultdict(lambda: [0.0, 0])
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        tuner.train_epoch(batches)
        sync(device)
    for evt in prof.key_averages():
        totals[evt.key][0] += evt.self_device_time_total if cuda else evt.self_cpu_time_total
        totals[evt.key][1] += evt.count
    return {k: (t / len(batches), c / len(batches)) for k, (t, c) in totals.items()}


def pass_time(weights: List[torch.Tensor], device: torch.device, repeats: int = 20) -> float:
    """Seconds for one element-wise pass (read two, write one) over every masked weight."""
    outs = [torch.empty_like(w) for w in weights]
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for w, o in zip(weights, outs):
            torch.mul(w, w, out=o)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def umap_profile(tuners: dict, batches, rounds: int, plain_step_s: float,
                 device: torch.device = torch.device("cpu")) -> dict:
    """The UMAP-minus-plain breakdown by op and the floor, from the benchmark's tuners."""
    per, calls = {}, {}
    runs = {k: [] for k in ("plain", "umap")}
    for r in range(rounds):  # interleaved, one epoch each, so load falls on both alike
        for k in (("plain", "umap") if r % 2 == 0 else ("umap", "plain")):
            runs[k].append(self_cpu_by_op(tuners[k], batches, device))
    for k, dicts in runs.items():  # the least time per op: load only ever adds time
        keys = set().union(*dicts)
        per[k] = {op: min(d.get(op, (0.0, 0))[0] for d in dicts) for op in keys}
        calls[k] = {op: dicts[-1].get(op, (0.0, 0))[1] for op in keys}
    plain_total = sum(per["plain"].values())
    ops = set(per["plain"]) | set(per["umap"])
    diff = {op: per["umap"].get(op, 0.0) - per["plain"].get(op, 0.0) for op in ops}
    rows = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:TOP]
    extra_calls = {op: calls["umap"].get(op, 0) - calls["plain"].get(op, 0) for op in ops}
    weights = [p.detach() for p in score_parameters(tuners["umap"].model)]
    one_pass = pass_time(weights, device)
    floor = sum(n for _, n in FLOOR_PASSES) * one_pass
    return {"plain_self_cpu_us_per_step": plain_total, "clock": "device" if
            device.type == "cuda" else "cpu",
            "umap_minus_plain_share": (sum(per["umap"].values()) - plain_total) / plain_total,
            "by_op_share": {op: d / plain_total for op, d in rows},
            "by_op_extra_calls": {op: extra_calls[op] for op, _ in rows},
            "extra_calls_per_step": sum(v for k, v in extra_calls.items()
                                        if k.startswith("aten::")),
            # ops a plain step never runs (the selection's, the popup gradient's sign): the
            # total above can fall below zero, since UMAP updates fewer tensors than plain
            "umap_only_calls_per_step": sum(c for k, c in calls["umap"].items()
                                            if k.startswith("aten::") and not calls["plain"].get(k)),
            "masked_weights": sum(w.numel() for w in weights),
            "one_pass_s": one_pass, "floor_passes": [list(p) for p in FLOOR_PASSES],
            "floor_share": floor / plain_step_s}


def profile_markdown(name: str, batch: int, prof: dict) -> str:
    """The breakdown as a table, then the floor in one sentence."""
    what = "GPU kernel" if prof["clock"] == "device" else "CPU"
    lines = [f"\nUMAP minus plain, self {what} time by op ({name}, batch {batch}), as a share of "
             f"the plain step ({prof['plain_self_cpu_us_per_step'] / 1e3:.2f} ms self {what} "
             f"under the profiler); total {100 * prof['umap_minus_plain_share']:+.2f}%; wall time "
             f"UMAP/plain {prof['wall_ratio_umap_vs_plain']:.3f} (unprofiled); load average "
             f"{prof['load_start'][0]:.2f} -> {prof['load_end'][0]:.2f}:\n",
             "| op | UMAP - plain, % of plain step | calls per step, UMAP - plain |",
             "|---|---|---|"]
    lines += [f"| `{op}` | {100 * s:+.2f}% | {prof['by_op_extra_calls'][op]:+g} |"
              for op, s in prof["by_op_share"].items()]
    lines.append(f"\nUMAP calls {prof['extra_calls_per_step']:+g} aten ops per step more than "
                 f"plain, {prof['umap_only_calls_per_step']:g} of them ops plain never runs (counts: "
                 "the machine's load does not change them).")
    passes = ", ".join(f"{n} x {what}" for what, n in prof["floor_passes"])
    lines.append(f"\nFloor: {passes} over the {prof['masked_weights']:,} masked weights; one "
                 f"such pass takes {prof['one_pass_s'] * 1e3:.3f} ms here, so the floor is "
                 f"{100 * prof['floor_share']:.2f}% of the plain step.\n")
    return "\n".join(lines)

