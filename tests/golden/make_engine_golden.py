"""Write the golden UM/UMAP results that tests/test_core_golden.py holds the engine to.

Run from the repository root against the version to freeze (the committed file was made at
commit 66faca0, before the engine was unified and the mask op sped up):
    PYTHONPATH=$PWD python tests/golden/make_engine_golden.py tests/golden/engine_66faca0.pt
"""
import sys

import torch

sys.path.insert(0, "tests")
from core_helpers import loader, trained_model  # noqa: E402
from um_plugin.core import FinetuneConfig, run_um, run_umap  # noqa: E402

CASES = [("um", run_um, {}), ("umap_layer", run_umap, {"threshold": "layer"}),
         ("umap_global", run_umap, {"threshold": "global"}),
         ("umap_train_both", run_umap, {"freeze_weights": False})]


def golden_runs() -> dict:
    """Each case from the same trained TinyCNN, fixed data order, every setting explicit."""
    torch.set_num_threads(1)
    out = {}
    for name, run, kw in CASES:
        model = trained_model(epochs=20)
        torch.manual_seed(3)
        cfg = FinetuneConfig(epochs=2, lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=False,
                             lr_schedule="step", keep_ratio=0.8, beta=1.0, min_lr=0.0, seed=0, progress=False, **kw)
        hist = run(model, loader(shuffle=False), 0.15, cfg)
        out[name] = {"state": {k: v.clone() for k, v in model.state_dict().items()},
                     "loss": hist.loss}
    return out


if __name__ == "__main__":
    torch.save(golden_runs(), sys.argv[1])
