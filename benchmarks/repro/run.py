"""Paper reproduction through OpenOOD (GPU, OpenOOD's downloaded data and checkpoints).

CIFAR-10 / CIFAR-100: OpenOOD's ResNet-18 (32x32) checkpoint -> baseline / UM / UMAP, each
scored with msp / odin / ebo by OpenOOD's own Evaluator. ImageNet-1K: ResNet-50 -> UMAP +
ODIN. Our numbers are printed next to the paper's where the paper's are known.

``--dry-run`` runs the same code on a tiny OpenOOD-format copy of the benchmark made of random
images (written in OpenOOD's own DATA_INFO layout for that ID name, so ``Evaluator`` is used
exactly as in a real run) with a randomly initialised network; it checks the plumbing, not
the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np
import torch

from .. import scorers as scoring

SUITES = ("cifar10", "cifar100", "imagenet")
METHODS = ("baseline", "um", "umap")

# The paper's numbers that could be read (sources: the README's Benchmarks section):
# ImageNet-1K, ResNet-50, ODIN + UMAP (AUROC, FPR@95).
PAPER = {
    ("imagenet", "umap", "odin"): {
        "inaturalist": (94.71, 21.97), "texture": (88.35, 42.02), "places": (86.99, 50.06),
        "sun": (86.92, 49.69), "average": (89.24, 40.94)},
}
# The paper's ImageNet OOD sets (OpenOOD v1.5 calls Textures 'texture'); OpenOOD's own
# ImageNet benchmark uses other far-OOD sets, so the reproduction registers the paper's.
PAPER_IMAGENET_OOD = ("inaturalist", "sun", "places", "texture")
IMAGENET_ID_NAME = "imagenet_um_paper"  # contains "imagenet": OpenOOD's loaders treat it so

DEFAULTS = {  # official configs for CIFAR (100 epochs, lr 0.1 cosine, batch 256, UMAP keep 0.8)
    "cifar10": dict(epochs=100, lr=0.1, batch=256, keep_ratio=0.8),
    "cifar100": dict(epochs=100, lr=0.1, batch=256, keep_ratio=0.8),
    # not stated in the material we could read; a short schedule that fits one GPU-day
    "imagenet": dict(epochs=5, lr=0.1, batch=256, keep_ratio=0.8),
}


class ReproError(Exception):
    """A bad argument or missing file, reported as one line."""


# ----------------------------------------------------------------------------- data
def _openood_data_info():
    from openood.evaluation_api.datasets import DATA_INFO
    return DATA_INFO


def imagenet_paper_info(data_root: str) -> dict:
    """DATA_INFO for ImageNet-1K with the paper's four OOD sets (iNat, SUN, Places, Textures).

    iNaturalist and Textures use OpenOOD's own imglists; OpenOOD downloads SUN and Places
    images ('sun', 'places') but names no imglist for them in DATA_INFO, so
    ``test_sun.txt`` / ``test_places.txt`` are expected next to the others (check_data says
    so by name if they are missing). Near-OOD stays OpenOOD's (SSB-hard, NINCO).
    """
    base = _openood_data_info()["imagenet"]
    lists = {"inaturalist": ("images_largescale/", "test_inaturalist.txt"),
             "texture": ("images_classic/", "test_textures.txt"),
             "places": ("images_largescale/", "test_places.txt"),
             "sun": ("images_largescale/", "test_sun.txt")}
    far = {"datasets": list(PAPER_IMAGENET_OOD)}
    for name in PAPER_IMAGENET_OOD:
        far[name] = {"data_dir": lists[name][0],
                     "imglist_path": f"benchmark_imglist/imagenet/{lists[name][1]}"}
    return {"num_classes": 1000, "id": base["id"], "csid": {"datasets": []},
            # OpenOOD cannot average an empty split, so near-OOD stays OpenOOD's own (SSB-hard,
            # NINCO); 'farood' is then the mean over exactly the paper's four sets
            "ood": {"val": base["ood"]["val"], "near": base["ood"]["near"], "far": far}}


def suite_info(suite: str, data_root: str) -> tuple:
    """(id_name to pass to Evaluator, its DATA_INFO entry)."""
    if suite == "imagenet":
        return IMAGENET_ID_NAME, imagenet_paper_info(data_root)
    return suite, _openood_data_info()[suite]


def register_suite(suite: str, data_root: str) -> str:
    """Make the suite's ID name known to OpenOOD; CIFAR names are OpenOOD's own already.

    The ImageNet entry mixes two image folders (Textures is under images_classic/), which
    ``register_benchmark``'s single ``data_dir`` cannot say, so it is written directly with
    OpenOOD's ImageNet preprocessing.
    """
    id_name, info = suite_info(suite, data_root)
    if suite == "imagenet":
        from openood.evaluation_api import datasets as oo_datasets
        from openood.evaluation_api import preprocessor as oo_pre
        oo_datasets.DATA_INFO[id_name] = info
        oo_datasets.benchmarks_dict[id_name] = []
        oo_pre.default_preprocessing_dict[id_name] = dict(oo_pre.default_preprocessing_dict["imagenet"])
    return id_name


def _leaves(info: dict):
    """Every (data_dir, imglist_path, is_ood) in a DATA_INFO entry."""
    out = [(v["data_dir"], v["imglist_path"], False) for v in info["id"].values()]
    out += [(info["csid"][n]["data_dir"], info["csid"][n]["imglist_path"], False)
            for n in info["csid"]["datasets"]]
    out.append((info["ood"]["val"]["data_dir"], info["ood"]["val"]["imglist_path"], True))
    for split in ("near", "far"):
        for name in info["ood"][split]["datasets"]:
            out.append((info["ood"][split][name]["data_dir"],
                        info["ood"][split][name]["imglist_path"], True))
    return out


def check_data(info: dict, data_root: str) -> None:
    """Refuse to start (one line) when an imglist OpenOOD needs is missing, before its downloader runs."""
    for _, imglist, _ in _leaves(info):
        path = os.path.join(data_root, imglist)
        if not os.path.isfile(path):
            raise ReproError(f"{path} is missing; download OpenOOD's benchmark data "
                             "(scripts/download/download.sh in OpenOOD) into --data-root")


def write_dry_run_data(info: dict, root: str, num_classes: int, size: int, per_split: int = 4,
                       seed: int = 0) -> None:
    """Random PNGs in exactly the layout ``info`` describes (and every folder OpenOOD checks)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for data_dir, imglist, is_ood in _leaves(info):
        stem = os.path.splitext(os.path.basename(imglist))[0]
        lines = []
        n = per_split if not imglist.endswith(("train_cifar10.txt", "train_cifar100.txt",
                                               "train_imagenet.txt")) else 2 * per_split
        for i in range(n):
            name = f"{stem.split('_', 1)[-1]}/dryrun/{stem}_{i}.png"
            path = os.path.join(root, data_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
            lines.append(f"{name} {-1 if is_ood else i % num_classes}\n")
        os.makedirs(os.path.dirname(os.path.join(root, imglist)), exist_ok=True)
        with open(os.path.join(root, imglist), "w") as fh:
            fh.writelines(lines)
    # data_setup() downloads any benchmarks_dict dataset whose folder is empty: fill them
    from openood.evaluation_api.datasets import benchmarks_dict, dir_dict
    for name in benchmarks_dict.get(_suite_of(info), []):
        for key, names in dir_dict.items():
            if name in names:
                d = os.path.join(root, key, name)
                os.makedirs(d, exist_ok=True)
                if not os.listdir(d):
                    open(os.path.join(d, "dryrun.txt"), "w").close()


def _suite_of(info: dict) -> str:
    return {10: "cifar10", 100: "cifar100"}.get(info["num_classes"], IMAGENET_ID_NAME)


# ----------------------------------------------------------------------------- models
def build_net(suite: str, checkpoint: Optional[str], dry_run: bool):
    """OpenOOD's ResNet18_32x32 (CIFAR) or torchvision's ResNet-50 (ImageNet), loaded."""
    if suite in ("cifar10", "cifar100"):
        from openood.networks import ResNet18_32x32
        net = ResNet18_32x32(num_classes=10 if suite == "cifar10" else 100)
    else:
        import torchvision
        net = torchvision.models.resnet50()
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ReproError(f"checkpoint {checkpoint!r} does not exist")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ReproError(f"checkpoint {checkpoint!r} does not fit {type(net).__name__} "
                             f"for {suite}: {str(exc).splitlines()[0]}") from None
    elif not dry_run:
        raise ReproError(f"--checkpoint is required for {suite} (OpenOOD's "
                         f"{'ResNet-18 s0/best.ckpt' if suite != 'imagenet' else 'ResNet-50'} weights)")
    return net


def train_loader(id_name: str, data_root: str, suite: str, batch: int, workers: int):
    """ID train split through OpenOOD's ImglistDataset with the usual train augmentation."""
    import torchvision.transforms as T
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
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=len(ds) > batch)


