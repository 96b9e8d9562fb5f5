"""Time the mask selection against the official full sort on one large layer (not a test).

    PYTHONPATH=. python benchmarks/mask_timing.py --threads 1 --steps 30
    PYTHONPATH=. python benchmarks/mask_timing.py --model resnet18   # every layer, per step

The layer is ResNet-18's largest conv (512x512x3x3, 2.36M weights). Each step moves every
score a little, as an optimizer step does (``--move`` is the step size relative to the score
scale), then times one selection: ``TopKSelector`` reusing its last threshold (the path a
UMAP run takes on the CPU), the same selector without a hint (first step, or
``topk_mask_`` called afresh), the sync-free path (what CUDA runs, forced here on the CPU:
its CPU time means little, a large layer takes one sort there, which is fast on a GPU)
and ``sorted_reference_mask``. Every mask is checked equal to the sort's. With ``--model``
(torchvision), one step is ``refresh_masks`` over all masked layers after every score moved,
against the sort of every layer.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from um_plugin.core.masks import (TopKSelector, attach_score_masks, iter_score_masks, num_kept,
                                  refresh_masks, sorted_reference_mask)


def whole_model(args):
    """Per-step selection over every layer of a torchvision model, against the full sort."""
    import torchvision
    model = getattr(torchvision.models, args.model)(num_classes=10)
    attach_score_masks(model, args.keep, generator=torch.Generator().manual_seed(0))
    masks = [m for _, _, m in iter_score_masks(model)]
    refresh_masks(model)
    g = torch.Generator().manual_seed(1)
    times = {"refresh": [], "sort": []}
    with torch.no_grad():
        for _ in range(args.steps):
            for m in masks:
                step = torch.randn(m.scores.shape, generator=g)
                m.scores.add_(args.move * m.scores.abs().max() * step)
            t = time.perf_counter()
            refresh_masks(model)
            times["refresh"].append(time.perf_counter() - t)
            t = time.perf_counter()
            refs = [sorted_reference_mask(m.scores, args.keep) for m in masks]
            times["sort"].append(time.perf_counter() - t)
            if not all(torch.equal(m.mask, r) for m, r in zip(masks, refs)):
                raise SystemExit("refresh: a mask differs from the full sort's")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.model}: {len(masks)} layers, {sum(m.mask.numel() for m in masks)} weights, "
          f"keep {args.keep}, {args.threads} thread(s), {args.steps} steps, move {args.move:g}: "
          f"median ms refresh {med['refresh']:.2f}, sort {med['sort']:.2f}, "
          f"sort / refresh {med['sort'] / med['refresh']:.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--keep", type=float, default=0.8)
    ap.add_argument("--move", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", default="512,512,3,3")
    ap.add_argument("--model", default=None, help="a torchvision model name, e.g. resnet18")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        return whole_model(args)
    dtype = getattr(torch, args.dtype)
    shape = tuple(int(v) for v in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    scores = torch.empty(shape)
    torch.nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=g)
    scale = scores.abs().max().item()
    scores = scores.to(dtype)
    keep = num_kept(scores.numel(), args.keep)
    mask = torch.empty_like(scores)
    hinted, fresh_sel, sync_free = TopKSelector(False), TopKSelector(False), TopKSelector(True)
    hinted.select_([mask], [scores], keep)  # the first step has no hint
    times = {"hint": [], "no_hint": [], "sync_free": [], "sort": []}
    for _ in range(args.steps):
        scores += (args.move * scale * torch.randn(shape, generator=g)).to(dtype)
        ref = sorted_reference_mask(scores, args.keep)
        for name, fn in (("hint", lambda: hinted.select_([mask], [scores], keep)),
                         ("no_hint", lambda: (fresh_sel._hints.clear(),
                                              fresh_sel.select_([mask], [scores], keep))),
                         ("sync_free", lambda: sync_free.select_([mask], [scores], keep)),
                         ("sort", lambda: sorted_reference_mask(scores, args.keep))):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if name != "sort" and not torch.equal(mask, ref):
                raise SystemExit(f"{name}: mask differs from the full sort's")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{scores.numel()} weights, {args.dtype}, keep {args.keep}, {args.threads} thread(s), "
          f"{args.steps} steps, move {args.move:g}: median ms " +
          ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print("sort / selection: " + ", ".join(f"{k} {med['sort'] / v:.1f}x"
                                           for k, v in med.items() if k != "sort"))


if __name__ == "__main__":
    main()
