"""estimate_xi: one forward per batch, exact restore, and one clear error for every bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core_helpers import TinyCNN, loader, trained_model
from um_plugin.core import xi as xi_module
from um_plugin.core.masks import attach_score_masks, has_score_masks
from um_plugin.core.xi import estimate_xi


@pytest.fixture(scope="module")
def model():
    return trained_model(epochs=30)


def test_report_false_runs_one_forward_per_batch_and_same_xi(model):
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        quick = estimate_xi(model, loader(batch_size=32), keep_ratio=0.8, progress=False)
        assert len(calls) == 3
        calls.clear()
        full = estimate_xi(model, loader(batch_size=32), keep_ratio=0.8, progress=False,
                           report=True)
        assert len(calls) == 6
        calls.clear()
        estimate_xi(model, loader(batch_size=32), keep_ratio=0.8, draws=2, progress=False)
        assert len(calls) == 6
    finally:
        hook.remove()
    assert quick.xi == full.xi and quick.xi_draws == full.xi_draws
    assert quick.masked_accuracy == full.masked_accuracy
    assert quick.base_loss is None and quick.base_accuracy is None
    assert quick.sample_index is None and quick.per_sample_increase is None
    assert quick.atypical is None
    assert full.base_loss is not None and full.atypical.numel() == 10
    assert "unmasked" not in quick.summary() and "unmasked train loss" in full.summary()
    assert "masked train accuracy" in quick.summary()


def test_accuracies_match_a_manual_computation(model):
    est = estimate_xi(model, loader(), keep_ratio=0.9, seed=7, progress=False, report=True)
    x, y = loader(batch_size=96).dataset.tensors
    copy = TinyCNN()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    with torch.no_grad():
        base = (copy(x).argmax(1) == y).float().mean().item()
        attach_score_masks(copy, 0.9, generator=torch.Generator().manual_seed(7))
        masked = (copy(x).argmax(1) == y).float().mean().item()
    assert est.base_accuracy == pytest.approx(base)
    assert est.masked_accuracy == pytest.approx(masked)


def test_every_module_gets_its_own_train_flag_back(model):
    model.train()
    model.bn.eval()  # a frozen BatchNorm kept in eval inside a training model
    estimate_xi(model, loader(), progress=False)
    assert model.training and not model.bn.training and model.conv.training


def test_parameter_and_state_dict_order_are_kept():
    model = TinyCNN()  # fresh: the shared fixture has been through estimate_xi already
    before = ([n for n, _ in model.named_parameters()], list(model.state_dict()))
    estimate_xi(model, loader(), progress=False)
    assert ([n for n, _ in model.named_parameters()], list(model.state_dict())) == before


def test_model_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        estimate_xi(nn.Flatten(), loader(), progress=False)


@pytest.mark.parametrize("report", [False, True])
def test_non_finite_loss_names_the_batch(model, report):
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    batches = [empty] + [(x.clone(), y) for x, y in loader(batch_size=32)]  # batch 0 is empty
    batches[2][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite in batch 2"):
        estimate_xi(model, batches, progress=False, report=report)
    assert not has_score_masks(model)


@pytest.mark.parametrize("bad", [-100, 3, -1])
def test_labels_outside_the_classes_are_refused(model, bad):
    batches = [(x, y.clone()) for x, y in loader(batch_size=32)]
    batches[2][1][5] = bad
    with pytest.raises(ValueError, match=r"batch 2 .*\[0, 2\]"):
        estimate_xi(model, batches, progress=False)
    assert not has_score_masks(model)


@pytest.mark.parametrize("patch", ["is_distributed", "_readable_without_sync"])
def test_deferred_label_check(model, monkeypatch, patch):
    """Under torch.distributed, or with device labels (read only with a sync), bad labels are
    counted with tensor ops and refused after the pass, on every rank alike."""
    monkeypatch.setattr(xi_module, patch, lambda *a: patch == "is_distributed")
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    batches = [empty] + [(x, y.clone()) for x, y in loader(batch_size=32)]
    batches[2][1][:2] = -100
    try:
        with pytest.raises(ValueError, match=r"batch 2.*\[0, 2\].*-100"):
            estimate_xi(model, batches, progress=False)
    finally:
        hook.remove()
    assert len(calls) == 3  # the pass finished: no rank stops alone


def test_loader_without_len(model):
    def batches():
        yield from loader(batch_size=40)
    est = estimate_xi(model, batches(), progress=True)
    assert est.num_samples == 96
    assert est.xi == pytest.approx(estimate_xi(model, loader(), progress=False).xi, rel=1e-6)


def test_empty_batches_only(model):
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no samples"):
        estimate_xi(model, [empty], progress=False)


def test_model_must_return_logits():
    class Pair(TinyCNN):
        def forward(self, x):
            return super().forward(x, return_feature=True)
    with pytest.raises(ValueError, match=r"\(batch, classes\) logits"):
        estimate_xi(Pair(), loader(), progress=False)


@pytest.mark.parametrize("kw", [{"report": 1}, {"progress": "no"}, {"draws": 0}, {"top_n": -1},
                                {"threshold": "model"}, {"seed": 1.5}])
def test_bad_arguments_before_any_work(model, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        estimate_xi(model, loader(), **kw)


def test_xi_is_the_mean_masked_loss_with_report_off(model):
    est = estimate_xi(model, loader(), keep_ratio=0.9, seed=3, progress=False)
    copy = TinyCNN()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    attach_score_masks(copy, 0.9, generator=torch.Generator().manual_seed(3))
    x, y = loader(batch_size=96).dataset.tensors
    with torch.no_grad():
        assert est.xi == pytest.approx(F.cross_entropy(copy(x), y).item(), rel=1e-6)


@pytest.mark.parametrize("threshold", ["layer", "global"])
def test_draws_reuse_their_precomputed_masks(model, threshold):
    one = estimate_xi(model, loader(), keep_ratio=0.8, seed=4, threshold=threshold,
                      progress=False)
    three = estimate_xi(model, loader(), keep_ratio=0.8, seed=4, draws=3, threshold=threshold,
                        progress=False, report=True)
    assert three.xi_draws[0] == pytest.approx(one.xi, rel=1e-12)
    assert len(set(three.xi_draws)) == 3
    increase = three.per_sample_increase.mean().item()
    assert increase == pytest.approx(three.xi - three.base_loss, rel=1e-4)


def test_estimate_xi_iterates_a_seeded_loader_exactly_once():
    """A progress bar wrapping the loader (tqdm.auto) would start a second iterator and draw
    from the loader's generator again, shifting every later shuffle of the same loader."""
    from torch.utils.data import DataLoader, TensorDataset

    from core_helpers import separable_data, trained_model
    from um_plugin.core.xi import estimate_xi

    x, y = separable_data(96)

    def seeded():
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(7))

    plain = seeded()
    for _ in plain:
        pass
    used = seeded()
    estimate_xi(trained_model(epochs=5), used, progress=True)
    assert torch.equal(used.generator.get_state(), plain.generator.get_state())
