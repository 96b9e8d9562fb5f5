"""Paper reproduction through OpenOOD (GPU, OpenOOD's downloaded data and checkpoints).

CIFAR-10 / CIFAR-100: OpenOOD's ResNet-18 (32x32) checkpoint -> baseline / UM / UMAP, each
scored with msp / odin / ebo by OpenOOD's own Evaluator. ImageNet-1K: ResNet-50 -> UMAP +
ODIN. Our numbers are printed next to the paper's where the paper's are known. By default it
runs the authors' setting (their code's CIFAR configs): the core's ``FinetuneConfig`` defaults
(SGD lr 0.1, momentum 0.9 without Nesterov, per-epoch cosine, 100 epochs, UMAP keep 0.8),
batch 256, ξ estimated and fine-tuning run on the augmented training loader, OOD scores on the
final model; ``--epochs`` / ``--lr`` / ``--batch`` / ``--keep-ratio`` depart from it and the
results file records every setting used (``finetune``).

``--dry-run`` runs the same code on a tiny OpenOOD-format copy of the benchmark made of random
images (written in OpenOOD's own DATA_INFO layout for that ID name, so ``Evaluator`` is used
exactly as in a real run) with a randomly initialised network; it checks the plumbing, not
the numbers.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torchvision
import torchvision.transforms as T

from um_plugin.core import MODES, FinetuneConfig
from um_plugin.core.config import validate_keep_ratio, validate_xi
from um_plugin.core.distributed import strip_ddp_prefix
from um_plugin.core.runs import RUNNERS
from um_plugin.core.xi import estimate_xi

from .. import scorers as scoring
from ..checks import BenchmarkError, core_rule, count, known, positive, writable_folder
from ..cli import OneLineParser, comma_list, run_main
from .suites import (DEFAULTS, METHODS, PAPER, SUITES, _openood_data_info,
                     check_data, register_suite, suite_info, write_dry_run_data)

PROG = "python -m benchmarks.repro"


# ----------------------------------------------------------------------------- models
def build_net(suite: str, checkpoint: Optional[str], dry_run: bool):
    """OpenOOD's ResNet18_32x32 (CIFAR) or torchvision's ResNet-50 (ImageNet), loaded."""
    if suite in ("cifar10", "cifar100"):
        from openood.networks import ResNet18_32x32
        net = ResNet18_32x32(num_classes=10 if suite == "cifar10" else 100)
    else:
        net = torchvision.models.resnet50()
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise BenchmarkError(f"checkpoint {checkpoint!r} does not exist")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        strip_ddp_prefix(state)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise BenchmarkError(f"checkpoint {checkpoint!r} does not fit {type(net).__name__} "
                             f"for {suite}: {str(exc).splitlines()[0]}") from None
    elif not dry_run:
        raise BenchmarkError(f"--checkpoint is required for {suite} (OpenOOD's "
                         f"{'ResNet-18 s0/best.ckpt' if suite != 'imagenet' else 'ResNet-50'} weights)")
    return net


def train_loader(id_name: str, data_root: str, suite: str, batch: int, workers: int):
    """ID train split through OpenOOD's ImglistDataset with the authors' train augmentation
    (CIFAR: random crop with padding 4 and horizontal flip), shuffled, last batch kept."""
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
    split = DATA_INFO[id_name]["id"]["train"]
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
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch: Optional[int] = None
    keep_ratio: Optional[float] = None
    workers: int = 4
    dry_run: bool = False
    progress: bool = True

    def validate(self) -> "ReproConfig":
        """Every value checked before any work; BenchmarkError names the value and the rule."""
        if self.suite not in SUITES:
            raise BenchmarkError(f"unknown suite {self.suite!r}; valid: {list(SUITES)}")
        imagenet = self.suite == "imagenet"
        self.methods = list(dict.fromkeys(self.methods or (
            ["baseline", "umap"] if imagenet else list(METHODS))))
        self.methods = known("method", self.methods, METHODS)
        self.scores = self.scores or (["odin"] if imagenet else ["msp", "odin", "ebo"])
        try:
            self.scores = list(dict.fromkeys(scoring.check_scores(self.scores)))
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from None
        if self.xi is not None:
            core_rule("xi", validate_xi, self.xi)
        if self.keep_ratio is not None:
            core_rule("keep_ratio", validate_keep_ratio, self.keep_ratio)
        for name in ("epochs", "batch", "xi_draws"):
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
        """The suite's defaults with the values given explicitly."""
        cfg = dict(DEFAULTS[self.suite])
        cfg.update({k: v for k, v in dict(epochs=self.epochs, lr=self.lr, batch=self.batch,
                                          keep_ratio=self.keep_ratio).items() if v is not None})
        if self.dry_run:
            cfg.update(epochs=1, batch=4)
        return cfg


