"""Under torch.distributed a bad batch on one rank stops every rank with an error, none hangs."""
import pytest
import torch.multiprocessing as mp

from core_helpers import free_port, loader, trained_model
from um_plugin.core.xi import estimate_xi


def _worker(rank, world, port, state, out):
    from core_helpers import TinyCNN, gloo_group
    with gloo_group(rank, world, port=port, timeout_s=60):
        model = TinyCNN()
        model.load_state_dict(state)
        for case in ("label", "nan"):
            shard = [(x.clone(), y.clone()) for i, (x, y) in enumerate(loader(batch_size=16))
                     if i % world == rank]
            if rank == 1 and case == "label":
                shard[1][1][0] = -100
            if rank == 1 and case == "nan":
                shard[2][0][0] = float("nan")
            try:
                estimate_xi(model, shard, keep_ratio=0.8, seed=5, progress=False)
                out[(case, rank)] = "no error"
            except ValueError as exc:
                out[(case, rank)] = str(exc)


@pytest.mark.slow
def test_every_rank_raises_when_one_rank_has_a_bad_batch():
    state = trained_model(epochs=5).state_dict()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), state, out), nprocs=2, join=True)
    for case, local in (("label", "batch 1"), ("nan", "not finite in batch 2")):
        assert local in out[(case, 1)], out[(case, 1)]
        assert "another rank" in out[(case, 0)], out[(case, 0)]
