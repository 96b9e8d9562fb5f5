"""The cost measurements, each a ratio of two timings taken in interleaved rounds.

Interleaving (every variant once per round, median over rounds) lets background load hit all
variants alike. Training steps run through the core's one engine: plain = UM at ξ 0 (CE bit
for bit), so the ratios time exactly what users run.
"""
from __future__ import annotations

import copy
import functools
import mmap
import statistics
import time
import warnings
from typing import Callable, Dict, List

import torch
from torch import nn

from um_plugin.core.config import FinetuneConfig
from um_plugin.core.finetune import Finetuner
from um_plugin.core.masks import attach_score_masks, iter_score_masks, num_kept, score_parameters
from um_plugin.core.xi import estimate_xi

from ..checks import BenchmarkError
from ..models import LeNet

MODELS = ("lenet", "resnet18")
XI = 0.05  # any ξ > 0 runs the UM objective; the value does not change the cost
# ResNet-18's largest conv (512 x 512 x 3 x 3 = 2,359,296 weights): the layer the issue names
BIG_LAYER = (512, 512, 3)
# (name, engine mode, ξ): plain training is the engine in UM mode at ξ = 0
VARIANTS = (("plain", "um", 0.0), ("um", "um", XI), ("umap", "umap", XI))


def build_model(name: str, num_classes: int = 10):
    """(model, input shape): the benchmarks' LeNet (28x28) or OpenOOD's ResNet18_32x32 (32x32)."""
    if name == "lenet":
        return LeNet(num_classes, 3), (3, 28, 28)
    if name == "resnet18":
        try:
            from openood.networks import ResNet18_32x32  # optional dependency
        except ImportError:
            raise BenchmarkError("model 'resnet18' is OpenOOD's ResNet18_32x32; install OpenOOD "
                            "or use --models lenet") from None
        return ResNet18_32x32(num_classes=num_classes), (3, 32, 32)
    raise BenchmarkError(f"unknown model {name!r}; valid: {list(MODELS)}")


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timing covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], None]], rounds: int, warmup: int,
                device: torch.device, clock: Callable[[], float] = time.perf_counter,
                faults: Dict[str, List[int]] | None = None) -> Dict[str, List[float]]:
    """Seconds per call of every function, ``rounds`` interleaved rounds after ``warmup``.

    Each round starts one variant later than the previous one, so no variant always runs
    right after the same other one: what a variant leaves behind (caches, the allocator's
    free lists) falls on every variant alike. ``clock`` is wall time by default;
    ``time.thread_time`` counts only this thread's CPU time (on the CPU with one torch
    thread, all of the work), which other processes' load does not inflate. ``faults``, when
    given, gets each call's minor page faults (memory the allocator took back from the
    system and touched again), where the platform counts them.
    """
    times = {k: [] for k in fns}
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    for r in range(rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            before = minor_faults() if faults is not None else None
            t = clock()
            fns[k]()
            sync(device)
            times[k].append(clock() - t)
            if before is not None:
                faults.setdefault(k, []).append(minor_faults() - before)
    return times


def minor_faults() -> int | None:
    """This process's minor page faults so far, or None where the platform does not count them
    (not a Unix, or a kernel or sandbox whose ``getrusage`` reports none: see ``counts_faults``)."""
    return _minflt() if counts_faults() else None


def _minflt() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


PROBE_PAGES = 64  # pages the probe of counts_faults touches


@functools.lru_cache(maxsize=None)
def counts_faults() -> bool:
    """Whether ``getrusage`` counts this process's minor page faults, probed once: some kernels
    and sandboxes answer 0 whatever the process touches, and a 0 must not read as "no faults"."""
    try:
        before = _minflt()
    except ImportError:  # not a Unix
        return False
    touch_fresh_pages(PROBE_PAGES)
    return _minflt() - before > 0


def touch_fresh_pages(pages: int) -> None:
    """Map ``pages`` pages of anonymous memory straight from the system (no allocator that may
    keep them), write one byte to each and unmap them: one minor fault per page, with huge
    pages turned off for the mapping where the platform lets us."""
    size = pages * mmap.PAGESIZE
    with mmap.mmap(-1, size) as m:
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
        for offset in range(0, size, mmap.PAGESIZE):
            m[offset] = 1


def median(times: Dict[str, List[float]]) -> Dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(times: Dict[str, List[float]], num: str, den: str) -> tuple:
    """Median and interquartile range of ``num / den`` taken round by round.

    Both timings of a pair come from the same round, so load that drifts over the run
    cancels in each ratio; the quartiles show how far the remaining noise spreads.
    """
    ratios = sorted(a / b for a, b in zip(times[num], times[den]))
    if len(ratios) < 4:
        return statistics.median(ratios), (ratios[0], ratios[-1])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), (q1, q3)


