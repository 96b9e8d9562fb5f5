"""Several processes and several machines through OpenOOD's own ``launch`` (``main.py``).

``main.py`` calls ``launch(main, num_gpus, num_machines=, machine_rank=, dist_url='auto')``.
Two things stop that from scaling out as shipped, and this module fixes only those:

* ``dist_url='auto'`` is hard-coded, and ``launch`` refuses it across machines. ``um-openood
  run main.py ... --num_machines 2 --machine_rank R --dist_url tcp://HOST:PORT`` (one launch
  per machine; ``--dist_url`` is ours, not a config key) hands that URL to ``launch`` instead.
  Without ``--dist_url``, ``MASTER_ADDR``/``MASTER_PORT`` (as a job script or scheduler sets
  them) give it; ``--dist_timeout S`` replaces OpenOOD's 30-minute collective timeout.
* OpenOOD's worker asserts CUDA, joins over NCCL and pins a GPU, its ``get_network`` wraps the
  net in DDP with ``device_ids``, and the pipeline converts BatchNorm to SyncBatchNorm. With
  ``--cpu`` the spawned workers are :func:`cpu_worker`: OpenOOD's own worker run over gloo,
  with just those CUDA assumptions patched (``.cuda()`` is already a no-op under ``--cpu``).

A rank that fails ends the whole launch in one line naming it (:class:`RanksFailed`).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import logging
import os
import re
import signal
import socket
import types
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import torch
# torch._dynamo captures the default process group when first imported: imported before any
import torch._dynamo  # noqa: F401  group is made (OpenOOD's own imports bring it in anyway)
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException
from torch.nn.parallel import DistributedDataParallel

from um_plugin.openood.cpu import enable_cpu_fallback
from um_plugin.openood.settings.options import RouteStop
from um_plugin.openood.registry.wrapping import original
from um_plugin.openood.training.script_config import read_config, reads_config

_launch = importlib.import_module("openood.utils.launch")
FLAGS = ("--dist_url", "--dist_timeout")


class RanksFailed(RuntimeError):
    """A rank of a launch raised or died; the launcher stopped the others."""


@dataclass(frozen=True)
class LaunchPlan:
    """What ``um-openood run`` changes in OpenOOD's ``launch`` call (data, passed down)."""

    cpu: bool = False
    dist_url: Optional[str] = None      # None: main.py's own ('auto': a free local port)
    timeout_s: Optional[float] = None   # None: OpenOOD's DEFAULT_TIMEOUT (30 minutes)


def split_launch_args(args: list) -> tuple:
    """``(script args, {flag: value})``: our ``--dist_url``/``--dist_timeout`` taken out,
    since main.py's config reader refuses keys its YAML files lack."""
    rest, ours, index = [], {}, 0
    while index < len(args):
        arg = args[index]
        name = arg.split("=", 1)[0]
        if name in FLAGS:
            if "=" in arg:
                value, index = arg.split("=", 1)[1], index + 1
            elif index + 1 < len(args):
                value, index = args[index + 1], index + 2
            else:
                raise ValueError(f"{name} needs a value (e.g. {name} "
                                 f"{'tcp://10.0.0.1:29500' if name == '--dist_url' else '60'})")
            ours[name] = value
        else:
            rest.append(arg)
            index += 1
    return rest, ours


def _timeout(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"--dist_timeout {text!r}: give the collective timeout in seconds, > 0")
    return value


