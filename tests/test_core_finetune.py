"""Fine-tuning: UM holds the training loss at ξ, UMAP learns a mask over frozen weights and bakes
it; the authors' defaults, cosine schedule and bf16 autocast."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core_helpers import TinyCNN, fresh_copy, loader, state_equal
from um_plugin.core import FinetuneConfig, Finetuner, NonFiniteLossError, run_um, run_umap
from um_plugin.core.masks import has_score_masks, iter_score_masks
from um_plugin.core.topk import num_kept


def train_loss(model, flip=0.08):
    x, y = loader(batch_size=96, flip=flip).dataset.tensors
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_defaults_follow_the_authors_configs():
    c = FinetuneConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.epochs, c.keep_ratio, c.threshold) == \
        (0.1, 0.9, 1e-4, 100, 0.8, "layer")


def test_lr_schedule_is_validated_and_a_saved_config_round_trips():
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('epoch', 'step'\).*'cos'"):
        FinetuneConfig(lr_schedule="cos")
    config = FinetuneConfig(nesterov=True, lr_schedule="step")
    assert FinetuneConfig.from_saved(vars(config)) == config


def test_um_stops_at_xi_while_plain_ce_goes_to_zero():
    torch.manual_seed(0)
    start = TinyCNN()
    config = FinetuneConfig(epochs=40, lr=0.05, progress=False)
    xi = 0.3
    plain = fresh_copy(start)
    data = loader(shuffle=True, flip=0.0)  # separable: plain CE can drive the loss to 0
    plain_hist = run_um(plain, data, 0.0, config)  # xi = 0 is plain CE
    um = fresh_copy(start)
    torch.manual_seed(0)
    hist = run_um(um, data, xi, config)
    assert hist.xi == [xi] * 40 and len(hist.loss) == 40
    assert plain_hist.loss[-1] < 0.05 and train_loss(plain, flip=0.0) < 0.05
    # the constrained objective |CE - xi| + xi stays near xi; the CE it implies hovers at xi
    assert abs(hist.loss[-1] - xi) < 0.05
    assert abs(train_loss(um, flip=0.0) - xi) < 0.1


def test_umap_learns_mask_over_frozen_weights_then_bakes(base):
    model = fresh_copy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = run_umap(model, loader(shuffle=True), 0.2,
                    FinetuneConfig(epochs=3, lr=0.1, progress=False))
    assert len(hist.loss) == 3
    assert not has_score_masks(model) and type(model.conv) is nn.Conv2d
    assert set(model.state_dict()) == set(before)
    w, w0 = model.conv.weight.detach(), before["conv.weight"]
    kept = w != 0
    assert int(kept.sum()) == num_kept(w.numel(), 0.8)
    assert torch.equal(w[kept], w0[kept])  # surviving weights are untouched
    assert torch.equal(model.bn.weight, before["bn.weight"])  # frozen
    assert all(p.requires_grad for p in model.parameters())


def test_umap_scores_move(base):
    model = fresh_copy(base)
    tuner = Finetuner(model, 0.2, FinetuneConfig(mode="umap", epochs=1, progress=False),
                      steps_per_epoch=3)
    scores0 = [m.scores.detach().clone() for _, _, m in iter_score_masks(model)]
    tuner.train_epoch(loader())
    assert any(not torch.equal(a, m.scores) for a, (_, _, m) in zip(scores0, iter_score_masks(model)))


def test_umap_without_freezing_trains_weights_and_scores(base):
    model = fresh_copy(base)
    tuner = Finetuner(model, 0.2, FinetuneConfig(mode="umap", epochs=1, freeze_weights=False,
                                                 progress=False), steps_per_epoch=3)
    w0 = model.conv.parametrizations.weight.original.detach().clone()
    tuner.train_epoch(loader())
    assert not torch.equal(w0, model.conv.parametrizations.weight.original)
    assert len(tuner.optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_dict_batches_train_as_tuple_batches_do(base):
    """OpenOOD's ``{'data', 'label'}`` batches: the same run, step for step, as ``(x, y)``."""
    config = FinetuneConfig(epochs=2, progress=False)
    as_dicts, as_tuples = fresh_copy(base), fresh_copy(base)
    torch.manual_seed(0)
    from_dicts = run_um(as_dicts, loader(dict_batches=True), 0.1, config)
    torch.manual_seed(0)
    from_tuples = run_um(as_tuples, loader(), 0.1, config)
    assert from_dicts == from_tuples and state_equal(as_dicts, as_tuples)
    assert not state_equal(as_dicts, base)  # it trained


def test_cosine_schedule_reaches_min_lr(base):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=2, lr=0.1, progress=False),
                      steps_per_epoch=3)
    tuner.fit(loader())
    assert tuner.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert tuner.history.lr[0] == pytest.approx(0.05)


@pytest.mark.parametrize("mode", ["um", "umap"])
def test_bf16_autocast_trains_and_nan_still_stops(base, mode):
    model = fresh_copy(base)
    history = run_um(model, loader(), 0.1, FinetuneConfig(epochs=2, precision="bf16",
                                                          progress=False)) if mode == "um" else \
        run_umap(model, loader(), 0.1, FinetuneConfig(epochs=2, precision="bf16", progress=False))
    assert all(math.isfinite(v) for v in history.loss) and history.acc[-1] > 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    bad = [(torch.full((4, 1, 8, 8), math.nan), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(NonFiniteLossError):
        Finetuner(fresh_copy(base), 0.1, FinetuneConfig(mode=mode, precision="bf16",
                                                        progress=False), 1).train_epoch(bad)