def evaluate(net, id_name: str, data_root: str, score: str, batch: int, workers: int):
    """OpenOOD's Evaluator + postprocessor (ODIN T=1000, noise 0.0014; EBO T=1) -> DataFrame."""
    from openood.evaluation_api import Evaluator
    post = scoring.openood_postprocessor(score, id_name)
    ev = Evaluator(net, id_name=id_name, data_root=data_root, config_root=None,
                   postprocessor=post, batch_size=batch, num_workers=workers)
    return ev.eval_ood(fsood=False, progress=False)


def run(rc: ReproConfig) -> dict:
    """One reproduction: returns and writes {method: {score: metrics table}} plus ξ."""
    rc.validate()
    cfg = rc.schedule()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data_root, workers = rc.data_root, rc.workers
    if rc.dry_run:
        data_root = tempfile.mkdtemp(prefix=f"um-repro-{rc.suite}-")
        _, info = suite_info(rc.suite, data_root)
        write_dry_run_data(info, data_root, info["num_classes"], 32 if rc.suite != "imagenet" else 64)
        workers = 0
        torch.set_num_threads(1)  # tiny tensors: extra threads only contend
    id_name = register_suite(rc.suite, data_root)
    check_data(_openood_data_info()[id_name], data_root)
    if device == "cpu":
        if not rc.dry_run:
            print(f"{PROG}: warning: no GPU; this will be very slow", file=sys.stderr)
        from um_plugin.openood.cpu import enable_cpu_fallback  # imports OpenOOD (optional)
        enable_cpu_fallback()
    net = build_net(rc.suite, rc.checkpoint, rc.dry_run).to(device)
    loader = train_loader(id_name, data_root, rc.suite, cfg["batch"], workers)
    results = {"suite": rc.suite, "dry_run": rc.dry_run, "device": device, "config": cfg,
               "run": asdict(rc), "methods": {},
               "paper": {f"{k[1]}+{k[2]}": v for k, v in PAPER.items() if k[0] == rc.suite}}
    t0 = time.time()
    xi = rc.xi
    if xi is None and set(MODES) & set(rc.methods):
        est = estimate_xi(net, loader, draws=rc.xi_draws, progress=rc.progress)
        xi = est.xi
        results["xi_estimate"] = {"xi": est.xi, "draws": list(est.xi_draws)}
    results["xi"] = xi
    out = rc.out
    for method in rc.methods:
        model = copy.deepcopy(net)
        if method != "baseline":
            fc = FinetuneConfig(mode=method, epochs=cfg["epochs"], lr=cfg["lr"],
                                keep_ratio=cfg["keep_ratio"], progress=rc.progress)
            results.setdefault("finetune", {})[method] = asdict(fc)
            RUNNERS[method](model, loader, xi, fc)
        model.eval()
        results["methods"][method] = {}
        for s in rc.scores:
            df = evaluate(model, id_name, data_root, s, cfg["batch"] * 2, workers)
            results["methods"][method][s] = {i: {c: float(df.loc[i, c]) for c in df.columns}
                                             for i in df.index}
            df.to_csv(os.path.join(out, f"{rc.suite}_{method}_{s}.csv"))
        with open(os.path.join(out, f"{rc.suite}_results.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    results["elapsed_s"] = time.time() - t0
    results["table"] = side_by_side(results)
    with open(os.path.join(out, f"{rc.suite}_results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(out, f"{rc.suite}_table.md"), "w") as fh:
        fh.write(results["table"])
    return results


def side_by_side(results: dict) -> str:
    """Our AUROC / FPR@95 per set and method+score, with the paper's where known."""
    suite = results["suite"]
    lines = [f"{suite}{' (DRY RUN: random data and weights, numbers meaningless)' if results['dry_run'] else ''}"
             f", ξ = {results['xi']}\n",
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
                   help="comma list (default: baseline,um,umap; imagenet: baseline,umap)")
    p.add_argument("--scores", type=comma_list, default=None,
                   help="comma list (default: msp,odin,ebo; imagenet: odin)")
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
                       workers=a.workers, dry_run=a.dry_run, progress=not a.no_progress)


def main(argv=None) -> int:
    """Entry point: one line and exit code 2 for any bad argument, before any work."""
    return run_main(PROG, build_parser(), argv, config_from_args, run)
