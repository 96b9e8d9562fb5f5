"""The core under ``torchrun``: a DDP model through ``run_um`` / ``run_umap``, ξ over every
rank's shard, and every rank ending with the same weights.

    torchrun --nproc_per_node 2 -m benchmarks.ddp                   # CPU processes, gloo
    torchrun --nproc_per_node 2 -m benchmarks.ddp --backend nccl    # a machine with two GPUs

Each rank builds the same seeded model and synthetic data and reads its shard through a
DistributedSampler. Checks: ξ estimated over the shards equals rank 0's one-process estimate on
all the data (to 1e-5, relative); after ``run_um(DDP(model), ...)`` and ``run_umap(...)`` every
rank holds bit-identical weights; each epoch drew its own order. Rank 0 prints one line per
check and ``ddp check: OK``; any failure exits 1 on every rank. Tested on CPU with gloo
(``tests/test_core_torchrun.py``); the NCCL line needs two GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch._dynamo  # noqa: F401  before the group exists: importing it later keeps WORLD alive
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from um_plugin.core import FinetuneConfig, estimate_xi, run_um, run_umap


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(),
                         nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[torch.arange(n), y] += 1.0  # class k: channel k bright
    return TensorDataset(x, y)


def _same_on_every_rank(model: nn.Module) -> bool:
    flat = torch.cat([t.detach().reshape(-1).double() for t in model.state_dict().values()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _fine_tune(run, device, loader, xi, config, local_rank) -> nn.Module:
    """``run`` on a DDP-wrapped model; the wrapper is gone when this returns (it holds the
    process group, which must be destroyable at the end)."""
    model = _model().to(device)
    ids = [local_rank] if device.type == "cuda" else None
    run(DistributedDataParallel(model, device_ids=ids), loader, xi, config)
    return model


def check(backend: str) -> list:
    """Every check's line, raising AssertionError on the first that fails."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    data = _data()
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    lines = []
    in_order = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, shuffle=False))
    xi = estimate_xi(_model().to(device), in_order, keep_ratio=0.8, seed=0, progress=False).xi
    alone = estimate_xi(_model().to(device), DataLoader(data, batch_size=8), keep_ratio=0.8,
                        seed=0, progress=False).xi
    assert abs(xi - alone) <= 1e-5 * max(1.0, abs(alone)), (xi, alone)
    lines.append(f"xi over {world} shards {xi:.6f} = one process on all {len(data)} {alone:.6f}")
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] != orders[1], "set_epoch gave two epochs one order"
    for name, run in (("UM", run_um), ("UMAP", run_umap)):
        config = FinetuneConfig(epochs=2, lr=0.05 if name == "UM" else 0.5, progress=False)
        model = _fine_tune(run, device, loader, xi, config, local_rank)
        same = _same_on_every_rank(model)
        untouched = all(torch.equal(a, b.to(device)) for a, b in
                        zip(model.state_dict().values(), _model().state_dict().values()))
        assert same and not untouched, (name, same, untouched)
        lines.append(f"{name}: {world} ranks hold bit-identical fine-tuned weights")
    return lines if rank == 0 else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node 2 -m benchmarks.ddp")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    args = parser.parse_args(argv)
    if args.backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(args.backend)
    try:
        lines = check(args.backend)
        for line in lines:
            print(line, flush=True)
        if lines:
            print(f"ddp check: OK ({args.backend}, {dist.get_world_size()} processes)", flush=True)
        code = 0
    except AssertionError as exc:
        print(f"ddp check: FAILED on rank {dist.get_rank()}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