# ----------------------------------------------------------------------------- run
def evaluate(net, id_name: str, data_root: str, score: str, batch: int, workers: int):
    """OpenOOD's Evaluator + postprocessor (ODIN T=1000, noise 0.0014; EBO T=1) -> DataFrame."""
    from openood.evaluation_api import Evaluator
    post = scoring.openood_postprocessor(score, id_name)
    ev = Evaluator(net, id_name=id_name, data_root=data_root, config_root=None,
                   postprocessor=post, batch_size=batch, num_workers=workers)
    return ev.eval_ood(fsood=False, progress=False)


def run(suite: str, data_root: Optional[str], checkpoint: Optional[str], methods: List[str],
        scores: List[str], out: str, xi: Optional[float] = None, epochs: Optional[int] = None,
        lr: Optional[float] = None, batch: Optional[int] = None, keep_ratio: Optional[float] = None,
        xi_draws: int = 3, workers: int = 4, dry_run: bool = False, progress: bool = True) -> dict:
    """One reproduction: returns and writes {method: {score: metrics table}} plus ξ."""
    if suite not in SUITES:
        raise ReproError(f"unknown suite {suite!r}; valid: {list(SUITES)}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ReproError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    try:
        scoring.check_scores(scores)
    except ValueError as exc:
        raise ReproError(str(exc)) from None
    try:
        import openood  # noqa: F401
    except ImportError:
        raise ReproError("the reproduction runs through OpenOOD; install it first") from None
    from um_plugin.core.finetune import FinetuneConfig, run_um, run_umap
    from um_plugin.core.xi import estimate_xi
    cfg = dict(DEFAULTS[suite])
    cfg.update({k: v for k, v in dict(epochs=epochs, lr=lr, batch=batch,
                                      keep_ratio=keep_ratio).items() if v is not None})
    os.makedirs(out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = None
    if dry_run:
        tmp = tempfile.mkdtemp(prefix=f"um-repro-{suite}-")
        data_root = tmp
        id_name, info = suite_info(suite, data_root)
        write_dry_run_data(info, data_root, info["num_classes"], 32 if suite != "imagenet" else 64)
        cfg.update(epochs=1, batch=4)
        workers = 0
        torch.set_num_threads(1)  # tiny tensors: extra threads only contend
    if not data_root:
        raise ReproError("--data-root is required (OpenOOD's data folder with benchmark_imglist/)")
    id_name = register_suite(suite, data_root)
    check_data(_openood_data_info()[id_name], data_root)
    if device == "cpu":
        if not dry_run:
            print("um-repro: warning: no GPU; this will be very slow", file=sys.stderr)
        from um_plugin.openood.cpu import enable_cpu_fallback
        enable_cpu_fallback()
    net = build_net(suite, checkpoint, dry_run).to(device)
    loader = train_loader(id_name, data_root, suite, cfg["batch"], workers)
    results = {"suite": suite, "dry_run": dry_run, "device": device, "config": cfg,
               "methods": {}, "paper": {f"{k[1]}+{k[2]}": v for k, v in PAPER.items() if k[0] == suite}}
    t0 = time.time()
    if xi is None and ({"um", "umap"} & set(methods)):
        est = estimate_xi(net, loader, draws=xi_draws, progress=progress)
        xi = est.xi
        results["xi_estimate"] = {"xi": est.xi, "draws": list(est.xi_draws)}
    results["xi"] = xi
    for method in methods:
        import copy
        model = copy.deepcopy(net)
        if method != "baseline":
            fc = FinetuneConfig(mode=method, epochs=cfg["epochs"], lr=cfg["lr"],
                                keep_ratio=cfg["keep_ratio"], progress=progress)
            (run_um if method == "um" else run_umap)(model, loader, xi, fc)
        model.eval()
        results["methods"][method] = {}
        for s in scores:
            df = evaluate(model, id_name, data_root, s, cfg["batch"] * 2, workers)
            results["methods"][method][s] = {i: {c: float(df.loc[i, c]) for c in df.columns}
                                             for i in df.index}
            df.to_csv(os.path.join(out, f"{suite}_{method}_{s}.csv"))
        with open(os.path.join(out, f"{suite}_results.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    results["elapsed_s"] = time.time() - t0
    results["table"] = side_by_side(results)
    with open(os.path.join(out, f"{suite}_results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(out, f"{suite}_table.md"), "w") as fh:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="um-repro", description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--data-root", default=None, help="OpenOOD's data folder (benchmark_imglist/, images_*)")
    p.add_argument("--checkpoint", default=None, help="base network weights (state_dict)")
    p.add_argument("--methods", default=None, help="comma list (default: baseline,um,umap; "
                   "imagenet: baseline,umap)")
    p.add_argument("--scores", default=None, help="comma list (default: msp,odin,ebo; imagenet: odin)")
    p.add_argument("--xi", type=float, default=None, help="loss constraint (default: estimate)")
    p.add_argument("--xi-draws", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--keep-ratio", type=float, default=None)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default="um-repro-results")
    p.add_argument("--dry-run", action="store_true", help="tiny random data + random weights")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    methods = (a.methods or ("baseline,umap" if a.suite == "imagenet" else "baseline,um,umap")).split(",")
    scores = (a.scores or ("odin" if a.suite == "imagenet" else "msp,odin,ebo")).split(",")
    try:
        r = run(a.suite, a.data_root, a.checkpoint, methods, scores, a.out, a.xi, a.epochs, a.lr,
                a.batch, a.keep_ratio, a.xi_draws, a.workers, a.dry_run, not a.no_progress)
    except ReproError as exc:
        print(f"um-repro: error: {exc}", file=sys.stderr)
        return 2
    print(r["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
