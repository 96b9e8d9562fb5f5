"""With an outlier loader, the engine IS the authors' UM with outlier exposure.

``authors_train_oe`` below is our own plain-PyTorch rendering of what
github.com/ZFancy/Unleashing-Mask runs in ``main_OE.py``: the epoch loop with ``cosine_lr`` set
once per epoch, ``NeuralLinear.train_oe`` (``zip`` of the ID and the outlier loader, one forward
over ``torch.cat((in, out))``, ``CustomLoss`` on the ID part, then ``0.5 * -(out.mean(1) -
logsumexp(out, 1)).mean()`` for ``oe`` or ``energy_beta * (relu(m_out - E_out)^2.mean() +
relu(E_in - m_in)^2.mean())`` for ``energy``), their two-group SGD without Nesterov. Run side by
side on the same weights and batches, the engine must give the same weights, BatchNorm
statistics and losses bit for bit; a changed setting must break that.
"""
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from core_helpers import fresh_copy, separable_data, trained_model
from test_core_authors_loop import _assert_bitwise, _authors_net, _epoch_means, authors_sgd
from um_plugin.core import FinetuneConfig, Finetuner, run_um
from um_plugin.core.masks import iter_score_masks

EPOCHS = 10   # main_OE's oe-baseline.yaml
LR = 0.01     # ...and its lr
XI = 0.15


def authors_train_oe(model, batches, outliers, xi, *, method, epochs=EPOCHS, lr=LR,
                     momentum=0.9, weight_decay=1e-4, m_in=-25.0, m_out=-7.0,
                     energy_beta=0.1) -> list:
    """Their main_OE.py loop around train_oe; returns each step's loss."""
    optimizer = authors_sgd(model, lr, momentum, weight_decay)
    losses = []
    for epoch in range(epochs):
        new_lr = 0.5 * (1 + np.cos(np.pi * epoch / epochs)) * lr
        for group in optimizer.param_groups:
            group["lr"] = new_lr
        for in_set, out_set in zip(batches, outliers):
            in_len = len(in_set[0])
            model.train()
            cat_output = model(torch.cat((in_set[0], out_set[0]), 0))
            in_output, out_output = cat_output[:in_len], cat_output[in_len:]
            in_loss = F.cross_entropy(in_output, in_set[1])
            in_loss = (in_loss - xi).abs() + xi                      # CustomLoss, beta = 1
            if method == "oe":
                loss = in_loss + 0.5 * -(out_output.mean(1)
                                         - torch.logsumexp(out_output, dim=1)).mean()
            else:
                E = -torch.logsumexp(cat_output, dim=1)
                Ec_in, Ec_out = E[:in_len], E[in_len:]
                in_energy_loss = torch.pow(F.relu(Ec_in - m_in), 2).mean()
                out_energy_loss = torch.pow(F.relu(m_out - Ec_out), 2).mean()
                loss = in_loss + energy_beta * (out_energy_loss + in_energy_loss)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses


