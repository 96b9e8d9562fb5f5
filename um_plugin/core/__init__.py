"""The method itself in plain PyTorch: loss constraint, score masks, ξ, fine-tune loops."""
from .batches import unpack_batch
from .checkpoint import save_checkpoint
from .config import MODES, OFFICIAL_UMAP_KEEP_RATIO, FinetuneConfig
from .finetune import Finetuner, History, NonFiniteLossError
from .masks import (attach_score_masks, bake_masks, freeze_weights, has_score_masks,
                    mask_settings, refresh_masks, remove_score_masks, score_parameters)
from .objective import LossConstraint
from .outliers import EnergyMarginLoss, OutlierExposureLoss
from .runs import load_checkpoint, run_um, run_umap
from .xi import OFFICIAL_ESTIMATE_KEEP_RATIO, XiEstimate, estimate_xi

__all__ = [
    "LossConstraint", "attach_score_masks", "bake_masks", "freeze_weights", "has_score_masks",
    "remove_score_masks", "score_parameters", "estimate_xi", "XiEstimate",
    "OFFICIAL_ESTIMATE_KEEP_RATIO", "OFFICIAL_UMAP_KEEP_RATIO", "MODES", "mask_settings",
    "refresh_masks",
    "FinetuneConfig", "Finetuner", "History",
    "NonFiniteLossError", "run_um", "run_umap", "save_checkpoint", "load_checkpoint",
    "unpack_batch", "OutlierExposureLoss", "EnergyMarginLoss",
]
