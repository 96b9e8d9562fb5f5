"""The embedded benchmark: MNIST-5k ID vs letters / animal shapes / textures / photos / noise.

Protocol (per seed): train a LeNet to the final stage (100% train accuracy) keeping every
epoch's checkpoint; from the final checkpoint fine-tune with plain CE (control), UM and UMAP
for each candidate ξ; choose ξ per method on the validation OOD set (``ood.val``: other
glyphs in other font families, disjoint from every test set); score with MSP / ODIN / EBO /
MaxLogit; report FPR@95, AUROC, AUPR-In/Out per set plus near/far means and ID accuracy,
mean ± std over seeds. Runs without OpenOOD on the plug-in's scorers; with OpenOOD installed
the reported models are also scored through OpenOOD's Evaluator on the same data on disk.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import embedded as emb
from ..metrics import id_ood_metrics, mean_std
from . import scoring

METHODS = ("baseline", "ce", "um", "umap")
BACKENDS = ("auto", "plugin", "openood")
METRICS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT")
# Default ξ candidates (kept small for the ~5 minute budget): the official estimate (random
# mask keeping 96.5%) and one fixed value; --xi-sweep widens both lists.
DEFAULT_XI_KEEPS = (0.965,)
DEFAULT_XI_FIXED = (0.05,)
SWEEP_XI_KEEPS = (0.965, 0.93, 0.9, 0.85, 0.8)
SWEEP_XI_FIXED = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


class BenchError(Exception):
    """A bad argument or environment, reported as one line."""


@dataclass
class BenchConfig:
    """Everything one run does; the CLI fills it, tests build it directly."""

    out: str
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    scores: List[str] = field(default_factory=lambda: list(scoring.SCORES))
    sets: List[str] = field(default_factory=lambda: list(emb.ALL_OOD_SETS))
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 128
    ft_epochs: int = 10
    um_lr: float = 0.01
    umap_lr: float = 0.1
    keep_ratio: float = 0.8
    xi_keeps: List[float] = field(default_factory=lambda: list(DEFAULT_XI_KEEPS))
    xi_fixed: List[float] = field(default_factory=lambda: list(DEFAULT_XI_FIXED))
    xi_draws: int = 5
    n_ood: int = 1000
    n_val_ood: int = 500
    backend: str = "auto"
    checkpoint: Optional[str] = None
    data_root: Optional[str] = None
    threads: int = 1
    progress: bool = True
    quick: bool = False

    def validate(self) -> "BenchConfig":
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise BenchError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
        if "baseline" not in self.methods:
            self.methods = ["baseline"] + list(self.methods)
        bad = [s for s in self.sets if s not in emb.ALL_OOD_SETS]
        if bad:
            raise BenchError(f"unknown OOD set(s) {bad}; valid: {list(emb.ALL_OOD_SETS)}")
        if not self.sets:
            raise BenchError(f"no OOD sets chosen; valid: {list(emb.ALL_OOD_SETS)}")
        try:
            scoring.check_scores(self.scores)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        if self.backend not in BACKENDS:
            raise BenchError(f"unknown backend {self.backend!r}; valid: {list(BACKENDS)}")
        if not self.seeds:
            raise BenchError("need at least one seed")
        for name in ("epochs", "ft_epochs", "batch_size", "xi_draws", "n_ood", "n_val_ood"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for k in self.xi_keeps:
            if not 0 < k <= 1:
                raise BenchError(f"xi keep ratio must be in (0, 1], got {k}")
        for v in self.xi_fixed:
            if not (v >= 0 and math.isfinite(v)):
                raise BenchError(f"fixed xi must be a finite number >= 0, got {v}")
        if not self.xi_keeps and not self.xi_fixed and {"um", "umap"} & set(self.methods):
            raise BenchError("UM/UMAP need at least one xi candidate (--xi-keeps or --xi-fixed)")
        return self


# ----------------------------------------------------------------------------- pieces
def make_model(seed: int) -> nn.Module:
    """OpenOOD's LeNet layout (3-channel 28x28), from core so OpenOOD is optional."""
    from ..core.models import LeNet
    torch.manual_seed(seed)
    return LeNet(num_classes=10, num_channel=3)


