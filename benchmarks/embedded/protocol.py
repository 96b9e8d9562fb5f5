"""The embedded benchmark's protocol: MNIST-5k ID vs letters / animal shapes / textures / photos / noise.

Per seed: train a LeNet to the final stage (100% train accuracy) keeping every epoch's
checkpoint; from the final checkpoint fine-tune with plain CE (control), UM and UMAP for each
candidate ξ; choose ξ per method on the validation OOD set (``ood.val``: other glyphs in other
font families, disjoint from every test set); score with MSP / ODIN / EBO / MaxLogit; report
FPR@95, AUROC, AUPR-In/Out per set plus near/far means and ID accuracy, mean ± std over seeds.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from um_plugin.core import MODES
from um_plugin.core.xi import estimate_xi

from . import datasets as emb
from ..checks import BenchmarkError
from .config import BenchConfig
from .records import (BenchResult, Candidate, DataSizes, ModelResult, OpenOODResult, SeedResult,
                      StagePoint, StageScore, XiEstimateRecord)
from .report import write_outputs
from .scoring import (OpenOODScorer, mean_val_auroc, metrics_from_scores, openood_missing,
                      score_all)
from .training import (checkpoint_path, finetune, load_checkpoint_model, make_loader, make_model,
                       train_accuracy, train_base)

TUNED = MODES


@dataclass
class Inputs:
    """The data one seed runs on, as tensors, and how test sets split into near / far."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    tensors: Dict[str, torch.Tensor]  # id_test, id_val, ood_val and every test OOD set
    id_label: np.ndarray
    set_split: Dict[str, str]

    def subset(self, keys) -> Dict[str, torch.Tensor]:
        return {k: self.tensors[k] for k in keys}


def prepare_inputs(data: emb.EmbeddedData, cfg: BenchConfig) -> Inputs:
    tensors = {"id_test": emb.to_tensor(data.id["test"][0]),
               "id_val": emb.to_tensor(data.id["val"][0]),
               "ood_val": emb.to_tensor(data.ood_val)}
    tensors.update({s: emb.to_tensor(x) for s, x in data.ood_sets().items() if s in cfg.sets})
    return Inputs(emb.to_tensor(data.id["train"][0]), torch.from_numpy(data.id["train"][1]),
                  tensors, data.id["test"][1], {s: data.split_of(s) for s in cfg.sets})


def run(cfg: BenchConfig) -> BenchResult:
    """Run the whole benchmark; writes results under ``cfg.out`` after every seed."""
    cfg.validate()
    with thread_limits(cfg.threads):
        return _run(cfg)