def check_dist_url(url: str, machine_rank: int) -> None:
    """Refuse (one line) a URL ``init_process_group`` cannot rendezvous on: not
    ``tcp://HOST:PORT``, an unknown host, or (on machine 0, which listens) a port in use."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"--dist_url {url!r}: give tcp://HOST:PORT (machine 0's address and a "
                         "free port on it, the same on every machine)")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"--dist_url {url!r}: host {parts.hostname!r} does not resolve "
                         f"({exc.strerror or exc}); give machine 0's address") from None
    if machine_rank != 0:
        return
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"--dist_url {url!r}: machine 0 listens there, but port {port} on "
                             f"{parts.hostname} cannot be bound ({exc.strerror or exc}); pick "
                             "a free port on this machine") from None


def plan_launch(script: str, args: list, *, cpu: bool) -> tuple:
    """``(script args, LaunchPlan)`` for ``um-openood run``; ValueError (one line) for launch
    settings that cannot work, before any work."""
    rest, ours = split_launch_args(args)
    if not reads_config(script):
        if ours:
            raise ValueError(f"{'/'.join(ours)}: only for a script that launches like main.py")
        return rest, LaunchPlan(cpu=cpu)
    config = read_config(script, rest)
    machines, rank, gpus = config.num_machines, config.machine_rank, config.num_gpus
    if not (isinstance(machines, int) and machines >= 1):
        raise ValueError(f"--num_machines {machines!r}: give a whole number >= 1")
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"--num_gpus {gpus!r}: give the number of processes per machine, >= 1")
    if not (isinstance(rank, int) and 0 <= rank < machines):
        raise ValueError(f"--machine_rank {rank!r}: give this machine's rank, 0 to {machines - 1}"
                         f" (--num_machines {machines})")
    url = ours.get("--dist_url")
    if url is None and machines > 1 and os.environ.get("MASTER_ADDR") and \
            os.environ.get("MASTER_PORT"):
        url = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if url is None and machines > 1:
        raise ValueError(f"--num_machines {machines} needs --dist_url tcp://HOST:PORT (machine "
                         "0's address; main.py's own 'auto' works on one machine only), or "
                         "MASTER_ADDR and MASTER_PORT in the environment")
    if url is not None:
        check_dist_url(url, rank)
    return rest, LaunchPlan(cpu=cpu, dist_url=url, timeout_s=_timeout(ours.get("--dist_timeout")))


# ---------------------------------------------------------------- the launching process

def _gloo_lost(text: str) -> Optional[str]:
    """The gist of a gloo error a rank raises when a peer went away, or None."""
    if "gloo" not in text.lower():
        return None
    found = re.search(r"gloo[^ ]*\] (.*?(?:by peer|[Tt]imed out|[Tt]imeout)[^.]*)", text)
    return found.group(1) if found else None


def _failure(exc, processes, rank_base: int) -> Exception:
    """One line for a failed launch. A rank that died of a signal is named even when a rank
    waiting on it raised first; a RouteStop stays one (exit 2); anything else RanksFailed."""
    last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
    lost = None if isinstance(exc, ProcessExitedException) else _gloo_lost(last)
    if lost is not None:
        for index, process in enumerate(processes):  # the launcher SIGTERMs the others itself
            if process.exitcode is not None and process.exitcode < 0 and \
                    process.exitcode != -signal.SIGTERM:
                return _died(rank_base + index, process.pid, signal.Signals(-process.exitcode).name)
        return RanksFailed(f"rank {rank_base + exc.error_index} lost its connection to another "
                           f"rank, which stopped or died (on another machine: see its error "
                           f"line); the other ranks here were stopped and nothing was saved as "
                           f"finished (gloo: {lost})")
    if isinstance(exc, ProcessExitedException):
        return _died(rank_base + exc.error_index, exc.error_pid, exc.signal_name,
                     exc.exit_code)
    kind, _, message = last.partition(": ")
    stop = _route_stop(kind)
    if stop is not None:
        return stop(message)
    return RanksFailed(f"rank {rank_base + exc.error_index} stopped the run: {last}")


def _died(rank: int, pid: int, signal_name: Optional[str], exit_code: int = 0) -> RanksFailed:
    how = f"was killed by {signal_name}" if signal_name else f"exited with code {exit_code}"
    return RanksFailed(f"rank {rank} (pid {pid}) {how}; the other ranks were stopped and "
                       "nothing was saved as finished")


def _spawn(processes: list):
    """``mp.spawn`` for OpenOOD's launch, keeping the processes so :func:`_failure` sees them."""

    def spawn(fn, args=(), nprocs=1, join=True, daemon=False, start_method="spawn"):
        context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, daemon=daemon,
                                     start_method=start_method)
        processes[:] = context.processes
        while not context.join():
            pass

    return types.SimpleNamespace(spawn=spawn)


