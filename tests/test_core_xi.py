import pytest
import torch
import torch.nn.functional as F

from core_helpers import TinyCNN, loader, state_equal, trained_model
from um_plugin.core.masks import attach_score_masks, has_score_masks
from um_plugin.core.xi import estimate_xi


@pytest.fixture(scope="module")
def model():
    return trained_model()


def snapshot(model):
    copy = TinyCNN()
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_estimate_leaves_model_bit_identical(model, mode):
    model.train(mode == "train")
    before = snapshot(model)
    est = estimate_xi(model, loader(), progress=False)
    assert not has_score_masks(model)
    assert type(model.conv) is torch.nn.Conv2d
    assert state_equal(model, before)
    assert model.training == (mode == "train")
    assert est.num_samples == 96


def test_xi_is_masked_train_loss_above_unmasked(model):
    est = estimate_xi(model, loader(), keep_ratio=0.5, progress=False, report=True)
    model.eval()
    x, y = loader(batch_size=96).dataset.tensors
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
    assert est.base_loss == pytest.approx(base, rel=1e-5)
    assert est.xi > est.base_loss
    assert est.per_sample_increase.mean().item() == pytest.approx(est.xi - est.base_loss, rel=1e-4)


def test_xi_matches_manual_masked_loss(model):
    est = estimate_xi(model, loader(), keep_ratio=0.9, seed=7, progress=False)
    copy = snapshot(model).eval()
    attach_score_masks(copy, 0.9, generator=torch.Generator().manual_seed(7))
    x, y = loader(batch_size=96).dataset.tensors
    with torch.no_grad():
        assert est.xi == pytest.approx(F.cross_entropy(copy(x), y).item(), rel=1e-5)


def test_seeded_and_sample_weighted(model):
    a = estimate_xi(model, loader(batch_size=32), seed=1, progress=False)
    b = estimate_xi(model, loader(batch_size=40), seed=1, progress=False)  # ragged last batch
    c = estimate_xi(model, loader(batch_size=32), seed=2, progress=False)
    assert a.xi == pytest.approx(b.xi, rel=1e-6)
    assert a.xi != c.xi


def test_draws_average_and_report_spread(model):
    est = estimate_xi(model, loader(), keep_ratio=0.8, seed=0, draws=3, progress=False)
    assert len(est.xi_draws) == 3 and len(set(est.xi_draws)) == 3
    assert est.xi == pytest.approx(sum(est.xi_draws) / 3)
    first = estimate_xi(model, loader(), keep_ratio=0.8, seed=0, progress=False)
    assert est.xi_draws[0] == pytest.approx(first.xi, rel=1e-6)
    assert "3 draws" in est.summary()


def test_atypical_indices_are_top_loss_increases(model):
    est = estimate_xi(model, loader(), keep_ratio=0.7, top_n=5, progress=False, report=True)
    order = torch.argsort(est.per_sample_increase, descending=True)[:5]
    assert torch.equal(est.atypical, est.sample_index[order])
    assert torch.equal(est.sample_index, torch.arange(96))


def test_dict_batches_with_index_key(model):
    batches = loader(dict_batches=True)
    for i, b in enumerate(batches):
        b["index"] = torch.arange(len(b["label"])) + 1000 + 32 * i
    est = estimate_xi(model, batches, progress=False, report=True)
    assert est.sample_index.min() == 1000 and est.num_samples == 96


def test_empty_loader(model):
    with pytest.raises(ValueError, match="no samples"):
        estimate_xi(model, [], progress=False)
    assert not has_score_masks(model)


def test_non_tensor_batches(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        estimate_xi(model, [([[0.0]], [0])], progress=False)
    assert not has_score_masks(model)


def test_mismatched_labels(model):
    with pytest.raises(ValueError, match="labels of shape"):
        estimate_xi(model, [(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))],
                    progress=False)


def test_masked_model_is_refused(model):
    copy = snapshot(model)
    attach_score_masks(copy, 0.8)
    with pytest.raises(RuntimeError, match="unmasked model"):
        estimate_xi(copy, loader(), progress=False)