def tuner_settings(mode: str, keep_ratio: float) -> dict:
    """The ``FinetuneConfig`` fields of every timed run: long enough that the cosine schedule
    never ends while being timed."""
    return dict(mode=mode, epochs=10 ** 6, lr=0.01, momentum=0.9, weight_decay=1e-4,
                nesterov=True, keep_ratio=keep_ratio, threshold="layer", freeze_weights=True,
                beta=1.0, min_lr=0.0, seed=0, precision="fp32", progress=False)


def tuner_for(model: nn.Module, mode: str, xi: float, keep_ratio: float, steps: int) -> Finetuner:
    """An engine run of ``mode`` at ``xi`` with :func:`tuner_settings`."""
    return Finetuner(model, xi, FinetuneConfig(**tuner_settings(mode, keep_ratio)),
                     steps_per_epoch=steps)


def variant_tuners(base: nn.Module, keep_ratio: float, steps: int) -> Dict[str, Finetuner]:
    """One engine run per variant (plain, UM, UMAP), each on its own copy of ``base``."""
    return {mode: tuner_for(copy.deepcopy(base).train(), engine_mode, xi, keep_ratio, steps)
            for mode, engine_mode, xi in VARIANTS}


def training_steps(base: nn.Module, x, y, keep_ratio: float, rounds: int, warmup: int,
                   round_steps: int, device: torch.device) -> dict:
    """Seconds per step of plain (UM at ξ 0), UM and UMAP, each ``round_steps`` steps a round."""
    batches = [(x, y)] * round_steps
    tuners = variant_tuners(base, keep_ratio, round_steps)
    fns = {k: (lambda t=t: t.train_epoch(batches)) for k, t in tuners.items()}
    faults: Dict[str, List[int]] = {}
    times = interleaved(fns, rounds, warmup, device, faults=faults)
    step = {k: v / round_steps for k, v in median(times).items()}
    counted = minor_faults() is not None
    res = {"step_s": step, "round_steps": round_steps, "rounds": rounds,
           # the allocator's share: pages given back to the system and faulted in again
           "minor_faults_per_step": ({k: statistics.median(v) / round_steps
                                      for k, v in faults.items()} if counted else None),
           "selection_share_of_umap_step": selection_share(tuners["umap"], batches, rounds,
                                                           device)}
    for name in ("umap", "um"):
        ratio, iqr = paired_ratio(times, name, "plain")
        res[f"ratio_{name}_vs_plain"], res[f"ratio_{name}_vs_plain_iqr"] = ratio, iqr
    if device.type == "cuda":
        res["syncs"] = sync_counts(base, x, y, keep_ratio)
    res["_tuners"] = tuners
    return res


