"""Networks this plug-in adds to OpenOOD's ``get_network``: ``network.name`` in main.py configs
and ``um-openood eval --network`` accept them like OpenOOD's own.

OpenOOD's ``get_network`` is a chain of ``if name == ...`` branches followed by one tail: load
``network.checkpoint`` when ``network.pretrained``, wrap in DistributedDataParallel for several
GPUs, move to the GPU. :func:`make_get_network` wraps it: our names build our class and take
that same tail (checkpoints load strictly: they are ours); every other name goes to OpenOOD.
The GPU move is OpenOOD's contract for every network it builds (``--cpu`` makes it a no-op).
"""
from __future__ import annotations

import torch

from um_plugin.core.distributed import strip_ddp_prefix
from um_plugin.openood.registry.densenet import DenseNetBC100

# name -> class taking num_classes=
NETWORKS = {"densenet_bc100": DenseNetBC100}


def model_state(loaded) -> dict:
    """The model's state_dict in a loaded checkpoint: the authors' ``*.state`` files hold it
    under ``state_dict``; a DataParallel ``module.`` prefix is dropped (in place)."""
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    return strip_ddp_prefix(loaded)


def _load(net: torch.nn.Module, path: str, name: str) -> None:
    state = model_state(torch.load(path))  # as OpenOOD's get_network (the CPU fallback maps it)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"network.checkpoint {path!r} does not fit network {name!r} "
                         f"({' '.join(str(exc).split())[:300]})") from None


def make_get_network(openood_get_network):
    """Wrap OpenOOD's ``get_network`` so ``network.name`` may be one of :data:`NETWORKS`."""

    def get_network(network_config):
        name = network_config.name
        if name not in NETWORKS:
            return openood_get_network(network_config)
        net = NETWORKS[name](num_classes=network_config.num_classes)
        if network_config.get("pretrained"):
            _load(net, network_config.checkpoint, name)
            print(f"Model Loading {name} Completed!")
        # OpenOOD's get_network contract, as its own builder ends: DDP over num_gpus > 1, and
        # .cuda() for num_gpus > 0 (a no-op under um-openood's --cpu fallback)
        num_gpus = network_config.get("num_gpus", 0) or 0
        if num_gpus > 1:
            from openood.utils import comm
            net = torch.nn.parallel.DistributedDataParallel(
                net.cuda(), device_ids=[comm.get_local_rank()], broadcast_buffers=True)
        if num_gpus > 0:
            net.cuda()
        return net

    get_network.__doc__ = openood_get_network.__doc__
    return get_network
