"""The core without OpenOOD under ``torchrun --nproc_per_node 2`` (two CPU processes, gloo): the
example ``benchmarks.ddp`` runs a DDP model through ``run_um`` / ``run_umap`` with ξ estimated
over every rank's shard, and checks itself (see its docstring)."""
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from core_helpers import free_port, gloo_group, loader, trained_model
from openood_fixtures import REPO, checkout_env
from um_plugin.core import FinetuneConfig, run_um


@pytest.mark.slow
def test_the_torchrun_example_passes_its_checks_on_two_cpu_processes():
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "benchmarks.ddp"],
        cwd=REPO, env=checkout_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ddp check: OK (gloo, 2 processes)", proc.stdout
    assert lines[0].startswith("xi over 2 shards ") and "= one process on all 96 " in lines[0]
    assert lines[1:3] == ["UM: 2 ranks hold bit-identical fine-tuned weights",
                          "UMAP: 2 ranks hold bit-identical fine-tuned weights"]


def _worker(rank, world, port, state, out):
    with gloo_group(rank, world, port=port):
        out[rank] = _train_wrapped(rank, world, state)


def _train_wrapped(rank, world, state):
    """run_um on a DDP model over this rank's half of the batches: it trains the module inside
    with gradients averaged, so both ranks end where one process on the mean gradient does."""
    from core_helpers import TinyCNN
    model = TinyCNN()
    model.load_state_dict(state)
    shard = [b for i, b in enumerate(loader(batch_size=16)) if i % world == rank]
    run_um(nn.parallel.DistributedDataParallel(model), shard, 5.0,
           FinetuneConfig(epochs=1, lr=0.05, progress=False))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_run_um_on_a_ddp_model_averages_gradients_over_ranks():
    state = trained_model(epochs=5).state_dict()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), state, out), nprocs=2, join=True)
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    assert any(not torch.equal(out[0][k], state[k]) for k in state)