def selection_share(tuner: Finetuner, batches, rounds: int, device: torch.device) -> float:
    """Fraction of UMAP steps spent refreshing masks, from a few more rounds, each refresh timed.

    A ratio within the same steps, so the machine's noise barely moves it (unlike a ratio of
    two timings taken apart); the sync around each refresh only matters on a GPU.
    """
    spent: List[float] = []
    groups = {id(m.group): m.group for _, _, m in iter_score_masks(tuner.model)}.values()
    for group in groups:
        def timed(member=None, _refresh=group.refresh):
            sync(device)
            start = time.perf_counter()
            _refresh(member)
            sync(device)
            spent.append(time.perf_counter() - start)
        group.refresh = timed
    try:
        total = sum(interleaved({"umap": lambda: tuner.train_epoch(batches)},
                                max(3, rounds // 3), 0, device)["umap"])
    finally:
        for group in groups:
            del group.refresh  # the class's method again
    return sum(spent) / total


def sync_counts(base: nn.Module, x, y, keep_ratio: float, long: int = 11) -> dict:
    """Host-device syncs per step and per epoch end, from epochs of 1 and ``long`` steps."""
    out = {}
    for mode, engine_mode, xi in VARIANTS:
        counts = {}
        for n in (1, long):
            tuner = tuner_for(copy.deepcopy(base).train(), engine_mode, xi, keep_ratio, n)
            tuner.train_epoch([(x, y)] * n)  # warm-up: the first epoch may check more
            counts[n] = count_syncs(lambda: tuner.train_epoch([(x, y)] * n))
        per_step = (counts[long] - counts[1]) / (long - 1)
        out[mode] = {"per_step": per_step, "per_epoch_end": counts[1] - per_step}
    return out


def count_syncs(fn: Callable[[], None]) -> int:
    """Host-device synchronisations ``fn`` makes, counted by CUDA's sync debug mode."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def official_sort_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The official code's mask (``GetSubnet``): a full sort, the smallest ``int((1-k)n)`` dropped."""
    flat = scores.detach().abs().flatten()
    out = torch.empty_like(flat)
    idx = flat.sort().indices
    j = int((1 - keep_ratio) * flat.numel())
    out[idx[:j]] = 0
    out[idx[j:]] = 1
    return out.view_as(scores)


def mask_selection(keep_ratio: float, rounds: int, warmup: int, device: torch.device) -> dict:
    """The core's masked weight vs the official sort on a 2.36M-weight layer, scores moving.

    Each call first moves the scores a little (as an optimizer step does), so the core cannot
    reuse a cached mask; both variants pay for that same update. Only public API is used:
    the masked weight is ``conv.weight``, the scores come from ``score_parameters``.
    """
    conv = nn.Conv2d(BIG_LAYER[0], BIG_LAYER[1], BIG_LAYER[2], bias=False)
    with torch.no_grad():  # no weight is 0: masked weights are equal iff the masks are, and
        # the nonzero count is the kept count (a random init holds an exact 0 now and then)
        conv.weight.uniform_(0.5, 1.0, generator=torch.Generator().manual_seed(2))
    conv = conv.to(device)
    attach_score_masks(conv, keep_ratio, generator=torch.Generator().manual_seed(0))
    (scores,) = score_parameters(conv)
    weight = conv.parametrizations.weight.original
    noise = 1e-4 * torch.randn(scores.shape, generator=torch.Generator().manual_seed(1)).to(device)

    @torch.no_grad()
    def fast():
        scores.add_(noise)
        conv.weight

    @torch.no_grad()
    def sort():
        scores.add_(noise)
        weight * official_sort_mask(scores, keep_ratio)

    raw = interleaved({"fast": fast, "sort": sort}, max(rounds, 5), warmup, device)
    times = median(raw)
    ratio, iqr = paired_ratio(raw, "sort", "fast")
    with torch.no_grad():
        masked = conv.weight
        same = torch.equal(masked, weight * official_sort_mask(scores, keep_ratio))
        kept = int(torch.count_nonzero(masked))
    return {"layer_weights": scores.numel(), "mask_s": times,
            "ratio_sort_vs_fast": ratio, "ratio_sort_vs_fast_iqr": iqr, "mask_equal_to_sort": same,
            "kept": kept, "kept_expected": num_kept(scores.numel(), keep_ratio)}


def inference(base: nn.Module, baked: nn.Module, x, rounds: int, warmup: int,
              device: torch.device) -> dict:
    """Forward time of the baked UMAP model vs the base model (they should be equal)."""
    ref, baked = copy.deepcopy(base).eval(), baked.eval()
    with torch.no_grad():
        raw = interleaved({"base": lambda: ref(x), "baked": lambda: baked(x)},
                          4 * rounds, max(warmup, 2), device)
    ratio, iqr = paired_ratio(raw, "baked", "base")
    return {"infer_s": median(raw), "ratio_baked_vs_base_inference": ratio,
            "ratio_baked_vs_base_inference_iqr": iqr,
            "baked_has_no_parametrizations": not any(hasattr(m, "parametrizations")
                                                     for m in baked.modules())}


def xi_throughput(base: nn.Module, shape, batch: int, images: int, device: torch.device) -> dict:
    """Images per second of ξ estimation (one random mask, eval mode, no grad)."""
    n = max(batch, images - images % batch)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, *shape, generator=gen),
                                          torch.randint(0, 10, (n,), generator=gen))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    model = copy.deepcopy(base)
    estimate_xi(model, [next(iter(loader))], progress=False)  # warm-up
    sync(device)
    t = time.perf_counter()
    estimate_xi(model, loader, progress=False)
    sync(device)
    return {"xi_images_per_s": n / (time.perf_counter() - t)}