@contextlib.contextmanager
def thread_limits(threads: int):
    """``threads`` for torch and every OpenMP / BLAS pool (numpy's and scipy's OpenBLAS, faiss's
    OpenMP), whatever OMP_NUM_THREADS says, so the run's time does not depend on the shell it
    is started from; 0 leaves them all as they are. Restored on exit."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency ([bench])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def _run(cfg: BenchConfig) -> BenchResult:
    missing = openood_missing() if cfg.backend != "plugin" else None
    use_openood = cfg.backend == "openood" or (cfg.backend == "auto" and missing is None)
    if cfg.backend == "openood" and missing is not None:
        raise BenchmarkError("backend 'openood' needs OpenOOD installed (and um_plugin.openood)")
    if cfg.checkpoint:
        load_checkpoint_model(cfg.checkpoint)  # a wrong file stops here, before any work
    if cfg.backend == "auto" and missing is not None:
        print(f"scoring backend: the plug-in's scorers, not OpenOOD's Evaluator: OpenOOD cannot "
              f"be imported ({missing}); install it for OpenOOD's scoring (see README, Install)",
              file=sys.stderr)
    out = os.path.abspath(cfg.out)
    t0 = time.time()
    data = emb.build_embedded(seed=0, n_ood=cfg.n_ood, n_val_ood=cfg.n_val_ood, sets=cfg.sets)
    inputs = prepare_inputs(data, cfg)
    oo = None
    if use_openood:
        root = cfg.data_root or os.path.join(emb.default_cache_dir(), "openood_data",
                                             f"{emb.ID_NAME}-n{cfg.n_ood}-v{cfg.n_val_ood}")
        oo = OpenOODScorer(data, root, progress=cfg.progress)
    sizes = DataSizes(train=len(inputs.y_train), val=len(data.id["val"][1]),
                      test=len(inputs.id_label), ood={s: len(inputs.tensors[s]) for s in cfg.sets},
                      ood_val=len(data.ood_val))
    result = BenchResult(cfg, "openood" if oo else "plugin", sizes)
    try:
        for seed in cfg.seeds:
            result.seeds[seed] = run_seed(cfg, seed, inputs, out, oo, result)
            result.elapsed_s = time.time() - t0
            write_outputs(result, out, inputs.set_split)
    except KeyboardInterrupt:
        result.interrupted = True
        result.elapsed_s = time.time() - t0
        write_outputs(result, out, inputs.set_split)
        raise
    return result


class _Clock:
    """Adds wall time since the last lap to ``timing[name]``."""

    def __init__(self, timing: Dict[str, float]):
        self.timing, self.last = timing, time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.timing[name] = self.timing.get(name, 0.0) + now - self.last
        self.last = now


def run_seed(cfg: BenchConfig, seed: int, inputs: Inputs, out: str,
             oo: Optional[OpenOODScorer], result: BenchResult) -> SeedResult:
    """Everything for one seed: base training, stage curve, fine-tunes, selection, scoring."""
    rec = SeedResult(seed)
    clock = _Clock(rec.timing_s)
    ckpt_dir = os.path.join(out, "checkpoints", f"seed{seed}")
    if cfg.checkpoint:
        base = load_checkpoint_model(cfg.checkpoint)
    else:
        base, rec.train_log = train_base(inputs.x_train, inputs.y_train, cfg, seed, ckpt_dir,
                                         f"seed {seed}: train LeNet")
    clock.lap("train")
    rec.train_acc_final = train_accuracy(base, inputs.x_train, inputs.y_train)
    rec.final_stage_reached = rec.train_acc_final >= 1.0
    rec.stage = stage_curve(cfg, seed, inputs, ckpt_dir, rec)
    clock.lap("stage_curve")
    models = {"baseline": base}
    rec.models["baseline"] = ModelResult(_metrics(base, inputs, inputs.tensors, cfg.scores))
    if "ce" in cfg.methods:
        model, hist = finetune("ce", base, _fresh_loader(inputs, cfg, seed), 0.0, cfg, seed)
        models["ce"] = model
        rec.models["ce"] = ModelResult(_metrics(model, inputs, inputs.tensors, cfg.scores), hist)
    tuned = [m for m in TUNED if m in cfg.methods]
    if tuned:
        clock.lap("score_baseline_ce")
        loader = _fresh_loader(inputs, cfg, seed)
        cands, rec.xi_estimates = xi_candidates(cfg, base, loader, seed)
        clock.lap("xi_estimate")
        for mode in tuned:
            models[mode] = select_xi(cfg, seed, mode, base, cands, inputs, rec)
            clock.lap(f"{mode}_finetune_and_score")
    if oo is not None:
        rec.openood = score_with_openood(oo, models, inputs, cfg, f"seed {seed}: OpenOOD scoring")
        clock.lap("openood_scoring")
    if not result.hist:
        result.hist = {m: score_all(models[m], inputs.tensors,
                                    [s for s in ("ebo", "msp") if s in cfg.scores]) for m in models}
    return rec


def _metrics(model, inputs: Inputs, tensors, scores):
    return metrics_from_scores(score_all(model, tensors, scores), inputs.id_label, inputs.set_split)


def _fresh_loader(inputs: Inputs, cfg: BenchConfig, seed: int):
    # every fine-tune sees the same batch order, whatever ran before it: a shared loader's
    # generator made the same (seed, ξ) give different models in the default run and in
    # --xi-sweep (near AUROC differed by ~0.8)
    return make_loader(inputs.x_train, inputs.y_train, cfg.batch_size, seed + 1000)


def stage_curve(cfg: BenchConfig, seed: int, inputs: Inputs, ckpt_dir: str, rec: SeedResult):
    """The paper's core finding on this data: OOD AUROC across the base model's epochs."""
    if not rec.train_log:
        return []
    probe = make_model(seed)
    stage_scores = [s for s in ("msp", "ebo") if s in cfg.scores] or cfg.scores[:1]
    # every epoch while AUROC moves fast, then every other one (and always the last)
    last = rec.train_log[-1].epoch
    probed = [e.epoch for e in rec.train_log if e.epoch <= 10 or e.epoch % 2 == 0 or e.epoch == last]
    stage = []
    for epoch in tqdm(probed, desc=f"seed {seed}: score epochs", disable=not cfg.progress,
                      leave=False):
        probe.load_state_dict(torch.load(checkpoint_path(ckpt_dir, epoch), weights_only=True))
        m = _metrics(probe, inputs, inputs.tensors, stage_scores)
        stage.append(StagePoint(epoch, {s: StageScore(m[s].val.auroc, m[s].acc,
                                                      {k: v.auroc for k, v in m[s].sets.items()})
                                        for s in stage_scores}))
    return stage


def xi_candidates(cfg: BenchConfig, model, loader, seed: int):
    """(label, ξ) candidates: one estimate per keep ratio, then the fixed values."""
    cands, estimates = [], []
    for k in cfg.xi_keeps:
        est = estimate_xi(model, loader, keep_ratio=k, seed=seed, draws=cfg.xi_draws,
                          progress=False)
        estimates.append(XiEstimateRecord(k, float(est.xi), [float(d) for d in est.xi_draws],
                                          float(np.std(est.xi_draws))))
        cands.append((f"est@{k:g}", float(est.xi)))
    cands += [(f"fixed {v:g}", float(v)) for v in cfg.xi_fixed]
    return cands, estimates


def select_xi(cfg: BenchConfig, seed: int, mode: str, base, cands, inputs: Inputs,
              rec: SeedResult):
    """Fine-tune at every candidate, keep the best on ood.val; returns the chosen model."""
    val_keys = ("id_val", "ood_val")
    test_keys = [k for k in inputs.tensors if k not in val_keys]
    sweep_score = "ebo" if "ebo" in cfg.scores else cfg.scores[0]
    sweep, best = [], None
    for label, xi in tqdm(cands, desc=f"seed {seed}: {mode} over xi", disable=not cfg.progress,
                          leave=False):
        model, hist = finetune(mode, base, _fresh_loader(inputs, cfg, seed), xi, cfg, seed)
        # selection needs only ood.val; the ξ plot needs one score on the test sets
        m = _metrics(model, inputs, inputs.subset(val_keys), cfg.scores)
        test = _metrics(model, inputs, inputs.subset(test_keys), [sweep_score])[sweep_score]
        m[sweep_score].sets, m[sweep_score].acc = test.sets, test.acc
        entry = Candidate(label, xi, m, hist, mean_val_auroc(m))
        sweep.append(entry)
        if best is None or entry.val_auroc > best[0].val_auroc:
            best = (entry, model)
    chosen, model = best
    rec.models[mode] = ModelResult(_metrics(model, inputs, inputs.tensors, cfg.scores),
                                   chosen.history, chosen.xi, chosen.label, chosen.val_auroc)
    rec.sweeps[mode] = sweep
    return model


def score_with_openood(oo: OpenOODScorer, models, inputs: Inputs, cfg: BenchConfig,
                       desc: str = "OpenOOD scoring"):
    """OpenOOD's tables for every reported model and score, and the gap to our scores."""
    res = {}
    bar = tqdm(total=len(models) * len(cfg.scores), desc=desc, disable=not cfg.progress,
               leave=False)
    with bar:
        for method, model in models.items():
            res[method] = {}
            for s in cfg.scores:
                bar.set_postfix_str(f"{method} {s}", refresh=False)
                df, raw = oo.evaluate(model, s)
                plug = score_all(model, inputs.subset(raw), [s])[s]
                diff = max(float(np.max(np.abs(plug[k][1] - raw[k][1]))) for k in raw)
                res[method][s] = OpenOODResult(oo.table(df), diff)
                bar.update(1)
    return res
