"""Compute cost of UM / UMAP relative to plain fine-tuning, measured in one run on one machine.

Ratios (median step time over interleaved rounds, so background load hits every variant
alike): UMAP step / plain step, UM step / plain step, the core's top-k mask op / the official
full-sort mask (checked to give the same mask), baked-UMAP inference / base inference; plus
ξ-estimation throughput (images/s) and peak memory per phase.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

MODELS = ("lenet", "resnet18")


class CostError(Exception):
    """A bad argument, reported as one line."""


def build_model(name: str, num_classes: int = 10):
    """(model, input shape): our LeNet (28x28) or OpenOOD's ResNet18_32x32 (32x32)."""
    if name == "lenet":
        from um_plugin.core.models import LeNet
        return LeNet(num_classes, 3), (3, 28, 28)
    if name == "resnet18":
        try:
            from openood.networks import ResNet18_32x32
        except ImportError:
            raise CostError("model 'resnet18' is OpenOOD's ResNet18_32x32; install OpenOOD "
                            "or use --models lenet") from None
        return ResNet18_32x32(num_classes=num_classes), (3, 32, 32)
    raise CostError(f"unknown model {name!r}; valid: {list(MODELS)}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Peak:
    """Peak memory of a phase: CUDA allocator peak, or the process RSS high-water mark."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:  # Linux: writing 5 resets VmHWM to the current RSS
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                self.ok = True
            except OSError:
                self.ok = False
            self.base = _rss_mib()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            self.delta_mib = self.peak_mib - self.base / 2 ** 20
        else:
            self.peak_mib = _hwm_mib() if self.ok else float("nan")
            self.delta_mib = self.peak_mib - self.base
        return False


def _rss_mib() -> float:
    return _status_field("VmRSS")


def _hwm_mib() -> float:
    return _status_field("VmHWM")


def _status_field(key: str) -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _plain_stepper(model, lr=0.01):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _tuner_stepper(model, mode, keep_ratio, steps):
    from um_plugin.core.finetune import FinetuneConfig, Finetuner
    cfg = FinetuneConfig(mode=mode, epochs=1, lr=0.01, keep_ratio=keep_ratio, progress=False)
    tuner = Finetuner(model, 0.05, cfg, steps_per_epoch=max(1, steps))
    return lambda x, y: tuner.step(x, y), tuner


def _interleaved(fns: Dict[str, Callable], x, y, steps: int, warmup: int, device) -> Dict[str, List[float]]:
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn(x, y)
    _sync(device)
    for _ in range(steps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(x, y)
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def measure_model(name: str, batch: int, steps: int, warmup: int, device, keep_ratio=0.8,
                  xi_images: int = 1024, progress: bool = True) -> dict:
    """All cost figures for one architecture."""
    from um_plugin.core.masks import (bake_masks, iter_score_masks, num_kept, sorted_reference_mask,
                              topk_mask_)
    from um_plugin.core.xi import estimate_xi
    torch.manual_seed(0)
    base, shape = build_model(name)
    base = base.to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    say = (lambda s: print(f"[cost] {name}: {s}", file=sys.stderr, flush=True)) if progress else (lambda s: None)
    res = {"model": name, "batch": batch, "input": list(shape), "steps": steps,
           "params": sum(p.numel() for p in base.parameters())}

    # --- training steps, interleaved
    plain_m, um_m, umap_m = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    for m in (plain_m, um_m, umap_m):
        m.train()
    fns = {"plain": _plain_stepper(plain_m)}
    fns["um"], _ = _tuner_stepper(um_m, "um", keep_ratio, steps)
    fns["umap"], umap_tuner = _tuner_stepper(umap_m, "umap", keep_ratio, steps)
    say(f"timing {steps} interleaved training steps (batch {batch})")
    times = _interleaved(fns, x, y, steps, warmup, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    res["step_s"] = med
    res["step_s_all"] = times
    res["ratio_umap_vs_plain"] = med["umap"] / med["plain"]
    res["ratio_um_vs_plain"] = med["um"] / med["plain"]

    # --- peak memory of one step of each
    mem = {}
    for k, fn in fns.items():
        with _Peak(device) as p:
            fn(x, y)
            _sync(device)
        mem[k] = {"peak_mib": p.peak_mib, "delta_mib": p.delta_mib}
    res["memory"] = mem

    # --- mask op: core top-k vs full sort, same masks, all layers of the UMAP model
    masks = [m for _, _, m in iter_score_masks(umap_m)]
    # persistent state UMAP adds while training: one score and one mask entry per weight
    res["memory"]["umap_mask_state_mib"] = sum(
        m.scores.numel() * m.scores.element_size() + m.mask.numel() * m.mask.element_size()
        for m in masks) / 2 ** 20
    same, exact = True, True
    for m in masks:
        keep = num_kept(m.scores.numel(), keep_ratio)
        a = topk_mask_(torch.empty_like(m.mask), m.scores, keep)
        b = sorted_reference_mask(m.scores, keep_ratio)
        if not torch.equal(a, b):
            # float32 |scores| tie at the threshold in layers of millions of weights; the
            # masks may then pick different tied entries but must agree everywhere else
            exact = False
            mag = m.scores.detach().abs()
            cut = mag.flatten().kthvalue(mag.numel() - keep + 1).values
            differ = a != b
            same &= bool(a.sum() == b.sum() and torch.all(mag[differ] == cut))
    bufs = [torch.empty_like(m.mask) for m in masks]

    def fast():
        for m, b in zip(masks, bufs):
            topk_mask_(b, m.scores, num_kept(m.scores.numel(), keep_ratio))

    def slow():
        for m in masks:
            sorted_reference_mask(m.scores, keep_ratio)
    mt = _interleaved({"topk": lambda *_: fast(), "sort": lambda *_: slow()}, None, None,
                      max(steps, 10), 2, device)
    res["mask_op_s"] = {k: statistics.median(v) for k, v in mt.items()}
    res["mask_same_as_sort"] = same  # equal up to the choice among exactly tied scores
    res["mask_bitwise_equal_to_sort"] = exact
    res["ratio_sort_vs_topk"] = res["mask_op_s"]["sort"] / res["mask_op_s"]["topk"]

    # --- inference: baked UMAP model vs base
    umap_tuner.finish()
    baked = umap_m.eval()
    ref = copy.deepcopy(base).eval()
    res["baked_has_no_parametrizations"] = not any(
        hasattr(mod, "parametrizations") for mod in baked.modules())
    with torch.no_grad():
        # forward passes are cheap and noisy: many more rounds than training steps
        it = _interleaved({"base": lambda a, b: ref(a), "baked": lambda a, b: baked(a)}, x, y,
                          max(4 * steps, 20), max(warmup, 2), device)
    res["infer_s"] = {k: statistics.median(v) for k, v in it.items()}
    res["ratio_baked_vs_base_inference"] = res["infer_s"]["baked"] / res["infer_s"]["base"]

    # --- xi estimation throughput (one random mask, eval mode, no grad)
    n = max(batch, xi_images - xi_images % batch)
    data = torch.utils.data.TensorDataset(torch.randn(n, *shape), torch.randint(0, 10, (n,)))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    est_model = copy.deepcopy(base)
    estimate_xi(est_model, [next(iter(loader))], progress=False)  # warm-up
    with _Peak(device) as p:
        _sync(device)
        t = time.perf_counter()
        estimate_xi(est_model, loader, progress=False)
        _sync(device)
        dt = time.perf_counter() - t
    res["xi_images_per_s"] = n / dt
    res["memory"]["xi_estimate"] = {"peak_mib": p.peak_mib, "delta_mib": p.delta_mib}
    say(f"umap/plain {res['ratio_umap_vs_plain']:.3f}, um/plain {res['ratio_um_vs_plain']:.3f}, "
        f"sort/topk {res['ratio_sort_vs_topk']:.1f}x, baked/base {res['ratio_baked_vs_base_inference']:.3f}")
    return res


def markdown(results: dict) -> str:
    """The cost table (targets from the issue in the header)."""
    lines = [f"Cost on {results['device_name']} (torch {results['torch']}, "
             f"{results['threads']} threads); median over interleaved rounds "
             f"({', '.join(str(r['model']) + ': ' + str(r['steps']) for r in results['models'])} steps).\n",
             "| model | batch | UMAP/plain step (≤1.10) | UM/plain step | full sort/top-k mask (≥5) "
             "| same mask (up to ties) | baked/base inference (1.00) | ξ estimation img/s | peak MiB plain / UMAP step (+ during the step); UMAP scores+masks MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        mem = r["memory"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['ratio_umap_vs_plain']:.3f} | "
            f"{r['ratio_um_vs_plain']:.3f} | {r['ratio_sort_vs_topk']:.1f}× | {r['mask_same_as_sort']} | "
            f"{r['ratio_baked_vs_base_inference']:.3f} | {r['xi_images_per_s']:.0f} | "
            f"{mem['plain']['peak_mib']:.0f} / {mem['umap']['peak_mib']:.0f} "
            f"(+{mem['plain']['delta_mib']:.0f} / +{mem['umap']['delta_mib']:.0f}); "
            f"mask state {mem['umap_mask_state_mib']:.0f} |")
    lines.append("\nStep times (s, median): " + "; ".join(
        f"{r['model']}: plain {r['step_s']['plain']:.4f}, UM {r['step_s']['um']:.4f}, "
        f"UMAP {r['step_s']['umap']:.4f}" for r in results["models"]))
    return "\n".join(lines) + "\n"


def run(models, batch=256, steps=10, warmup=2, device="auto", threads=0, out=None,
        progress=True) -> dict:
    """Measure every model; write ``cost.json`` / ``cost.md`` to ``out`` if given."""
    models = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise CostError(f"unknown model(s) {bad}; valid: {list(MODELS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise CostError(f"device must be 'auto', 'cpu' or 'cuda' (with a GPU), got {device!r}")
    if batch < 1 or steps < 1 or warmup < 0:
        raise CostError(f"need batch >= 1, steps >= 1, warmup >= 0; got {batch}, {steps}, {warmup}")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if out:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise CostError(f"output folder {out!r} is not writable ({exc.strerror})") from None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    results = {"device": device, "device_name": name, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "steps": steps, "models": []}
    for m in models:
        # a LeNet step takes ~0.1 s: many more rounds for a stable median at no real cost
        n = max(steps, 40) if m == "lenet" and steps >= 5 else steps
        results["models"].append(measure_model(m, batch, n, warmup, dev, progress=progress))
        if out:
            with open(os.path.join(out, "cost.json"), "w") as fh:
                json.dump(results, fh, indent=1)
    table = markdown(results)
    if out:
        with open(os.path.join(out, "cost.md"), "w") as fh:
            fh.write(table)
    results["table"] = table
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="um-bench-cost", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,resnet18", help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="um-bench-cost")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        r = run(a.models, a.batch, a.steps, a.warmup, a.device, a.threads, a.out,
                progress=not a.no_progress)
    except CostError as exc:
        print(f"um-bench-cost: error: {exc}", file=sys.stderr)
        return 2
    print(r["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