def _id_batches(seed=7):
    x, y = separable_data(96)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _outliers(seed=11, n=96):
    """Noise images with the label select_ood gives them (num_classes), never read."""
    g = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(n, 1, 8, 8, generator=g)
    return DataLoader(TensorDataset(x, torch.full((n,), 3)), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


# the energy margins are scaled to TinyCNN's energies (about -2 to -6) so both hinges are active
ENERGY = dict(m_in=-4.0, m_out=-1.0, energy_beta=0.1)


def _ours(start, method, **changes):
    model = fresh_copy(start)
    extra = ENERGY if method == "energy" else {}
    config = FinetuneConfig(mode="um", epochs=EPOCHS, lr=LR, outlier_loss=method,
                            progress=False, **{**extra, **changes})
    tuner = Finetuner(model, XI, config, steps_per_epoch=3)
    return model, tuner.fit(_id_batches(), outliers=_outliers())


@pytest.fixture(scope="module")
def start():
    torch.set_num_threads(1)
    return trained_model(epochs=20)


@pytest.mark.parametrize("method", ["oe", "energy"])
def test_um_with_outliers_equals_the_authors_train_oe_bit_for_bit(start, method):
    ours, history = _ours(start, method)
    theirs = fresh_copy(start)
    kwargs = {"m_in": ENERGY["m_in"], "m_out": ENERGY["m_out"]} if method == "energy" else {}
    their_losses = authors_train_oe(theirs, _id_batches(), _outliers(), XI, method=method,
                                    **kwargs)
    assert history.loss == _epoch_means(their_losses, 3)
    _assert_bitwise(ours.state_dict(), theirs.state_dict())
    # the outlier term is not idle: without it the same run ends elsewhere
    plain = Finetuner(fresh_copy(start), XI, FinetuneConfig(epochs=EPOCHS, lr=LR, progress=False),
                      steps_per_epoch=3)
    plain.fit(_id_batches())
    assert not torch.equal(plain.model.fc.weight, ours.fc.weight)


@pytest.mark.parametrize("method, change", [
    ("oe", {"lambda_oe": 0.25}), ("oe", {"nesterov": True}), ("oe", {"lr_schedule": "step"}),
    ("energy", {"energy_beta": 0.2}), ("energy", {"m_in": -5.0}), ("energy", {"m_out": -0.5}),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_a_changed_setting_breaks_the_equality(start, method, change):
    ours, _ = _ours(start, method, **change)
    theirs = fresh_copy(start)
    kwargs = {"m_in": ENERGY["m_in"], "m_out": ENERGY["m_out"]} if method == "energy" else {}
    authors_train_oe(theirs, _id_batches(), _outliers(), XI, method=method, **kwargs)
    assert not torch.equal(ours.fc.weight, theirs.fc.weight)


def test_umap_with_outliers_equals_the_authors_loop_bit_for_bit(start):
    """CIFAR-100's UMAP trains weights and scores (freeze_weights False) through the OE loop."""
    ours = fresh_copy(start)
    tuner = Finetuner(ours, XI, FinetuneConfig(mode="umap", freeze_weights=False, epochs=EPOCHS,
                                               lr=LR, outlier_loss="oe", progress=False),
                      steps_per_epoch=3)
    scores = {name: m.scores.detach().clone() for name, _, m in iter_score_masks(ours)}
    theirs = _authors_net(start, scores, prune_rate=0.8)
    history = tuner.fit(_id_batches(), outliers=_outliers())
    their_losses = authors_train_oe(theirs, _id_batches(), _outliers(), XI, method="oe")
    assert history.loss == _epoch_means(their_losses, 3)
    for name, _, mask in iter_score_masks(ours):
        assert torch.equal(mask.scores, getattr(theirs, name).scores), name


def test_frozen_umap_keeps_the_weights_and_include_leaves_layers_dense(start):
    model = fresh_copy(start)
    tuner = Finetuner(model, XI, FinetuneConfig(mode="umap", epochs=2, lr=LR, include=["conv"],
                                                outlier_loss="oe", progress=False),
                      steps_per_epoch=3)
    assert [name for name, _, _ in iter_score_masks(model)] == ["conv"]
    tuner.fit(_id_batches(), outliers=_outliers())
    tuner.finish()
    assert torch.equal(model.fc.weight, start.fc.weight)  # fc: dense and frozen
    assert model.conv.weight.eq(0).float().mean().item() == pytest.approx(0.2, abs=0.02)


def test_a_shorter_outlier_loader_is_cycled_and_outliers_are_required(start):
    model = fresh_copy(start)
    config = FinetuneConfig(epochs=1, lr=LR, outlier_loss="oe", progress=False)
    short = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8)), batch_size=32)
    run_um(model, _id_batches(), XI, config, outliers=short)  # 3 ID batches, 1 outlier batch
    assert not torch.equal(model.fc.weight, start.fc.weight)
    with pytest.raises(ValueError, match="outlier_loss='oe' but outliers were not given"):
        run_um(fresh_copy(start), _id_batches(), XI, config)
    with pytest.raises(ValueError, match="outlier_loss='none' but outliers were given"):
        run_um(fresh_copy(start), _id_batches(), XI, FinetuneConfig(epochs=1, progress=False),
               outliers=short)
    with pytest.raises(ValueError, match="outlier_loss must be one of"):
        FinetuneConfig(outlier_loss="poem")
    with pytest.raises(ValueError, match="include must be null or a non-empty list"):
        FinetuneConfig(include=[])


def test_a_run_with_outliers_resumes_bit_exactly(start, tmp_path):
    """Both loaders' generators are in the checkpoint: a restart rebuilds them from their seeds."""
    from um_plugin.core import save_checkpoint
    from um_plugin.core.runs import load_checkpoint
    config = FinetuneConfig(epochs=3, lr=LR, outlier_loss="energy", progress=False, **ENERGY)
    whole = Finetuner(fresh_copy(start), XI, config)
    whole.fit(_id_batches(), outliers=_outliers())
    first = Finetuner(fresh_copy(start), XI, config)
    first.train_epoch(_id_batches(), outliers=_outliers())
    path = save_checkpoint(first, tmp_path / "run.pt")
    resumed = load_checkpoint(fresh_copy(start), path)
    resumed.fit(_id_batches(), outliers=_outliers())
    _assert_bitwise(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.history == whole.history
    with pytest.raises(ValueError, match="outlier_loss: 'none' vs 'energy'"):
        Finetuner(fresh_copy(start), XI, FinetuneConfig(epochs=3, lr=LR, progress=False,
                                                        **ENERGY)).load_state_dict(
            first.state_dict())
