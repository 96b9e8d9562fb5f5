"""The authors' CIFAR protocol (github.com/ZFancy/Unleashing-Mask), as data the plan prints.

Their rows (README "Sample Results", CIFAR-10, DenseNet-BC-100, energy score, mean (std)),
their networks' starting checkpoints, their OOD sets and how they average them
(``utils/get_scores.ood_measure``: the plain mean of each set's AUROC / AUPR / FPR95 over the
listed sets), and which of those sets OpenOOD ships with the same images. Everything here was
read from their code; nothing is guessed where the code is silent (it says so instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# metric -> (mean, std) of the authors' README; AUPR is theirs with ID as the positive class,
# which OpenOOD calls AUPR_IN
REFERENCE = {
    "cifar10": {
        "baseline": {"AUROC": (92.07, 0.22), "AUPR_IN": (92.72, 0.39), "FPR@95": (42.69, 1.31),
                     "ACC": (94.01, 0.08)},
        "um": {"AUROC": (93.73, 0.36), "AUPR_IN": (94.27, 0.60), "FPR@95": (33.29, 1.70),
               "ACC": (92.80, 0.47)},
        "oe": {"AUROC": (97.07, 0.01), "AUPR_IN": (97.31, 0.05), "FPR@95": (13.80, 0.28),
               "ACC": (92.59, 0.32)},
        "um_oe": {"AUROC": (97.60, 0.03), "AUPR_IN": (97.87, 0.02), "FPR@95": (11.22, 0.16),
                  "ACC": (93.66, 0.12)},
    },
    "cifar100": {},  # their README gives CIFAR-10 rows only
}
ROW_NAMES = {"baseline": "Energy", "um": "Energy+UM", "umap": "Energy+UMAP", "oe": "OE",
             "um_oe": "OE+UM", "umap_oe": "OE+UMAP"}
METRICS = ("AUROC", "AUPR_IN", "FPR@95", "ACC")

# configs/smallscale/densenet_<suite>.yaml: ood_set, and the base each config loads
THEIR_OOD_SETS = {
    "cifar10": ("CIFAR100", "iNaturalist", "SUN", "Places", "dtd", "LSUN", "SVHN"),
    "cifar100": ("CIFAR10", "iNaturalist", "SUN", "Places", "dtd", "LSUN", "SVHN"),
}
# configs/OE/oe-baseline.yaml lists LSUN twice, so their OE rows weigh LSUN double
THEIR_OE_OOD_SETS = ("LSUN", "CIFAR100", "iNaturalist", "SUN", "Places", "dtd", "LSUN")
BASE_CHECKPOINT = {"cifar10": "densenet_cifar10_last.state (the final epoch)",
                   "cifar100": "densenet_cifar100_best.state (their CIFAR-100 configs load the "
                               "'best', middle-stage model, not the last)"}
# their set -> OpenOOD v1.5's set with the same images, or why none
OPENOOD_SAME = {
    "CIFAR100": ("cifar100", None), "CIFAR10": ("cifar10", None),
    "SVHN": ("svhn", None),
    "dtd": ("texture", None),
    "Places": (None, "OpenOOD's places365 for CIFAR is another selection of Places365 images "
                     "than their 32x32 Places set"),
    "iNaturalist": (None, "OpenOOD ships iNaturalist for ImageNet only"),
    "SUN": (None, "OpenOOD ships SUN for ImageNet only"),
    "LSUN": (None, "OpenOOD v1.5 has no LSUN"),
}
OE_OUTLIERS = ("OpenOOD's TIN-597 (benchmark_imglist/<suite>/train_tin597.txt); theirs: 50,000 "
               "images drawn once (select_ood) from their 64x64 ImageNet auxiliary set, random "
               "crop 32 with padding 4 and flip")


@dataclass(frozen=True)
class Row:
    """One row of the plan: a method, how it fine-tunes, and the authors' setting for it."""

    method: str
    epochs: Optional[int]       # None: no fine-tuning (the base network)
    lr: Optional[float]
    outlier_loss: str = "none"
    xi: str = "estimated"       # 'estimated' (estimate_loss.py, one 96.5% mask) or '0'
    freeze_weights: bool = True
    source: str = ""


def rows(suite: str) -> dict:
    """method -> Row at the authors' setting for ``suite``."""
    if suite == "imagenet":  # the schedule is not stated in what we could read: a short one
        return {"baseline": Row("baseline", None, None, xi="–", source="the base network"),
                "umap": Row("umap", 5, 0.1, source="not stated; 5 epochs fit one GPU-day")}
    umap_freeze = suite == "cifar10"  # densenet_cifar100_UMAP.yaml: freeze_weights False
    umap_cfg = f"configs/smallscale/densenet_{suite}_UMAP.yaml"
    return {
        "baseline": Row("baseline", None, None, xi="–", source="the base network"),
        "um": Row("um", 100, 0.1, source=f"configs/smallscale/densenet_{suite}.yaml, --UM xi"),
        "umap": Row("umap", 100, 0.1, freeze_weights=umap_freeze, source=umap_cfg),
        "oe": Row("oe", 10, 0.01, "oe", xi="0", source="configs/OE/oe-baseline.yaml, --UM 0"),
        "um_oe": Row("um_oe", 10, 0.01, "oe", source="configs/OE/oe-baseline.yaml, --UM xi"),
    }


def available_sets(suite: str) -> tuple:
    """(OpenOOD set names averaged, [(their set, why missing)])."""
    same, missing = [], []
    for name in THEIR_OOD_SETS[suite]:
        ours, why = OPENOOD_SAME[name]
        (same.append(ours) if ours else missing.append((name, why)))
    return tuple(same), missing


def average_as_they_do(table: dict, sets: tuple) -> dict:
    """The plain mean over ``sets`` of each per-set metric (their ood_measure), and the ID
    accuracy OpenOOD reports with every set (a fraction there, a percentage here and theirs)."""
    out = {m: sum(table[s][m] for s in sets) / len(sets) for m in METRICS if m != "ACC"}
    out["ACC"] = 100 * table[sets[0]]["ACC"]
    return out


NOTES = (
    "their configs set criterion: CrossEntropyLoss, for which get_criterion returns plain "
    "cross-entropy and --UM would not act; we run the loss their README and paper give, "
    "|beta*CE - xi| + xi",
    "ID augmentation: RandomCrop(32, padding 4) + flip, as theirs; inputs normalised by "
    "OpenOOD with CIFAR statistics equal to theirs to 4 decimals",
    "energy score at T = 1 (OpenOOD's ebo), as their --energy",
)
