"""The reproduction's benchmark suites: OpenOOD's CIFAR entries and the paper's ImageNet-1K one.

Also the checks that an imglist OpenOOD needs exists (before its downloader runs), and the
tiny random-image copy of a suite that ``--dry-run`` uses.
"""
from __future__ import annotations

import os

import numpy as np

from um_plugin.core import OFFICIAL_UMAP_KEEP_RATIO

from ..checks import BenchmarkError
from ..imglist import write_image_list

SUITES = ("cifar10", "cifar100", "imagenet")
_OFFICIAL = dict(batch=256, keep_ratio=OFFICIAL_UMAP_KEEP_RATIO)

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

# the authors' CIFAR configs (batch 256, UMAP keep 0.8); epochs and lr are each row's
# (authors.rows)
DEFAULTS = {suite: dict(_OFFICIAL) for suite in SUITES}


def oe_split(suite: str) -> dict:
    """OpenOOD's outlier-exposure split for a CIFAR suite (its ``<suite>_oe.yml``: TIN-597)."""
    return {"data_dir": "images_classic/",
            "imglist_path": f"benchmark_imglist/{suite}/train_tin597.txt"}


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


def check_data(info: dict, data_root: str, extra: tuple = ()) -> None:
    """Refuse to start (one line) when an imglist OpenOOD needs is missing, before its downloader runs."""
    for _, imglist, _ in _leaves(info) + list(extra):
        path = os.path.join(data_root, imglist)
        if not os.path.isfile(path):
            raise BenchmarkError(f"{path} is missing; download OpenOOD's benchmark data "
                             "(scripts/download/download.sh in OpenOOD) into --data-root")


def write_dry_run_data(info: dict, root: str, num_classes: int, size: int, per_split: int = 4,
                       seed: int = 0, extra: tuple = ()) -> None:
    """Random PNGs in exactly the layout ``info`` describes (and every folder OpenOOD checks);
    ``extra``: more ``(data_dir, imglist, is_ood)`` leaves, e.g. the OE split."""
    rng = np.random.default_rng(seed)
    for data_dir, imglist, is_ood in _leaves(info) + list(extra):
        stem = os.path.splitext(os.path.basename(imglist))[0]
        n = per_split if not imglist.endswith(("train_cifar10.txt", "train_cifar100.txt",
                                               "train_imagenet.txt")) else 2 * per_split
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
        write_image_list(root, data_dir, f"{stem.split('_', 1)[-1]}/dryrun/{stem}", imglist,
                         images, None if is_ood else [i % num_classes for i in range(n)])
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
