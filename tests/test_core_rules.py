"""Each rule of the core has one home: the settings' rules in config.py, the batch rules in
batches.py, the mode -> run map in runs.py; every caller meets the same rule and message."""
import ast
import pathlib

import pytest
import torch

from core_helpers import TinyCNN, loader
from um_plugin.core import FinetuneConfig, Finetuner, run_um, run_umap
from um_plugin.core.config import MODES, THRESHOLDS
from um_plugin.core.masks import attach_score_masks
from um_plugin.core.runs import RUNNERS
from um_plugin.core.xi import estimate_xi

CORE = pathlib.Path(__file__).resolve().parents[1] / "um_plugin" / "core"


def test_config_imports_no_other_module_of_the_core():
    tree = ast.parse((CORE / "config.py").read_text())
    relative = [node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.level or
                                                         (node.module or "").startswith("um_plugin"))]
    assert relative == []


@pytest.mark.parametrize("threshold", ["model", None])
def test_one_threshold_rule_for_config_masks_and_xi(threshold):
    message = f"threshold must be one of {THRESHOLDS}, got {threshold!r}"
    with pytest.raises(ValueError) as config:
        FinetuneConfig(threshold=threshold)
    with pytest.raises(ValueError) as masks:
        attach_score_masks(TinyCNN(), 0.5, threshold=threshold)
    with pytest.raises(ValueError) as xi:
        estimate_xi(TinyCNN(), loader(), threshold=threshold, progress=False)
    assert str(config.value) == str(masks.value) == str(xi.value) == message


class _Features(TinyCNN):
    def forward(self, x):
        return super().forward(x).unsqueeze(-1)  # (batch, classes, 1): not logits


def test_engine_and_xi_refuse_non_logits_alike():
    """The engine raised TypeError and xi ValueError for the same rule; now both ValueError."""
    tuner = Finetuner(_Features(), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    with pytest.raises(ValueError) as engine:
        tuner.train_epoch([next(iter(loader(batch_size=4)))])
    with pytest.raises(ValueError) as xi:
        estimate_xi(_Features(), loader(batch_size=4), progress=False)
    rule = "_Features must return (batch, classes) logits, got (4, 3, 1) for a batch of 4"
    assert str(engine.value) == str(xi.value) == rule


def test_engine_and_xi_state_the_same_label_rule():
    bad = [(torch.zeros(2, 1, 8, 8), torch.tensor([0, 5]))]
    with pytest.raises(ValueError) as engine:
        Finetuner(TinyCNN(), 0.1, FinetuneConfig(epochs=1, progress=False), 1).train_epoch(bad)
    with pytest.raises(ValueError) as xi:
        estimate_xi(TinyCNN(), bad, progress=False)
    assert str(engine.value) == ("labels must be class indices in [0, 2] for a model with 3 "
                                 "outputs, got labels in [0, 5] (-100, PyTorch's ignore_index, is "
                                 "refused too: every sample must count in the loss)")
    assert str(xi.value) == str(engine.value).replace("labels must", "labels of batch 0 must")


def test_one_runner_per_mode():
    assert RUNNERS == {"um": run_um, "umap": run_umap} and tuple(RUNNERS) == MODES


def test_tensor_and_number_settings_share_one_number_rule():
    with pytest.raises(ValueError, match=r"^lr must be a single finite number > 0, got a "):
        FinetuneConfig(lr=torch.tensor([0.1, 0.2]))
    assert FinetuneConfig(beta=torch.tensor(2.0)).beta == 2.0
    with pytest.raises(ValueError, match=r"^momentum must be a finite number in \[0, 1\), got 1.0$"):
        FinetuneConfig(momentum=1.0)


def test_config_and_xi_share_the_integer_and_flag_rules():
    with pytest.raises(ValueError, match=r"^epochs must be an integer >= 1, got 0$"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match=r"^draws must be an integer >= 1, got 0$"):
        estimate_xi(TinyCNN(), loader(), draws=0)
    with pytest.raises(ValueError, match=r"^progress must be True or False, got 1$"):
        FinetuneConfig(progress=1)
    with pytest.raises(ValueError, match=r"^report must be True or False, got 1$"):
        estimate_xi(TinyCNN(), loader(), report=1)