def _route_stop(qualified: str):
    """The RouteStop subclass named ``module.Class`` in a worker's traceback, or None."""
    module, _, name = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, RouteStop) else None


@contextlib.contextmanager
def launching(plan: LaunchPlan):
    """While ``main.py`` runs: its ``launch`` takes ``plan``'s URL and timeout, spawns
    :func:`cpu_worker` with ``--cpu``, and turns a failed rank into one exception line."""
    utils = importlib.import_module("openood.utils")
    openood_launch = original(utils.launch)
    saved_worker, saved_mp = _launch._distributed_worker, _launch.mp

    def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None,
               args=(), timeout=_launch.DEFAULT_TIMEOUT):
        if plan.dist_url is not None:
            dist_url = plan.dist_url
        if plan.timeout_s is not None:
            timeout = datetime.timedelta(seconds=plan.timeout_s)
        if plan.cpu and num_gpus_per_machine * num_machines > 1:
            _launch._distributed_worker = cpu_worker
        processes = []
        _launch.mp = _spawn(processes)
        try:
            return openood_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                                  machine_rank=machine_rank, dist_url=dist_url, args=args,
                                  timeout=timeout)
        except ProcessException as exc:
            raise _failure(exc, processes, machine_rank * num_gpus_per_machine) from None

    launch.__wrapped__ = openood_launch
    utils.launch = launch
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)  # its "Terminating process" lines: our one line says it
    try:
        yield plan
    finally:
        utils.launch = openood_launch
        _launch._distributed_worker, _launch.mp = saved_worker, saved_mp
        spawn_log.setLevel(level)


# ---------------------------------------------------------------- a spawned CPU rank

class CpuDistributedDataParallel(DistributedDataParallel):
    """DDP that ignores ``device_ids`` / ``output_device`` (GPU-only) for a CPU module."""

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        super().__init__(module, **kwargs)


def _as_is(cls, module, process_group=None):
    """``SyncBatchNorm.convert_sync_batchnorm`` on CPU: SyncBatchNorm runs only on GPUs."""
    return module


@contextlib.contextmanager
def _patched(patches):
    saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else
              getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _gloo(init):
    def init_process_group(backend=None, *args, **kwargs):
        return init(backend="gloo", *args, **kwargs)
    return init_process_group


def cpu_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
               args, timeout=_launch.DEFAULT_TIMEOUT):
    """OpenOOD's ``_distributed_worker`` in a spawned CPU process (pickled by reference, so
    importing this module registers um/umap here): gloo for NCCL, no CUDA asserts, and the
    process group destroyed before the process exits."""
    enable_cpu_fallback()
    setup = [(torch.cuda, "is_available", lambda: True),
             (torch.cuda, "device_count", lambda: num_gpus_per_machine),
             (torch.cuda, "set_device", lambda device: None),
             (dist, "init_process_group", _gloo(dist.init_process_group))]
    whole_run = [(torch.nn.parallel, "DistributedDataParallel", CpuDistributedDataParallel),
                 (torch.nn.SyncBatchNorm, "convert_sync_batchnorm", classmethod(_as_is))]

    def run(*main_args):
        undo_setup.close()  # OpenOOD's worker is done with CUDA; the run sees the CPU as is
        if dist.get_rank() == 0:
            print(f"[um-plugin] --cpu: {world_size} gloo processes; BatchNorm statistics are "
                  "per rank within an epoch (SyncBatchNorm needs GPUs)", flush=True)
        with _patched(whole_run):
            main_func(*main_args)

    undo_setup = contextlib.ExitStack()
    undo_setup.enter_context(_patched(setup))
    try:
        original(_launch._distributed_worker)(local_rank, run, world_size, num_gpus_per_machine,
                                              machine_rank, dist_url, args, timeout)
    finally:
        undo_setup.close()
        leave_process_group()


def leave_process_group() -> None:
    """Destroy every group and drop what holds one (OpenOOD's local group and its cached gloo
    group), so no gloo thread outlives the group and races interpreter exit (SIGABRT)."""

    from openood.utils import comm
    comm._LOCAL_PROCESS_GROUP = None
    cached = getattr(comm, "_get_global_gloo_group", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
