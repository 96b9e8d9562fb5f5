"""estimate_xi refuses bad input in one clear error, before any work or naming the batch, on
every rank alike, and leaves no masks behind."""
import pytest
import torch
from torch import nn

from core_helpers import TinyCNN, fresh_copy, loader
from um_plugin.core import xi as xi_module
from um_plugin.core.masks import attach_score_masks, has_score_masks
from um_plugin.core.xi import estimate_xi


@pytest.mark.parametrize("kw", [{"report": 1}, {"progress": "no"}, {"draws": 0}, {"top_n": -1},
                                {"threshold": "model"}, {"seed": 1.5}])
def test_bad_arguments_before_any_work(base, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        estimate_xi(base, loader(), **kw)


def test_model_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        estimate_xi(nn.Flatten(), loader(), progress=False)


def test_masked_model_is_refused(base):
    copy = fresh_copy(base)
    attach_score_masks(copy, 0.8)
    with pytest.raises(RuntimeError, match="unmasked model"):
        estimate_xi(copy, loader(), progress=False)


def test_model_must_return_logits():
    class Pair(TinyCNN):
        def forward(self, x):
            return super().forward(x, return_feature=True)
    with pytest.raises(ValueError, match=r"\(batch, classes\) logits"):
        estimate_xi(Pair(), loader(), progress=False)


def test_empty_loader(base):
    with pytest.raises(ValueError, match="no samples"):
        estimate_xi(base, [], progress=False)
    assert not has_score_masks(base)


def test_empty_batches_only(base):
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no samples"):
        estimate_xi(base, [empty], progress=False)


def test_non_tensor_batches(base):
    with pytest.raises(TypeError, match="torch.Tensor"):
        estimate_xi(base, [([[0.0]], [0])], progress=False)
    assert not has_score_masks(base)


def test_mismatched_labels(base):
    with pytest.raises(ValueError, match="labels of shape"):
        estimate_xi(base, [(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))],
                    progress=False)


@pytest.mark.parametrize("report", [False, True])
def test_non_finite_loss_names_the_batch(base, report):
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    batches = [empty] + [(x.clone(), y) for x, y in loader(batch_size=32)]  # batch 0 is empty
    batches[2][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite in batch 2"):
        estimate_xi(base, batches, progress=False, report=report)
    assert not has_score_masks(base)


@pytest.mark.parametrize("bad", [-100, 3, -1])
def test_labels_outside_the_classes_are_refused(base, bad):
    batches = [(x, y.clone()) for x, y in loader(batch_size=32)]
    batches[2][1][5] = bad
    with pytest.raises(ValueError, match=r"batch 2 .*\[0, 2\]"):
        estimate_xi(base, batches, progress=False)
    assert not has_score_masks(base)


@pytest.mark.parametrize("patch", ["is_distributed", "_readable_without_sync"])
def test_deferred_label_check(base, monkeypatch, patch):
    """Under torch.distributed, or with device labels (read only with a sync), bad labels are
    counted with tensor ops and refused after the pass, on every rank alike."""
    monkeypatch.setattr(xi_module, patch, lambda *a: patch == "is_distributed")
    calls = []
    hook = base.register_forward_hook(lambda *a: calls.append(1))
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    batches = [empty] + [(x, y.clone()) for x, y in loader(batch_size=32)]
    batches[2][1][:2] = -100
    try:
        with pytest.raises(ValueError, match=r"batch 2.*\[0, 2\].*-100"):
            estimate_xi(base, batches, progress=False)
    finally:
        hook.remove()
    assert len(calls) == 3  # the pass finished: no rank stops alone