def load_checkpoint_model(path: str) -> nn.Module:
    """A LeNet from a state_dict file; one clear error for any other architecture."""
    if not os.path.isfile(path):
        raise BenchError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"checkpoint {path!r} is not a torch state_dict file ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = make_model(0)
    if not isinstance(state, dict):
        raise BenchError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state_dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError:
        want = model.state_dict()
        diff = sorted(set(state) ^ set(want))[:3] or [
            f"{k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want
            if k in state and state[k].shape != want[k].shape][:3]
        raise BenchError(f"checkpoint {path!r} is not a LeNet(num_classes=10, num_channel=3) "
                         f"state_dict (first differences: {diff})") from None
    return model


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=True, generator=g)


def train_base(x, y, cfg: BenchConfig, seed: int, ckpt_dir: str, bar_desc: str):
    """SGD + cosine to the final stage; saves every epoch's state_dict; returns model, log."""
    model = make_model(seed)
    loader = _loader(x, y, cfg.batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    log = []
    os.makedirs(ckpt_dir, exist_ok=True)
    for epoch in tqdm(range(cfg.epochs), desc=bar_desc, disable=not cfg.progress, leave=False):
        model.train()
        loss_sum, correct, n = 0.0, 0, 0
        for xb, yb in loader:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            n += len(yb)
        log.append({"epoch": epoch + 1, "loss": loss_sum / n, "train_acc": correct / n})
        torch.save(model.state_dict(), os.path.join(ckpt_dir, f"epoch{epoch + 1:03d}.pt"))
    return model, log


@torch.no_grad()
def train_accuracy(model, x, y) -> float:
    model.eval()
    return float(torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
                 .eq(y).float().mean())


def score_all(model, tensors: Dict[str, torch.Tensor], names) -> Dict[str, Dict[str, tuple]]:
    """{score: {set: (pred, conf)}} over the given ID / OOD tensors (one forward for logit scores)."""
    out = {name: {} for name in names}
    for key, x in tensors.items():
        for name, (pred, conf) in scoring.score_many(model, x, names).items():
            out[name][key] = (pred.numpy(), conf.numpy().astype(np.float64))
    return out


def metrics_from_scores(scores, id_label: np.ndarray, set_split: Dict[str, str]) -> dict:
    """Per score: per test set metrics (percent), near/far means, ID accuracy, val AUROC.

    Parts whose scores were not computed (a candidate scored on the validation sets only)
    are left out.
    """
    res = {}
    for name, by_set in scores.items():
        entry = {}
        if "id_test" in by_set:
            id_pred, id_conf = by_set["id_test"]
            rows = {s: id_ood_metrics(id_conf, by_set[s][1]) for s in set_split if s in by_set}
            for split in ("near", "far"):
                members = [s for s, sp in set_split.items() if sp == split and s in rows]
                if members:
                    rows[f"{split}ood"] = {m: float(np.mean([rows[s][m] for s in members]))
                                           for m in METRICS}
            entry["sets"] = rows
            entry["acc"] = 100.0 * float((id_pred == id_label).mean())
        if "id_val" in by_set and "ood_val" in by_set:
            entry["val"] = id_ood_metrics(by_set["id_val"][1], by_set["ood_val"][1])
        res[name] = entry
    return res


def finetune(mode: str, base: nn.Module, loader, xi: float, cfg: BenchConfig, seed: int):
    """One CE / UM / UMAP fine-tune from a copy of ``base``; returns (model, history)."""
    from ..core.finetune import FinetuneConfig, run_um, run_umap
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    if mode in ("um", "ce"):
        config = FinetuneConfig(mode="um", epochs=cfg.ft_epochs, lr=cfg.um_lr, seed=seed,
                                progress=cfg.progress)
        hist = run_um(model, loader, 0.0 if mode == "ce" else xi, config)
    else:
        config = FinetuneConfig(mode="umap", epochs=cfg.ft_epochs, lr=cfg.umap_lr,
                                keep_ratio=cfg.keep_ratio, seed=seed, progress=cfg.progress)
        hist = run_umap(model, loader, xi, config)
    return model, {"loss": list(hist.loss), "acc": list(hist.acc), "xi": xi}


def _sel_value(m: dict) -> float:
    return float(np.mean([v["val"]["AUROC"] for v in m.values()]))


# ----------------------------------------------------------------------------- OpenOOD path
def openood_available() -> bool:
    try:
        import openood  # noqa: F401
        from ..openood import benchmarks  # noqa: F401
        return True
    except Exception:
        return False


class OpenOODScorer:
    """Scores models through OpenOOD's Evaluator on the layout registered from ``data``.

    One Evaluator is built (OpenOOD's own ImglistDataset + default preprocessor read the PNGs
    once); its loaders are then materialised as lists of batches, and each (model, score)
    runs OpenOOD's postprocessor ``inference``, ``eval_ood`` and metrics on them. Re-reading
    and re-transforming every PNG for each of the 16 (model, score) pairs per seed cost ~4 s
    each on 2 CPUs and gave the same tensors.
    """

    def __init__(self, data: emb.EmbeddedData, root: str, id_name: str = emb.ID_NAME):
        import contextlib
        import io
        from openood.evaluation_api import Evaluator
        from ..data.openood_layout import register_embedded
        from ..openood.cpu import enable_cpu_fallback
        if not torch.cuda.is_available():
            enable_cpu_fallback()
        register_embedded(data, root, id_name)
        self.root, self.id_name = root, id_name
        with contextlib.redirect_stdout(io.StringIO()):
            self.ev = Evaluator(make_model(0), id_name=id_name, data_root=root, config_root=None,
                                postprocessor=scoring.openood_postprocessor("msp", id_name),
                                batch_size=500, num_workers=0)
        d = self.ev.dataloader_dict
        d["id"]["test"] = self._materialise(d["id"]["test"])
        for split in ("near", "far"):
            for k in list(d["ood"][split]):
                d["ood"][split][k] = self._materialise(d["ood"][split][k])
        self._fresh = copy.deepcopy((self.ev.scores, self.ev.metrics))

    @staticmethod
    def _materialise(loader):
        return [{"data": b["data"], "label": b["label"]} for b in loader]

    def evaluate(self, model: nn.Module, score: str):
        """OpenOOD's metrics DataFrame (percent) and raw (pred, conf) per set for one score."""
        import contextlib
        import io
        ev = self.ev
        post = scoring.openood_postprocessor(score, self.id_name)
        post.setup(model, ev.dataloader_dict["id"], ev.dataloader_dict["ood"])
        ev.net, ev.postprocessor = model, post
        ev.scores, ev.metrics = copy.deepcopy(self._fresh)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            df = ev.eval_ood(fsood=False, progress=False)  # eval_acc's bar ignores progress
        raw = {"id_test": ev.scores["id"]["test"][:2]}
        for split in ("near", "far"):
            for k, v in ev.scores["ood"][split].items():
                raw[k] = v[:2]
        return df, raw


# ----------------------------------------------------------------------------- run
def run(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; writes results under ``cfg.out`` after every seed."""
    cfg.validate()
    out = os.path.abspath(cfg.out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as exc:
        raise BenchError(f"output folder {cfg.out!r} is not writable ({exc.strerror})") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_openood = cfg.backend == "openood" or (cfg.backend == "auto" and openood_available())
    if cfg.backend == "openood" and not openood_available():
        raise BenchError("backend 'openood' needs OpenOOD installed (and um_plugin.openood)")
    t0 = time.time()
    data = emb.build_embedded(seed=0, n_ood=cfg.n_ood, n_val_ood=cfg.n_val_ood, sets=cfg.sets)
    set_split = {s: data.split_of(s) for s in cfg.sets}
    x_tr, y_tr = emb.to_tensor(data.id["train"][0]), torch.from_numpy(data.id["train"][1])
    tensors = {"id_test": emb.to_tensor(data.id["test"][0]),
               "id_val": emb.to_tensor(data.id["val"][0]),
               "ood_val": emb.to_tensor(data.ood_val)}
    tensors.update({s: emb.to_tensor(x) for s, x in data.ood_sets().items() if s in cfg.sets})
    id_label = data.id["test"][1]
    oo = None
    if use_openood:
        root = cfg.data_root or os.path.join(emb.default_cache_dir(), "openood_data",
                                             f"{emb.ID_NAME}-n{cfg.n_ood}-v{cfg.n_val_ood}")
        oo = OpenOODScorer(data, root)
    results = {"config": asdict(cfg), "backend": "openood" if oo else "plugin",
               "data": {"train": len(y_tr), "val": len(data.id["val"][1]), "test": len(id_label),
                        "ood": {s: int(len(tensors[s])) for s in cfg.sets},
                        "ood_val": int(len(data.ood_val))},
               "seeds": {}}
    state = {"results": results, "out": out}
    try:
        for seed in cfg.seeds:
            results["seeds"][str(seed)] = run_seed(cfg, seed, data, tensors, x_tr, y_tr, id_label,
                                                   set_split, out, oo)
            results["elapsed_s"] = time.time() - t0
            write_outputs(state, cfg, set_split)
    except KeyboardInterrupt:
        results["interrupted"] = True
        results["elapsed_s"] = time.time() - t0
        write_outputs(state, cfg, set_split)
        raise
    results["elapsed_s"] = time.time() - t0
    write_outputs(state, cfg, set_split, final=True)
    return results


def _xi_candidates(cfg: BenchConfig, model, loader, seed: int):
    from ..core.xi import estimate_xi
    cands, estimates = [], []
    for k in cfg.xi_keeps:
        est = estimate_xi(model, loader, keep_ratio=k, seed=seed, draws=cfg.xi_draws,
                          progress=False)
        estimates.append({"keep_ratio": k, "xi": est.xi, "draws": list(est.xi_draws),
                          "std": float(np.std(est.xi_draws)), "base_loss": est.base_loss})
        cands.append((f"est@{k:g}", float(est.xi)))
    cands += [(f"fixed {v:g}", float(v)) for v in cfg.xi_fixed]
    return cands, estimates


def run_seed(cfg, seed, data, tensors, x_tr, y_tr, id_label, set_split, out, oo):
    """Everything for one seed: base training, stage curve, fine-tunes, selection, scoring."""
    tag = f"seed {seed}"
    ckpt_dir = os.path.join(out, "checkpoints", f"seed{seed}")
    rec = {"timing_s": {}}
    clock = [time.time()]

    def lap(name):
        now = time.time()
        rec["timing_s"][name] = rec["timing_s"].get(name, 0.0) + now - clock[0]
        clock[0] = now

    if cfg.checkpoint:
        base = load_checkpoint_model(cfg.checkpoint)
        rec["train_log"] = []
    else:
        base, rec["train_log"] = train_base(x_tr, y_tr, cfg, seed, ckpt_dir, f"{tag}: train LeNet")
    lap("train")
    rec["train_acc_final"] = train_accuracy(base, x_tr, y_tr)
    rec["final_stage_reached"] = rec["train_acc_final"] >= 1.0
    # the paper's core finding on this data: OOD AUROC across the base model's epochs
    stage = []
    if rec["train_log"]:
        probe = make_model(seed)
        stage_scores = [s for s in ("msp", "ebo") if s in cfg.scores] or cfg.scores[:1]
        # every epoch while AUROC moves fast, then every other one (and always the last)
        last = rec["train_log"][-1]["epoch"]
        probed = [e for e in rec["train_log"] if e["epoch"] <= 10 or e["epoch"] % 2 == 0
                  or e["epoch"] == last]
        for entry in tqdm(probed, desc=f"{tag}: score epochs", disable=not cfg.progress,
                          leave=False):
            probe.load_state_dict(torch.load(os.path.join(ckpt_dir, f"epoch{entry['epoch']:03d}.pt"),
                                             weights_only=True))
            m = metrics_from_scores(score_all(probe, tensors, stage_scores), id_label, set_split)
            stage.append({"epoch": entry["epoch"], **{
                s: {"val_auroc": m[s]["val"]["AUROC"], "acc": m[s]["acc"],
                    **{k: v["AUROC"] for k, v in m[s]["sets"].items()}} for s in stage_scores}})
    rec["stage"] = stage
    lap("stage_curve")
    loader = _loader(x_tr, y_tr, cfg.batch_size, seed + 1000)

    def fresh():
        # every fine-tune sees the same batch order, whatever ran before it: a shared
        # loader's generator made the same (seed, ξ) give different models in the default
        # run and in --xi-sweep (near AUROC differed by ~0.8)
        return _loader(x_tr, y_tr, cfg.batch_size, seed + 1000)
    models = {"baseline": base}
    rec["models"] = {"baseline": {"metrics": metrics_from_scores(
        score_all(base, tensors, cfg.scores), id_label, set_split)}}
    if "ce" in cfg.methods:
        model, hist = finetune("ce", base, fresh(), 0.0, cfg, seed)
        models["ce"] = model
        rec["models"]["ce"] = {"metrics": metrics_from_scores(
            score_all(model, tensors, cfg.scores), id_label, set_split), "history": hist}
    tuned = [m for m in ("um", "umap") if m in cfg.methods]
    val_tensors = {k: tensors[k] for k in ("id_val", "ood_val")}
    test_tensors = {k: v for k, v in tensors.items() if k not in val_tensors}
    sweep_score = "ebo" if "ebo" in cfg.scores else cfg.scores[0]
    if tuned:
        lap("score_baseline_ce")
        cands, rec["xi_estimates"] = _xi_candidates(cfg, base, loader, seed)
        lap("xi_estimate")
        for mode in tuned:
            sweep = []
            best = None
            for label, xi in tqdm(cands, desc=f"{tag}: {mode} over xi", disable=not cfg.progress,
                                  leave=False):
                model, hist = finetune(mode, base, fresh(), xi, cfg, seed)
                # selection needs only ood.val; the ξ plot needs one score on the test sets
                m = metrics_from_scores(score_all(model, val_tensors, cfg.scores), id_label, set_split)
                m[sweep_score].update(metrics_from_scores(score_all(model, test_tensors, [sweep_score]),
                                                          id_label, set_split)[sweep_score])
                entry = {"label": label, "xi": xi, "metrics": m, "history": hist,
                         "val_auroc": _sel_value(m)}
                sweep.append(entry)
                if best is None or entry["val_auroc"] > best[0]["val_auroc"]:
                    best = (entry, model)
            models[mode] = best[1]
            full = metrics_from_scores(score_all(best[1], tensors, cfg.scores), id_label, set_split)
            rec["models"][mode] = {"metrics": full, "history": best[0]["history"],
                                   "xi": best[0]["xi"], "xi_label": best[0]["label"],
                                   "val_auroc": best[0]["val_auroc"]}
            rec[f"{mode}_sweep"] = [{k: v for k, v in e.items()} for e in sweep]
            lap(f"{mode}_finetune_and_score")
    if oo is not None:
        rec["openood"] = {}
        for method, model in models.items():
            rec["openood"][method] = {}
            for s in cfg.scores:
                df, raw = oo.evaluate(model, s)
                plug = score_all(model, {k: tensors[k] for k in raw}, [s])[s]
                diff = max(float(np.max(np.abs(plug[k][1] - raw[k][1]))) for k in raw)
                rec["openood"][method][s] = {"table": {i: {c: float(df.loc[i, c]) for c in df.columns}
                                                       for i in df.index},
                                             "max_abs_score_diff_vs_plugin": diff}
        rec["models_table_source"] = "openood"
        lap("openood_scoring")
    if seed == cfg.seeds[0]:
        rec["_hist"] = {m: score_all(models[m], tensors, [s for s in ("ebo", "msp") if s in cfg.scores])
                        for m in models}
    return rec


# ----------------------------------------------------------------------------- outputs
def _table_for(rec, method, score, source):
    """{row: {metric: value}} for one seed, from OpenOOD's table or the plug-in metrics."""
    if source == "openood" and "openood" in rec:
        return rec["openood"][method][score]["table"]
    m = rec["models"][method]["metrics"][score]
    return {row: {**vals, "ACC": m["acc"]} for row, vals in m["sets"].items()}


def summarize(results: dict, cfg: BenchConfig, set_split) -> List[dict]:
    """Long-format rows: method, score, set, metric mean/std over completed seeds."""
    seeds = [r for r in results["seeds"].values()]
    source = results.get("backend", "plugin")
    rows = []
    if not seeds:
        return rows
    row_names = list(set_split) + [f"{sp}ood" for sp in ("near", "far")
                                   if any(v == sp for v in set_split.values())]
    for method in cfg.methods:
        if method not in seeds[0]["models"]:
            continue
        for score in cfg.scores:
            tables = [_table_for(r, method, score, source) for r in seeds]
            for row in row_names:
                entry = {"method": method, "score": score, "set": row,
                         "split": "near" if row in ("nearood",) or set_split.get(row) == "near"
                         else "far", "n_seeds": len(tables)}
                for metric in METRICS + ("ACC",):
                    mu, sd = mean_std([t[row][metric] for t in tables])
                    entry[f"{metric}_mean"], entry[f"{metric}_std"] = mu, sd
                rows.append(entry)
    return rows


def _fmt(mu, sd):
    return f"{mu:.2f} ± {sd:.2f}"


def markdown_table(rows: List[dict], results: dict) -> str:
    """Near/far means per method and score, then per-set AUROC / FPR95."""
    lines = []
    seeds = list(results["seeds"].values())
    n = len(seeds)
    lines.append(f"Embedded benchmark (MNIST-5k ID), {n} seed(s), scored via "
                 f"{results.get('backend')}; mean ± std.\n")
    lines.append("| method | score | ID acc | near AUROC | near FPR95 | far AUROC | far FPR95 |")
    lines.append("|---|---|---|---|---|---|---|")
    by = {(r["method"], r["score"], r["set"]): r for r in rows}
    keys = sorted({(r["method"], r["score"]) for r in rows},
                  key=lambda k: (METHODS.index(k[0]), scoring.SCORES.index(k[1])))
    for method, score in keys:
        near, far = by.get((method, score, "nearood")), by.get((method, score, "farood"))
        ref = near or far
        cells = [method, score, _fmt(ref["ACC_mean"], ref["ACC_std"])]
        for r in (near, far):
            cells += ([_fmt(r["AUROC_mean"], r["AUROC_std"]), _fmt(r["FPR@95_mean"], r["FPR@95_std"])]
                      if r else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    sets = [r["set"] for r in rows if r["method"] == keys[0][0] and r["score"] == keys[0][1]
            and not r["set"].endswith("ood")]
    lines.append("\nPer set, AUROC / FPR@95:\n")
    lines.append("| method | score | " + " | ".join(sets) + " |")
    lines.append("|---|---|" + "---|" * len(sets))
    for method, score in keys:
        cells = [method, score] + [
            f"{by[(method, score, s)]['AUROC_mean']:.1f}±{by[(method, score, s)]['AUROC_std']:.1f} / "
            f"{by[(method, score, s)]['FPR@95_mean']:.1f}±{by[(method, score, s)]['FPR@95_std']:.1f}"
            for s in sets]
        lines.append("| " + " | ".join(cells) + " |")
    xi_lines = []
    for mode in ("um", "umap"):
        chosen = [(r["models"][mode]["xi_label"], r["models"][mode]["xi"]) for r in seeds
                  if mode in r["models"]]
        if chosen:
            xi_lines.append(f"- {mode}: chosen ξ per seed (on ood.val) = " +
                            ", ".join(f"{v:.4g} ({lab})" for lab, v in chosen))
    ests = [e for r in seeds for e in r.get("xi_estimates", [])]
    for k in sorted({e["keep_ratio"] for e in ests}, reverse=True):
        vals = [d for e in ests if e["keep_ratio"] == k for d in e["draws"]]
        xi_lines.append(f"- ξ estimate at keep {k:g}: mean {np.mean(vals):.4g}, draws range "
                        f"{min(vals):.4g} – {max(vals):.4g} ({len(vals)} draws over seeds)")
    reached = [r["train_acc_final"] for r in seeds]
    xi_lines.append(f"- base model final train accuracy: " +
                    ", ".join(f"{100 * a:.2f}%" for a in reached))
    lines.append("\n" + "\n".join(xi_lines))
    return "\n".join(lines) + "\n"


def sweep_table(results: dict) -> str:
    """Every ξ candidate (mean over seeds): val AUROC that chose it, then test EBO metrics."""
    seeds = list(results["seeds"].values())
    lines = []
    for mode in ("um", "umap"):
        key = f"{mode}_sweep"
        if not seeds or key not in seeds[0]:
            continue
        score = next(iter(k for k, v in seeds[0][key][0]["metrics"].items() if "sets" in v))
        if not lines:
            lines += [f"ξ candidates, mean over {len(seeds)} seed(s); selection uses the "
                      f"ood.val column only; test columns use {score}.\n",
                      "| method | candidate | ξ (mean ± std) | val AUROC | near AUROC | near FPR95 "
                      "| far AUROC | far FPR95 | letters FPR95 | animals FPR95 | ID acc |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
        base = [r["models"]["baseline"]["metrics"][score] for r in seeds]
        cells = lambda ms: [f"{np.mean([m['sets'][row][met] for m in ms]):.2f}"  # noqa: E731
                            if row in ms[0]["sets"] else "-"
                            for row, met in (("nearood", "AUROC"), ("nearood", "FPR@95"),
                                             ("farood", "AUROC"), ("farood", "FPR@95"),
                                             ("letters", "FPR@95"), ("animals", "FPR@95"))]
        if mode == "um" or "um_sweep" not in seeds[0]:
            lines.append("| baseline | – | – | " +
                         f"{np.mean([r['models']['baseline']['metrics'][score]['val']['AUROC'] for r in seeds]):.2f} | "
                         + " | ".join(cells(base)) + f" | {np.mean([m['acc'] for m in base]):.2f} |")
        for i, entry in enumerate(seeds[0][key]):
            ms = [r[key][i]["metrics"][score] for r in seeds]
            xs = [r[key][i]["xi"] for r in seeds]
            val = np.mean([r[key][i]["val_auroc"] for r in seeds])
            lines.append(f"| {mode} | {entry['label']} | {np.mean(xs):.4f} ± {np.std(xs):.4f} | "
                         f"{val:.2f} | " + " | ".join(cells(ms)) +
                         f" | {np.mean([m['acc'] for m in ms]):.2f} |")
    return "\n".join(lines) + ("\n" if lines else "")


def write_outputs(state, cfg: BenchConfig, set_split, final: bool = False) -> None:
    """results.json, summary.csv / .md, one OpenOOD-format CSV per method+score, plots."""
    import csv
    results, out = state["results"], state["out"]
    hist = {}
    for k, r in results["seeds"].items():
        if "_hist" in r:
            hist = r.pop("_hist")
            state["hist"] = hist
    hist = state.get("hist", hist)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    rows = summarize(results, cfg, set_split)
    if not rows:
        return
    with open(os.path.join(out, "summary.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = markdown_table(rows, results)
    sweep = sweep_table(results)
    if sweep:
        table += "\n" + sweep
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(table)
    os.makedirs(os.path.join(out, "openood_format"), exist_ok=True)
    for method, score in sorted({(r["method"], r["score"]) for r in rows}):
        sub = [r for r in rows if r["method"] == method and r["score"] == score]
        with open(os.path.join(out, "openood_format", f"{method}_{score}.csv"), "w") as fh:
            fh.write(",FPR@95,AUROC,AUPR_IN,AUPR_OUT,ACC\n")
            for r in sub:
                fh.write(r["set"] + "," + ",".join(f"{r[m + '_mean']:.6f}" for m in
                                                   METRICS + ("ACC",)) + "\n")
    state["table"] = table
    try:
        from . import plots
        plots.make_all(results, hist, out, cfg, set_split)
    except ImportError as exc:  # matplotlib missing: tables still stand
        print(f"um-bench: plots skipped ({exc})", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="um-bench", description="Embedded offline OOD benchmark: baseline vs UM vs UMAP "
        "on MNIST-5k with letters, animal shapes, textures, photos and noise as OOD.")
    p.add_argument("--out", default="um-bench-results", help="results folder (created)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="model seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--scores", default=",".join(scoring.SCORES),
                   help=f"comma list from {','.join(scoring.SCORES)}")
    p.add_argument("--sets", default=",".join(emb.ALL_OOD_SETS),
                   help=f"comma list from {','.join(emb.ALL_OOD_SETS)}")
    p.add_argument("--epochs", type=int, default=30, help="base training epochs")
    p.add_argument("--ft-epochs", type=int, default=10, help="CE/UM/UMAP fine-tuning epochs")
    p.add_argument("--um-lr", type=float, default=0.01)
    p.add_argument("--umap-lr", type=float, default=0.1)
    p.add_argument("--keep-ratio", type=float, default=0.8, help="UMAP mask keep ratio")
    p.add_argument("--xi-keeps", type=float, nargs="*", default=None,
                   help="keep ratios of the random masks that estimate xi")
    p.add_argument("--xi-fixed", type=float, nargs="*", default=None, help="fixed xi candidates")
    p.add_argument("--xi-draws", type=int, default=5, help="random masks averaged per estimate")
    p.add_argument("--xi-sweep", action="store_true", help="the full xi study (slower)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--checkpoint", default=None, help="a LeNet state_dict to start from "
                   "instead of training (skips the epoch curve)")
    p.add_argument("--data-root", default=None, help="where the OpenOOD-layout images go")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch "
                   "default). LeNet is too small to gain from more; on a shared 2-core runner "
                   "extra threads made each step >10x slower")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _split_list(s: str) -> List[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def config_from_args(args) -> BenchConfig:
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    cfg = BenchConfig(out=args.out, seeds=seeds, methods=_split_list(args.methods),
                      scores=_split_list(args.scores), sets=_split_list(args.sets),
                      epochs=args.epochs, ft_epochs=args.ft_epochs, um_lr=args.um_lr,
                      umap_lr=args.umap_lr, keep_ratio=args.keep_ratio,
                      xi_draws=args.xi_draws, backend=args.backend, checkpoint=args.checkpoint,
                      data_root=args.data_root, threads=args.threads,
                      progress=not args.no_progress, quick=args.quick)
    if args.xi_sweep:
        cfg.xi_keeps, cfg.xi_fixed = list(SWEEP_XI_KEEPS), list(SWEEP_XI_FIXED)
    if args.quick:
        cfg.epochs, cfg.ft_epochs, cfg.n_ood, cfg.n_val_ood, cfg.xi_draws = 2, 1, 100, 50, 1
        cfg.xi_keeps, cfg.xi_fixed = [0.965], [0.05]
    if args.xi_keeps is not None:
        cfg.xi_keeps = args.xi_keeps
    if args.xi_fixed is not None:
        cfg.xi_fixed = args.xi_fixed
    return cfg


def main(argv=None) -> int:
    """Console entry point: one clear line on bad input; results kept on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        results = run(cfg)
    except BenchError as exc:
        print(f"um-bench: error: {exc}", file=sys.stderr)
        return 2
    except emb.MissingDataPackage as exc:
        print(f"um-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\num-bench: interrupted; results so far are in {os.path.abspath(args.out)}",
              file=sys.stderr)
        return 130
    with open(os.path.join(os.path.abspath(cfg.out), "summary.md")) as fh:
        print(fh.read())
    print(f"results in {os.path.abspath(cfg.out)} ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
