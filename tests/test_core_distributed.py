"""ξ under torch.distributed: two CPU processes (gloo) must agree with one process on all data."""
import re

import pytest
import torch
import torch.multiprocessing as mp

from core_helpers import TinyCNN, free_port, loader, state_equal, trained_model
from um_plugin.core.distributed import strip_ddp_prefix
from um_plugin.core.masks import attach_score_masks, score_parameters
from um_plugin.core.xi import estimate_xi


def _shard(rank, world, state):
    """The model rebuilt from ``state`` and this rank's batches."""
    from core_helpers import TinyCNN
    model = TinyCNN()
    model.load_state_dict(state)
    return model, [b for i, b in enumerate(loader(batch_size=16)) if i % world == rank]


def _worker(rank, world, port, state, out):
    from core_helpers import TinyCNN, gloo_group
    with gloo_group(rank, world, port=port):
        model, shard = _shard(rank, world, state)
        est = estimate_xi(model, shard, keep_ratio=0.8, seed=5, progress=False)
        probe = TinyCNN()
        attach_score_masks(probe, 0.8, generator=torch.Generator().manual_seed(5))
        out[rank] = (est.xi, est.num_samples, torch.cat([p.detach().flatten() for p in score_parameters(probe)]).tolist())


@pytest.mark.slow
def test_xi_is_all_reduced_and_masks_agree_across_ranks():
    model = trained_model(epochs=20)
    single = estimate_xi(model, loader(batch_size=16), keep_ratio=0.8, seed=5, progress=False)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), model.state_dict(), out), nprocs=2, join=True)
    (xi0, n0, s0), (xi1, n1, s1) = out[0], out[1]
    assert n0 == n1 == 96
    assert xi0 == xi1
    assert abs(xi0 - single.xi) < 1e-6
    assert s0 == s1


def _nan_worker(rank, world, port, state, out):
    """Rank 1 alone sees a NaN batch at step 1; both ranks must stop there, unchanged."""
    import math

    from core_helpers import gloo_group
    from um_plugin.core import FinetuneConfig, Finetuner, NonFiniteLossError
    with gloo_group(rank, world, port=port):
        model, batches = _shard(rank, world, state)
        if rank == 1:
            x, y = batches[1]
            batches[1] = (torch.full_like(x, math.nan), y)
        tuner = Finetuner(model, 0.1, FinetuneConfig(epochs=1, progress=False), len(batches) - 1)
        tuner.step(*batches[0])
        after_first = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            tuner.train_epoch(batches[1:], epoch=0)
            out[rank] = ("no error",)
        except NonFiniteLossError as err:
            same = all(torch.equal(after_first[k], v) for k, v in model.state_dict().items())
            out[rank] = ("stopped", err.step, same)


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_without_hanging():
    model = trained_model(epochs=5)
    out = mp.Manager().dict()
    ctx = mp.start_processes(_nan_worker, args=(2, free_port(), model.state_dict(), out),
                             nprocs=2, join=False, start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=120)
    alive = [p.pid for p in ctx.processes if p.is_alive()]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung in a collective after another rank saw a NaN"
    # each worker left its gloo group with no thread of it running (gloo_group checks) and
    # exited cleanly: no abort at interpreter shutdown
    assert [p.exitcode for p in ctx.processes] == [0, 0]
    assert out[0] == out[1] == ("stopped", 0, True)


def _leaky_worker(rank, world, port, out):
    """Leave a DDP wrapper (which holds the group) alive past ``gloo_group``'s block."""
    import gc

    from core_helpers import gloo_group, gloo_threads
    kept = []
    try:
        with gloo_group(rank, world, port=port):
            kept.append(torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2)))
        out[rank] = ("no error", gloo_threads())
    except RuntimeError as err:
        kept.clear()  # the wrapper goes, and with it the group and its threads
        gc.collect()
        out[rank] = (str(err), gloo_threads())


@pytest.mark.slow
def test_gloo_group_fails_when_the_group_outlives_it():
    """The check the distributed tests rely on can fail: a group something still holds when the
    block ends is an error every time, not a random abort at the worker's exit."""
    out = mp.Manager().dict()
    mp.spawn(_leaky_worker, args=(1, free_port(), out), nprocs=1, join=True)
    message, left_after_release = out[0]
    assert re.search(r"rank 0: [1-9]\d* gloo thread\(s\) outlived destroy_process_group",
                     message), message
    assert left_after_release == 0



def test_a_wrapped_models_state_loads_into_the_bare_model():
    """``module.`` (DataParallel / DDP) is stripped from every key; a bare state is unchanged."""
    torch.manual_seed(0)
    source = TinyCNN()
    wrapped = torch.nn.DataParallel(source).state_dict()
    assert all(k.startswith("module.") for k in wrapped)
    bare = TinyCNN()
    bare.load_state_dict(strip_ddp_prefix(wrapped), strict=True)
    assert state_equal(bare, source)
    plain = source.state_dict()
    assert list(strip_ddp_prefix(dict(plain))) == list(plain)
