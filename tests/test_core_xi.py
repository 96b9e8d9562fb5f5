"""estimate_xi: ξ is the mean train loss under random masks (per draw, seeded, sample-weighted),
its report and atypical samples; one forward per batch and draw; the model given back exactly."""
import pytest
import torch
import torch.nn.functional as F

from core_helpers import TinyCNN, fresh_copy, loader, seeded_loader, state_equal, trained_model
from um_plugin.core.masks import attach_score_masks, has_score_masks
from um_plugin.core.xi import estimate_xi


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_estimate_leaves_model_bit_identical(base, mode):
    base.train(mode == "train")
    before = fresh_copy(base)
    est = estimate_xi(base, loader(), progress=False)
    assert not has_score_masks(base)
    assert type(base.conv) is torch.nn.Conv2d
    assert state_equal(base, before)
    assert base.training == (mode == "train")
    assert est.num_samples == 96


def test_every_module_gets_its_own_train_flag_back(base):
    base.train()
    base.bn.eval()  # a frozen BatchNorm kept in eval inside a training model
    estimate_xi(base, loader(), progress=False)
    assert base.training and not base.bn.training and base.conv.training


def test_parameter_and_state_dict_order_are_kept():
    model = TinyCNN()  # fresh: the shared fixture has been through estimate_xi already
    before = ([n for n, _ in model.named_parameters()], list(model.state_dict()))
    estimate_xi(model, loader(), progress=False)
    assert ([n for n, _ in model.named_parameters()], list(model.state_dict())) == before


def test_xi_is_masked_train_loss_above_unmasked(base):
    est = estimate_xi(base, loader(), keep_ratio=0.5, progress=False, report=True)
    base.eval()
    x, y = loader(batch_size=96).dataset.tensors
    with torch.no_grad():
        base = F.cross_entropy(base(x), y).item()
    assert est.base_loss == pytest.approx(base, rel=1e-5)
    assert est.xi > est.base_loss
    assert est.per_sample_increase.mean().item() == pytest.approx(est.xi - est.base_loss, rel=1e-4)


@pytest.mark.parametrize("seed, rel", [(7, 1e-5), (3, 1e-6)])
def test_xi_is_the_mean_masked_loss(base, seed, rel):
    est = estimate_xi(base, loader(), keep_ratio=0.9, seed=seed, progress=False)  # report off
    copy = fresh_copy(base).eval()
    attach_score_masks(copy, 0.9, generator=torch.Generator().manual_seed(seed))
    x, y = loader(batch_size=96).dataset.tensors
    with torch.no_grad():
        assert est.xi == pytest.approx(F.cross_entropy(copy(x), y).item(), rel=rel)


def test_accuracies_match_a_manual_computation(base):
    est = estimate_xi(base, loader(), keep_ratio=0.9, seed=7, progress=False, report=True)
    x, y = loader(batch_size=96).dataset.tensors
    copy = fresh_copy(base)
    copy.eval()
    with torch.no_grad():
        base = (copy(x).argmax(1) == y).float().mean().item()
        attach_score_masks(copy, 0.9, generator=torch.Generator().manual_seed(7))
        masked = (copy(x).argmax(1) == y).float().mean().item()
    assert est.base_accuracy == pytest.approx(base)
    assert est.masked_accuracy == pytest.approx(masked)


def test_seeded_and_sample_weighted(base):
    a = estimate_xi(base, loader(batch_size=32), seed=1, progress=False)
    b = estimate_xi(base, loader(batch_size=40), seed=1, progress=False)  # ragged last batch
    c = estimate_xi(base, loader(batch_size=32), seed=2, progress=False)
    assert a.xi == pytest.approx(b.xi, rel=1e-6)
    assert a.xi != c.xi


def test_draws_average_and_report_spread(base):
    est = estimate_xi(base, loader(), keep_ratio=0.8, seed=0, draws=3, progress=False)
    assert len(est.xi_draws) == 3 and len(set(est.xi_draws)) == 3
    assert est.xi == pytest.approx(sum(est.xi_draws) / 3)
    first = estimate_xi(base, loader(), keep_ratio=0.8, seed=0, progress=False)
    assert est.xi_draws[0] == pytest.approx(first.xi, rel=1e-6)
    assert "3 draws" in est.summary()


@pytest.mark.parametrize("threshold", ["layer", "global"])
def test_draws_reuse_their_precomputed_masks(base, threshold):
    one = estimate_xi(base, loader(), keep_ratio=0.8, seed=4, threshold=threshold,
                      progress=False)
    three = estimate_xi(base, loader(), keep_ratio=0.8, seed=4, draws=3, threshold=threshold,
                        progress=False, report=True)
    assert three.xi_draws[0] == pytest.approx(one.xi, rel=1e-12)
    assert len(set(three.xi_draws)) == 3
    increase = three.per_sample_increase.mean().item()
    assert increase == pytest.approx(three.xi - three.base_loss, rel=1e-4)


def test_report_false_runs_one_forward_per_batch_and_same_xi(base):
    calls = []
    hook = base.register_forward_hook(lambda *a: calls.append(1))
    try:
        quick = estimate_xi(base, loader(batch_size=32), keep_ratio=0.8, progress=False)
        assert len(calls) == 3
        calls.clear()
        full = estimate_xi(base, loader(batch_size=32), keep_ratio=0.8, progress=False,
                           report=True)
        assert len(calls) == 6
        calls.clear()
        estimate_xi(base, loader(batch_size=32), keep_ratio=0.8, draws=2, progress=False)
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


def test_atypical_indices_are_top_loss_increases(base):
    est = estimate_xi(base, loader(), keep_ratio=0.7, top_n=5, progress=False, report=True)
    order = torch.argsort(est.per_sample_increase, descending=True)[:5]
    assert torch.equal(est.atypical, est.sample_index[order])
    assert torch.equal(est.sample_index, torch.arange(96))


def test_dict_batches_with_index_key(base):
    batches = loader(dict_batches=True)
    for i, b in enumerate(batches):
        b["index"] = torch.arange(len(b["label"])) + 1000 + 32 * i
    est = estimate_xi(base, batches, progress=False, report=True)
    assert est.sample_index.min() == 1000 and est.num_samples == 96


def test_loader_without_len(base):
    def batches():
        yield from loader(batch_size=40)
    est = estimate_xi(base, batches(), progress=True)
    assert est.num_samples == 96
    assert est.xi == pytest.approx(estimate_xi(base, loader(), progress=False).xi, rel=1e-6)


def test_estimate_xi_iterates_a_seeded_loader_exactly_once():
    """A progress bar wrapping the loader (tqdm.auto) would start a second iterator and draw
    from the loader's generator again, shifting every later shuffle of the same loader."""
    plain = seeded_loader(seed=7)
    for _ in plain:
        pass
    used = seeded_loader(seed=7)
    estimate_xi(trained_model(epochs=5), used, progress=True)
    assert torch.equal(used.generator.get_state(), plain.generator.get_state())
