"""The embedded benchmark trains on the core's one engine, and that changes nothing.

Base training is UM at ξ = 0; it must give bit-identical weights, losses and checkpoints to
the plain SGD (Nesterov) + per-step cosine cross-entropy loop the benchmark had before, with the
same seeded shuffle order.
"""
import math
from dataclasses import fields

import torch
import torch.nn.functional as F

from benchmarks.embedded.config import BASE_OPTIM, FINETUNE_OPTIM, BenchConfig
from benchmarks.embedded.training import (finetune_config, make_loader, make_model, train_base)


def _reference_train(x, y, cfg: BenchConfig, seed: int):
    """The benchmark's own loop before it moved onto the engine (kept here as the reference)."""
    model = make_model(seed)
    loader = make_loader(x, y, cfg.batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses = []
    for _ in range(cfg.epochs):
        model.train()
        loss_sum, n = 0.0, 0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(yb)
            n += len(yb)
        losses.append(loss_sum / n)
    return model, losses


def test_base_training_on_the_engine_is_the_old_loop_bit_for_bit(tmp_path):
    torch.manual_seed(123)
    x, y = torch.randn(200, 3, 28, 28), torch.randint(0, 10, (200,))
    cfg = BenchConfig(epochs=3, batch_size=64, progress=False)
    model, log = train_base(x, y, cfg, seed=5, ckpt_dir=str(tmp_path), bar_desc="")
    ref, ref_losses = _reference_train(x, y, cfg, seed=5)
    assert [e.loss for e in log] == ref_losses
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), name
    last = torch.load(tmp_path / "epoch003.pt", weights_only=True)
    assert all(torch.equal(last[k], v) for k, v in ref.state_dict().items())


def test_engine_configs_state_every_field(monkeypatch):
    """The benchmark's numbers must not move when a core default moves (e.g. nesterov): every
    FinetuneConfig field is passed explicitly (a new core field makes this test fail)."""
    import benchmarks.embedded.training as training
    from um_plugin.core import FinetuneConfig
    passed = []
    monkeypatch.setattr(training, "FinetuneConfig",
                        lambda **kw: passed.append(set(kw)) or FinetuneConfig(**kw))
    cfg = BenchConfig()
    for mode in ("ce", "um", "umap"):
        fc = finetune_config(mode, cfg, seed=0)
        for name, value in FINETUNE_OPTIM.items():
            assert getattr(fc, name) == value, (mode, name)
    training.base_config(cfg, seed=0)
    every = {f.name for f in fields(FinetuneConfig)}
    assert passed and all(kw == every for kw in passed), [every - kw for kw in passed]
    assert FINETUNE_OPTIM["nesterov"] is False and BASE_OPTIM["nesterov"] is True
