"""Paper reproduction through OpenOOD (GPU, OpenOOD's downloaded data, a base checkpoint).

CIFAR-10 / CIFAR-100: the authors' protocol (``authors.py``, printed by ``plan.py`` before any
work): their DenseNet-BC-100 from the checkpoint given (theirs: the final epoch), their rows
Energy, Energy+UM, Energy+UMAP, OE, OE+UM at their settings (UM/UMAP 100 epochs lr 0.1; OE 10
epochs lr 0.01 with outliers; CIFAR-100 UMAP trains the weights too), scored with energy by
OpenOOD's own Evaluator, averaged over their OOD sets that OpenOOD ships, ``--runs N`` times,
next to their README's numbers. ImageNet-1K: ResNet-50 -> UMAP + ODIN, next to the paper's.
``--epochs`` / ``--lr`` / ``--batch`` / ``--keep-ratio`` / ``--network`` depart from the
protocol; the plan names each, and the results file records every ``FinetuneConfig`` used.

``--dry-run`` runs the same code on a tiny OpenOOD-format copy of the benchmark made of random
images (written in OpenOOD's own DATA_INFO layout for that ID name, so ``Evaluator`` is used
exactly as in a real run) with a randomly initialised network; it checks the plumbing, not
the numbers.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torchvision
import torchvision.transforms as T

from um_plugin.core import FinetuneConfig
from um_plugin.core.config import validate_keep_ratio, validate_xi
from um_plugin.core.runs import RUNNERS
from um_plugin.core.xi import estimate_xi
from um_plugin.workers import default_workers

from .. import scorers as scoring
from ..checks import BenchmarkError, core_rule, count, known, positive, writable_folder
from ..cli import OneLineParser, comma_list, run_main
from . import authors
from .plan import NETWORK_NAMES, THEIR_NETWORK, plan_text
from .suites import (DEFAULTS, PAPER, SUITES, _openood_data_info, check_data, oe_split,
                     register_suite, suite_info, write_dry_run_data)

PROG = "python -m benchmarks.repro"


# ----------------------------------------------------------------------------- models
def build_net(suite: str, checkpoint: Optional[str], dry_run: bool, network: str = THEIR_NETWORK):
    """CIFAR: their DenseNet-BC-100 (or OpenOOD's ResNet18_32x32); ImageNet: torchvision's
    ResNet-50; loaded from ``checkpoint`` (their ``*.state`` files load too)."""
    if suite in ("cifar10", "cifar100") and network == THEIR_NETWORK:
        from um_plugin.openood.registry.densenet import DenseNetBC100
        net = DenseNetBC100(num_classes=10 if suite == "cifar10" else 100)
    elif suite in ("cifar10", "cifar100"):
        from openood.networks import ResNet18_32x32
        net = ResNet18_32x32(num_classes=10 if suite == "cifar10" else 100)
    else:
        net = torchvision.models.resnet50()
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise BenchmarkError(f"checkpoint {checkpoint!r} does not exist")
        from um_plugin.openood.registry.networks import model_state
        state = model_state(torch.load(checkpoint, map_location="cpu", weights_only=True))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise BenchmarkError(f"checkpoint {checkpoint!r} does not fit {type(net).__name__} "
                             f"for {suite}: {str(exc).splitlines()[0]}") from None
    elif not dry_run:
        raise BenchmarkError(f"--checkpoint is required for {suite} (" + (
            authors.BASE_CHECKPOINT[suite] if suite != "imagenet" else "ResNet-50 weights") + ")")
    return net


def train_loader(id_name: str, data_root: str, suite: str, batch: int, workers: int,
                 split: Optional[dict] = None):
    """ID train split (or ``split``: the OE one) through OpenOOD's ImglistDataset with the
    authors' train augmentation (CIFAR: random crop with padding 4 and horizontal flip),
    shuffled, last batch kept."""
    from openood.datasets.imglist_dataset import ImglistDataset
    from openood.evaluation_api.datasets import DATA_INFO
    from openood.evaluation_api.preprocessor import default_preprocessing_dict
    pre = default_preprocessing_dict[id_name]
    if suite == "imagenet":
        aug = [T.RandomResizedCrop(pre["img_size"]), T.RandomHorizontalFlip()]
    else:
        aug = [T.RandomCrop(pre["img_size"], padding=4), T.RandomHorizontalFlip()]
    tf = T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.Resize(pre["pre_size"]),
                    T.CenterCrop(pre["pre_size"])] + aug +
                   [T.ToTensor(), T.Normalize(*pre["normalization"])])
    split = split or DATA_INFO[id_name]["id"]["train"]
    ds = ImglistDataset(name=f"{id_name}_train", imglist_pth=os.path.join(data_root, split["imglist_path"]),
                        data_dir=os.path.join(data_root, split["data_dir"]),
                        num_classes=DATA_INFO[id_name]["num_classes"], preprocessor=tf,
                        data_aux_preprocessor=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)


# ----------------------------------------------------------------------------- run
@dataclass
class ReproConfig:
    """One reproduction run; ``None`` means the suite's default (see ``DEFAULTS``)."""

    suite: str
    out: str = "results/repro"
    data_root: Optional[str] = None
    checkpoint: Optional[str] = None
    methods: Optional[List[str]] = None
    scores: Optional[List[str]] = None
    xi: Optional[float] = None
    xi_draws: int = 1     # the authors' estimate_loss.py draws one random mask
    network: str = THEIR_NETWORK  # CIFAR only
    runs: int = 1
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch: Optional[int] = None
    keep_ratio: Optional[float] = None
    workers: int = default_workers()  # 4, at most the CPUs available
    dry_run: bool = False
    progress: bool = True

    def validate(self) -> "ReproConfig":
        """Every value checked before any work; BenchmarkError names the value and the rule."""
        if self.suite not in SUITES:
            raise BenchmarkError(f"unknown suite {self.suite!r}; valid: {list(SUITES)}")
        imagenet = self.suite == "imagenet"
        valid = tuple(authors.rows(self.suite))
        self.methods = list(dict.fromkeys(self.methods or valid))
        self.methods = known("method", self.methods, valid)
        self.scores = self.scores or (["odin"] if imagenet else ["ebo"])
        known("network", [self.network], tuple(NETWORK_NAMES))
        try:
            self.scores = list(dict.fromkeys(scoring.check_scores(self.scores)))
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from None
        if self.xi is not None:
            core_rule("xi", validate_xi, self.xi)
        if self.keep_ratio is not None:
            core_rule("keep_ratio", validate_keep_ratio, self.keep_ratio)
        for name in ("epochs", "batch", "xi_draws", "runs"):
            if getattr(self, name) is not None:
                count(name, getattr(self, name))
        count("workers", self.workers, 0)
        if self.lr is not None:
            positive("lr", self.lr)
        if not self.dry_run and not self.data_root:
            raise BenchmarkError("--data-root is required (OpenOOD's data folder with benchmark_imglist/)")
        if self.checkpoint is not None and not os.path.isfile(self.checkpoint):
            raise BenchmarkError(f"checkpoint {self.checkpoint!r} does not exist")
        writable_folder("out", self.out)
        try:
            import openood  # noqa: F401  (optional dependency)
        except ImportError:
            raise BenchmarkError("the reproduction runs through OpenOOD; install it first") from None
        return self

    def schedule(self) -> dict:
        """The suite's defaults with the values given explicitly (epochs / lr None: each
        row's own, see authors.rows)."""
        cfg = dict(DEFAULTS[self.suite], epochs=self.epochs, lr=self.lr)
        cfg.update({k: v for k, v in dict(batch=self.batch,
                                          keep_ratio=self.keep_ratio).items() if v is not None})
        if self.dry_run:
            cfg.update(epochs=1, batch=4)
        return cfg

    def finetune_config(self, method: str, run_index: int, cfg: dict) -> FinetuneConfig:
        """The engine's settings for ``method``'s row in run ``run_index``."""
        row = authors.rows(self.suite)[method]
        return FinetuneConfig(
            mode="umap" if method.startswith("umap") else "um",
            epochs=cfg["epochs"] or row.epochs, lr=cfg["lr"] or row.lr,
            keep_ratio=cfg["keep_ratio"], freeze_weights=row.freeze_weights,
            outlier_loss=row.outlier_loss, seed=1 + run_index, progress=self.progress)


def evaluate(net, id_name: str, data_root: str, score: str, batch: int, workers: int):
    """OpenOOD's Evaluator + postprocessor (ODIN T=1000, noise 0.0014; EBO T=1) -> DataFrame."""
    from openood.evaluation_api import Evaluator
    post = scoring.openood_postprocessor(score, id_name)
    ev = Evaluator(net, id_name=id_name, data_root=data_root, config_root=None,
                   postprocessor=post, batch_size=batch, num_workers=workers)
    return ev.eval_ood(fsood=False, progress=False)


def _data(rc: ReproConfig, cfg: dict, needs_outliers: bool):
    """(id_name, data_root, workers, OE split or None), the data checked (dry run: written)."""
    data_root, workers = rc.data_root, rc.workers
    extra = [(oe_split(rc.suite)["data_dir"], oe_split(rc.suite)["imglist_path"], True)] \
        if needs_outliers else []
    if rc.dry_run:
        data_root = tempfile.mkdtemp(prefix=f"um-repro-{rc.suite}-")
        _, info = suite_info(rc.suite, data_root)
        write_dry_run_data(info, data_root, info["num_classes"],
                           32 if rc.suite != "imagenet" else 64, extra=tuple(extra))
        workers = 0
        torch.set_num_threads(1)  # tiny tensors: extra threads only contend
    id_name = register_suite(rc.suite, data_root)
    check_data(_openood_data_info()[id_name], data_root, tuple(extra))
    return id_name, data_root, workers, oe_split(rc.suite) if needs_outliers else None


def run(rc: ReproConfig) -> dict:
    """One reproduction (``rc.runs`` times): returns and writes, per run, {method: {score:
    metrics table}}, ξ, and for CIFAR the authors' average next to their numbers."""
    rc.validate()
    cfg = rc.schedule()
    rows = authors.rows(rc.suite)
    print(plan_text(rc, cfg), flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    needs_outliers = any(rows[m].outlier_loss != "none" for m in rc.methods)
    id_name, data_root, workers, oe = _data(rc, cfg, needs_outliers)
    if device == "cpu":
        if not rc.dry_run:
            print(f"{PROG}: warning: no GPU; this will be very slow", file=sys.stderr)
        from um_plugin.openood.cpu import enable_cpu_fallback  # imports OpenOOD (optional)
        enable_cpu_fallback()
    net = build_net(rc.suite, rc.checkpoint, rc.dry_run, rc.network).to(device)
    loader = train_loader(id_name, data_root, rc.suite, cfg["batch"], workers)
    outliers = None if oe is None else train_loader(id_name, data_root, rc.suite, cfg["batch"],
                                                    workers, split=oe)
    results = {"suite": rc.suite, "dry_run": rc.dry_run, "device": device, "config": cfg,
               "run": asdict(rc), "runs": [],
               "paper": {f"{k[1]}+{k[2]}": v for k, v in PAPER.items() if k[0] == rc.suite}}
    t0 = time.time()
    xi = rc.xi
    if xi is None and any(rows[m].xi == "estimated" for m in rc.methods):
        est = estimate_xi(net, loader, draws=rc.xi_draws, progress=rc.progress)
        xi = est.xi
        results["xi_estimate"] = {"xi": est.xi, "draws": list(est.xi_draws)}
    results["xi"] = xi
    for index in range(rc.runs):
        tables = {}
        results["runs"].append(tables)
        for method in rc.methods:
            if method == "baseline" and index > 0:  # no training: every run scores the same
                tables[method] = results["runs"][0][method]
                continue
            torch.manual_seed(index)  # the data order (and dropout) of run `index`
            model = copy.deepcopy(net)
            if method != "baseline":
                fc = rc.finetune_config(method, index, cfg)
                results.setdefault("finetune", {})[method] = asdict(fc)
                RUNNERS[fc.mode](model, loader, 0.0 if rows[method].xi == "0" else xi, fc,
                                 outliers=outliers if fc.outlier_loss != "none" else None)
            model.eval()
            tables[method] = {}
            for s in rc.scores:
                df = evaluate(model, id_name, data_root, s, cfg["batch"] * 2, workers)
                tables[method][s] = {i: {c: float(df.loc[i, c]) for c in df.columns}
                                     for i in df.index}
                df.to_csv(os.path.join(rc.out, f"{rc.suite}_{method}_{s}_run{index}.csv"))
            _write(rc, results)
    results["methods"] = results["runs"][0]
    results["elapsed_s"] = time.time() - t0
    results["summary"] = summary(results)
    results["table"] = side_by_side(results)
    _write(rc, results)
    with open(os.path.join(rc.out, f"{rc.suite}_table.md"), "w") as fh:
        fh.write(results["table"])
    return results


def _write(rc: ReproConfig, results: dict) -> None:
    with open(os.path.join(rc.out, f"{rc.suite}_results.json"), "w") as fh:
        json.dump(results, fh, indent=1)


def summary(results: dict) -> dict:
    """CIFAR: {method: {score: {metric: [mean, std]}}} of the authors' average over runs."""
    suite = results["suite"]
    if suite not in authors.THEIR_OOD_SETS:
        return {}
    sets, _ = authors.available_sets(suite)
    out = {}
    for method in results["runs"][0]:
        for score in results["runs"][0][method]:
            per_run = [authors.average_as_they_do(run[method][score], sets)
                       for run in results["runs"]]
            out.setdefault(method, {})[score] = {
                m: [statistics.fmean(v[m] for v in per_run),
                    statistics.stdev(v[m] for v in per_run) if len(per_run) > 1 else 0.0]
                for m in authors.METRICS}
    return out


def side_by_side(results: dict) -> str:
    """CIFAR: our averages (mean ± std over runs) beside the authors' README rows; ImageNet:
    our AUROC / FPR@95 per set beside the paper's where known."""
    suite = results["suite"]
    dry = " (DRY RUN: random data and weights, numbers meaningless)" if results["dry_run"] else ""
    if results.get("summary"):
        n = len(results["runs"])
        lines = [f"{suite}{dry}, xi = {results['xi']}, {n} run(s), averaged over "
                 f"{', '.join(authors.available_sets(suite)[0])}\n",
                 "| row | score | AUROC | AUPR_IN | FPR@95 | ACC | theirs AUROC | AUPR | FPR95 "
                 "| ACC |", "|---|---|---|---|---|---|---|---|---|---|"]
        for method, by_score in results["summary"].items():
            ref = authors.REFERENCE.get(suite, {}).get(method, {})
            theirs = " | ".join(f"{ref[m][0]:.2f} ± {ref[m][1]:.2f}" if m in ref else "–"
                                for m in authors.METRICS)
            for score, vals in by_score.items():
                ours = " | ".join(f"{vals[m][0]:.2f}" + (f" ± {vals[m][1]:.2f}" if n > 1 else "")
                                 for m in authors.METRICS)
                lines.append(f"| {authors.ROW_NAMES[method]} | {score} | {ours} | {theirs} |")
        return "\n".join(lines) + "\n"
    lines = [f"{suite}{dry}, ξ = {results['xi']}\n",
             "| method | score | set | ours AUROC | ours FPR95 | paper AUROC | paper FPR95 |",
             "|---|---|---|---|---|---|---|"]
    for method, by_score in results["methods"].items():
        for s, table in by_score.items():
            paper = PAPER.get((suite, method, s), {})
            for row, vals in table.items():
                key = "average" if row in ("farood",) and suite == "imagenet" else row
                p = paper.get(key)
                lines.append(f"| {method} | {s} | {row} | {vals['AUROC']:.2f} | {vals['FPR@95']:.2f} | "
                             f"{p[0] if p else '–'} | {p[1] if p else '–'} |")
    return "\n".join(lines) + "\n"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--data-root", default=None, help="OpenOOD's data folder (benchmark_imglist/, images_*)")
    p.add_argument("--checkpoint", default=None, help="base network weights (state_dict)")
    p.add_argument("--methods", type=comma_list, default=None,
                   help="comma list (default: baseline,um,umap,oe,um_oe; imagenet: baseline,umap)")
    p.add_argument("--scores", type=comma_list, default=None,
                   help="comma list (default: ebo, the authors' energy; imagenet: odin)")
    p.add_argument("--network", default=ReproConfig.network,
                   help=f"CIFAR network: {' or '.join(NETWORK_NAMES)} (default: theirs)")
    p.add_argument("--runs", type=int, default=ReproConfig.runs,
                   help="fine-tuning runs per row, reported as mean ± std (default: 1)")
    p.add_argument("--xi", type=float, default=None, help="loss constraint (default: estimate)")
    p.add_argument("--xi-draws", type=int, default=ReproConfig.xi_draws)
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the suite's)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning lr (default: the suite's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the suite's)")
    p.add_argument("--keep-ratio", type=float, default=None, help="UMAP keep ratio (default: the suite's)")
    p.add_argument("--workers", type=int, default=ReproConfig.workers)
    p.add_argument("--out", default=ReproConfig.out)
    p.add_argument("--dry-run", action="store_true", help="tiny random data + random weights")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(a) -> ReproConfig:
    """The run's configuration from parsed arguments."""
    return ReproConfig(suite=a.suite, out=a.out, data_root=a.data_root, checkpoint=a.checkpoint,
                       methods=a.methods, scores=a.scores, xi=a.xi, xi_draws=a.xi_draws,
                       epochs=a.epochs, lr=a.lr, batch=a.batch, keep_ratio=a.keep_ratio,
                       workers=a.workers, dry_run=a.dry_run, progress=not a.no_progress,
                       network=a.network, runs=a.runs)


def main(argv=None) -> int:
    """Entry point: one line and exit code 2 for any bad argument, before any work."""
    return run_main(PROG, build_parser(), argv, config_from_args, run)
