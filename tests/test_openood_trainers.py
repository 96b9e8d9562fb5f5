"""The um / umap trainers on OpenOOD's trainer contract, single process and 2-rank gloo DDP."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from openood_fixtures import lenet


class _Dicts(Dataset):
    """OpenOOD-style dict samples."""

    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 3, 28, 28, generator=g) + self.y.view(-1, 1, 1, 1).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"data": self.x[i], "label": self.y[i]}


def _config(name, epochs=2, **trainer_args):
    from openood.utils import Config
    args = {"loss_constraint": "auto"}
    if name == "umap":
        args.update(keep_ratio=0.8)
    args.update(trainer_args)
    return Config({"trainer": {"name": name, "trainer_args": args},
                   "optimizer": {"name": "sgd", "num_epochs": epochs, "lr": 0.05, "momentum": 0.9,
                                 "weight_decay": 0.0005}})


@pytest.mark.parametrize("name", ["um", "umap"])
def test_trainer_contract_and_plain_checkpoint(oo, name):
    from openood.trainers import get_trainer
    net = lenet()
    loader = DataLoader(_Dicts(), batch_size=8, shuffle=True)
    trainer = get_trainer(net, loader, None, _config(name))
    assert type(trainer).__name__ == {"um": "UMTrainer", "umap": "UMAPTrainer"}[name]
    assert trainer.xi > 0
    lrs = []
    for epoch in (1, 2):
        out, metrics = trainer.train_epoch(epoch)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        assert set(metrics) >= {"epoch_idx", "loss"} and metrics["epoch_idx"] == epoch
        assert metrics["loss"] > 0 and metrics["xi"] == trainer.xi
    assert lrs[1] < lrs[0] < 0.05  # per-step cosine schedule from optimizer.lr
    fresh = lenet().__class__(num_classes=3, num_channel=3)
    fresh.load_state_dict(out.state_dict(), strict=True)  # what the recorder saves
    x = torch.randn(4, 3, 28, 28)
    out.eval(), fresh.eval()
    assert torch.allclose(out(x), fresh(x))
    if name == "umap":
        zeros = (out.state_dict()["fc.weight"] == 0).float().mean().item()
        assert 0.15 < zeros < 0.25


def test_fixed_xi_and_bad_args(oo):
    from openood.trainers import get_trainer
    loader = DataLoader(_Dicts(8), batch_size=4)
    trainer = get_trainer(lenet(), loader, None, _config("um", loss_constraint="0.25"))
    assert trainer.xi == 0.25
    with pytest.raises(ValueError, match=r"^trainer.trainer_args.loss_constraint: .*'lots'"):
        get_trainer(lenet(), loader, None, _config("um", loss_constraint="lots"))
    with pytest.raises(ValueError, match=r"^trainer.trainer_args.keep_ratio: keep_ratio .*1.5"):
        get_trainer(lenet(), loader, None, _config("umap", keep_ratio=1.5))
    with pytest.raises(ValueError, match=r"unknown keys \['keep_rato'\]; valid keys are"):
        get_trainer(lenet(), loader, None, _config("umap", keep_rato=0.5))
    with pytest.raises(ValueError, match=r"^trainer.trainer_args.threshold: .*\('layer', 'global'\)"):
        get_trainer(lenet(), loader, None, _config("umap", threshold="model"))
    bad_optimizer = _config("um", loss_constraint=0.1)
    bad_optimizer.optimizer.num_epochs = 0
    with pytest.raises(ValueError, match=r"^optimizer.num_epochs: epochs .*0"):
        get_trainer(lenet(), loader, None, bad_optimizer)
    bad_optimizer.optimizer.update(num_epochs=1, name="adam")
    with pytest.raises(ValueError, match=r"^optimizer.name: .*SGD.*'adam'"):
        get_trainer(lenet(), loader, None, bad_optimizer)


def test_other_trainers_still_reach_openood(oo):
    from openood.trainers import get_trainer
    from openood.trainers.base_trainer import BaseTrainer
    trainer = get_trainer(lenet(), DataLoader(_Dicts(8), batch_size=4), None, _config("base"))
    assert type(trainer) is BaseTrainer


@pytest.mark.slow
def test_two_rank_gloo_same_xi_and_masks(oo, tmp_path):
    """Under DDP (as OpenOOD wraps it), ξ is all-reduced over the shards (equals the
    one-process ξ on all data); masks, scores and weights stay identical on both ranks."""
    import torch.multiprocessing as mp

    from openood.trainers import get_trainer
    from openood_fixtures import ddp_worker

    data = _Dicts(32)
    # two epochs configured, one run: UMAP's masks are still attached to compare
    configs = {name: dict(_config(name, epochs=2)) for name in ("umap", "um")}
    mp.spawn(ddp_worker, nprocs=2, join=True,
             args=(2, str(tmp_path / "init"), str(tmp_path), configs, (data.x, data.y)))
    for name in configs:
        r0, r1 = (torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=False) for r in (0, 1))
        assert set(r0["shard"]).isdisjoint(r1["shard"])  # each rank saw its own half
        assert r0["xi"] == r1["xi"]
        single = get_trainer(lenet(), DataLoader(data, batch_size=4), None, _config(name, epochs=2))
        assert r0["xi"] == pytest.approx(single.xi, rel=1e-5), name
        assert r0["masks"].keys() == r1["masks"].keys()
        assert bool(r0["masks"]) == (name == "umap")
        for k in r0["masks"]:
            assert torch.equal(r0["masks"][k], r1["masks"][k]), k
            # different shards, same gradients: the scores moved, and identically
            assert torch.equal(r0["scores"][k], r1["scores"][k]), k
        assert not torch.equal(r0["state"]["fc.weight"], lenet().state_dict()["fc.weight"])
        for k in r0["state"]:
            assert torch.equal(r0["state"][k], r1["state"][k]), (name, k)
        assert r0["type"] == "LeNet" and r0["metrics"]["loss"] == r1["metrics"]["loss"]


def test_umap_trainer_can_train_weights_too(oo):
    """freeze_weights: false (the official CIFAR-100 UMAP setting) learns scores and weights."""
    from openood.trainers import get_trainer
    net = lenet()
    before = net.fc.weight.detach().clone()
    trainer = get_trainer(net, DataLoader(_Dicts(16), batch_size=8), None,
                          _config("umap", epochs=1, freeze_weights=False, loss_constraint=0.01))
    weight = trainer.model.fc.parametrizations.weight.original
    assert any(p is weight for p in trainer.optimizer.param_groups[0]["params"])
    assert weight.requires_grad
    out, _ = trainer.train_epoch(1)
    kept = out.fc.weight != 0
    assert not torch.equal(out.fc.weight[kept], before[kept])  # surviving weights moved


def test_nan_loss_stops_with_batchnorm_statistics_rolled_back(oo):
    """A NaN batch leaves the model as after the last finite step, BatchNorm's running
    statistics included, as the error says: the core engine rolls it back."""
    import copy

    from openood.trainers import get_trainer
    from openood_fixtures import bn_net

    from um_plugin.core import NonFiniteLossError
    torch.manual_seed(0)
    net = bn_net()
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 3
    x[9] = float("nan")  # second batch of 8
    reference = copy.deepcopy(net).train()
    with torch.no_grad():
        reference(x[:8])  # statistics after the one finite step
    loader = DataLoader([{"data": a, "label": b} for a, b in zip(x, y)], batch_size=8)
    trainer = get_trainer(net, loader, None, _config("um", loss_constraint=0.1))
    with pytest.raises(NonFiniteLossError, match="step 1") as caught:
        trainer.train_epoch(3)
    assert caught.value.step == 1
    for name, buf in net.named_buffers():
        assert torch.equal(buf, dict(reference.named_buffers())[name]), name


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(oo, tmp_path):
    """Only rank 1 meets a NaN batch. Both ranks must raise the same
    NonFiniteLossError with BatchNorm statistics rolled back; none may hang in an all-reduce."""
    import time

    import torch.multiprocessing as mp

    from openood_fixtures import ddp_nan_worker

    config = dict(_config("um", epochs=1, loss_constraint=0.1))
    context = mp.spawn(ddp_nan_worker, nprocs=2, join=False,
                       args=(2, str(tmp_path / "init"), str(tmp_path), config, 1))
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank hung after the NaN on rank 1")
    results = [torch.load(tmp_path / f"nan_rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in results:
        assert r["error"] == "NonFiniteLossError", (r["rank"], r.get("message"))
        assert r["step"] == 1
        for got, want in zip(r["buffers"], r["expected"]):
            assert torch.equal(got, want), r["rank"]


def test_trainer_refuses_a_network_already_fine_tuned(oo):
    """A network carrying a UM/UMAP mark or score masks is refused by the trainer too."""
    from openood.trainers import get_trainer

    from um_plugin.core.masks import attach_score_masks
    loader = DataLoader(_Dicts(8), batch_size=4)
    net = lenet()
    trainer = get_trainer(net, loader, None, _config("um", epochs=1, loss_constraint=0.1))
    out, _ = trainer.train_epoch(1)
    with pytest.raises(RuntimeError, match=r"already fine-tuned by trainer 'um'.*deepcopy") as caught:
        get_trainer(out, loader, None, _config("umap", loss_constraint=0.1))
    assert isinstance(caught.value, oo.NetworkReuseError)
    masked = lenet()
    attach_score_masks(masked, 0.5)
    with pytest.raises(RuntimeError, match=r"carries score masks"):
        get_trainer(masked, loader, None, _config("umap", loss_constraint=0.1))
    with pytest.raises(RuntimeError, match=r"has run all 1 epochs"):
        trainer.train_epoch(2)
