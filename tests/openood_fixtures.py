"""Tiny benchmarks in OpenOOD's on-disk format, so integration tests never download anything.

OpenOOD reads ``<data_root>/benchmark_imglist/<bench>/<split>.txt`` files whose lines are
``<image path relative to data_dir> <label>``, and opens every image as RGB. These helpers
make a few dozen small images with class-dependent colours (so a net can tell classes apart),
deterministically, and write them and their lists with ``benchmarks/imglist.py``, the writer the
benchmarks use. ``main_py_argv`` / ``run_main_py`` are the one way tests run OpenOOD's main.py.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks.imglist import write_image_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE_ENV = "UM_PLUGIN_REQUIRE_OPENOOD"
CHECKOUT_ENV = "UM_PLUGIN_OPENOOD_ROOT"


def _missing(reason, env=REQUIRE_ENV, what="the OpenOOD integration tests"):
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason}, but {env}=1 requires {what} to run")
    pytest.skip(reason)


def need_openood():
    """Skip (or fail, under UM_PLUGIN_REQUIRE_OPENOOD=1) a test when OpenOOD is missing."""
    from um_plugin.requirements import missing_openood_runtime, openood_missing_message
    missing = missing_openood_runtime()
    if missing:
        _missing(openood_missing_message(missing))


def _installed_openood_parent():
    """The folder above the importable ``openood`` package (an editable install's checkout), or
    None; found without importing OpenOOD."""
    try:
        spec = importlib.util.find_spec("openood")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))


def openood_checkout():
    """An OpenOOD source checkout (main.py, scripts/, configs/), or None:
    ``$UM_PLUGIN_OPENOOD_ROOT`` first, then the one an editable install of OpenOOD points into."""
    candidates = [os.environ.get(CHECKOUT_ENV), _installed_openood_parent(),
                  os.path.expanduser("~/.cache/um-plugin/OpenOOD")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "main.py")) and \
                os.path.isdir(os.path.join(path, "configs", "postprocessors")):
            return path
    return None


def checkout_env(**extra):
    """This environment, with the checkout first on PYTHONPATH, so a child process imports this
    copy of ``um_plugin`` (and ``benchmarks``)."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_cli(*args, cwd, expect=0, timeout=420):
    """``um-openood *args`` in a process of its own, for runs where a real process is the point
    (OpenOOD's main.py and scripts redirect stdout and loggers, and exit); it must exit ``expect``."""
    proc = subprocess.run([sys.executable, "-m", "um_plugin.cli", *map(str, args)], cwd=cwd,
                          env=checkout_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, \
        f"{list(args)}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def main_py_argv(checkout, dataset_yml, network, pipelines, *flags) -> list:
    """``um-openood`` arguments running OpenOOD's ``main.py`` on the CPU, configured as its own
    scripts do: the dataset YAML, ``configs/networks/<network>.yml``, the ``pipelines`` YAML(s)
    and the base preprocessor, then ``flags``."""
    pipelines = [pipelines] if isinstance(pipelines, (str, os.PathLike)) else pipelines
    return ["run", "--cpu", os.path.join(checkout, "main.py"), "--config", str(dataset_yml),
            os.path.join(checkout, "configs", "networks", f"{network}.yml"), *map(str, pipelines),
            os.path.join(checkout, "configs", "preprocessors", "base_preprocessor.yml"),
            *map(str, flags)]


def run_main_py(checkout, dataset_yml, network, pipelines, *flags, cwd, expect=0):
    """:func:`main_py_argv` in a process of its own (:func:`run_cli`); the finished process."""
    return run_cli(*main_py_argv(checkout, dataset_yml, network, pipelines, *flags), cwd=cwd,
                   expect=expect)


def run_python(code, timeout=300):
    """``code`` in a fresh interpreter (import-time behaviour, reloads, what a spawned worker
    sees); the finished process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=checkout_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_config_root(checkout, root, args_by_mode, sections=None):
    """A ``configs/`` root at ``root``: OpenOOD's postprocessor YAMLs, and for each mode in
    ``args_by_mode`` our shipped ``<mode>.yml`` with those postprocessor args over it (and the
    ``postprocessor:`` keys in ``sections[mode]``, e.g. a ``postprocessor_sweep``)."""
    import shutil

    import yaml

    from um_plugin.shipped import configs_root
    shutil.copytree(os.path.join(checkout, "configs", "postprocessors"),
                    os.path.join(root, "postprocessors"))
    for mode, args in args_by_mode.items():
        with open(os.path.join(configs_root(), "postprocessors", f"{mode}.yml")) as f:
            config = yaml.safe_load(f)
        config["postprocessor"]["postprocessor_args"].update(args)
        config["postprocessor"].update((sections or {}).get(mode, {}))
        with open(os.path.join(root, "postprocessors", f"{mode}.yml"), "w") as f:
            yaml.safe_dump(config, f)
    return str(root)


def lenet(num_classes=3):
    """OpenOOD's LeNet for 3-channel images, seeded so every call is the same network."""
    import torch
    from openood.networks.lenet import LeNet
    torch.manual_seed(0)
    return LeNet(num_classes=num_classes, num_channel=3)


def write_images(data_root, data_dir, folder, list_path, n, size, num_classes, seed, ood=False,
                 sort_by_class=False):
    """``n`` PNGs under ``data_root/data_dir/folder`` (class ``k`` bright in channel ``k % 3``; OOD:
    uniform noise) and their image list ``list_path`` (``sort_by_class``: its lines in class
    order, a stable sort); return ``list_path``."""
    rng = np.random.default_rng(seed)
    labels = [i % num_classes for i in range(n)]
    images = []
    for label in labels:
        if ood:
            pixels = rng.integers(0, 256, size=(size, size, 3))
        else:
            base = np.zeros(3)
            base[label % 3] = 60 + 190 * (label // 3 + 1) / (num_classes // 3 + 1)
            pixels = base + rng.normal(0, 25, size=(size, size, 3))
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    if sort_by_class:
        order = sorted(range(n), key=labels.__getitem__)
        images, labels = [images[i] for i in order], [labels[i] for i in order]
    return write_image_list(data_root, data_dir, folder, list_path, images,
                            None if ood else labels)


def make_tiny_benchmark(data_root, name="tinybench", num_classes=3, size=28, per_split=24,
                        data_dir="images_classic/", seed=0, sort_train=False) -> dict:
    """Write an ID set (train/val/test) and OOD sets; return ``register_benchmark`` kwargs.

    Class ``k``'s images are bright in channel ``k % 3`` (:func:`colour_classes` reads it back).
    ``sort_train``: the train list sorted by class, as the project's own benchmark writes it.
    """
    lists = {split: write_images(data_root, data_dir, f"{name}/{split}",
                                 f"benchmark_imglist/{name}/{split}_{name}.txt", per_split, size,
                                 num_classes, seed + k, sort_by_class=sort_train and split == "train")
             for k, split in enumerate(("train", "val", "test"))}
    ood = {ood_name: write_images(data_root, data_dir, f"{ood_name}/test",
                                  f"benchmark_imglist/{name}/test_{ood_name}.txt", per_split // 2,
                                  size, num_classes, seed + 10 + k, ood=True)
           for k, ood_name in enumerate(("noise_val", "noise_near", "noise_far"))}
    return dict(name=name, data_root=str(data_root), num_classes=num_classes, id_train=lists["train"],
                id_val=lists["val"], id_test=lists["test"], ood_val=ood["noise_val"],
                near_ood={"noise_near": ood["noise_near"]}, far_ood={"noise_far": ood["noise_far"]},
                data_dir=data_dir, image_size=size)


def colour_classes(images) -> list:
    """The class of each tiny-benchmark image (3 classes): its brightest channel."""
    return images.mean((2, 3)).argmax(1).tolist()


def make_halves_benchmark(data_root, name="halves", size=28, per_split=24,
                          data_dir="images_classic/", seed=0) -> dict:
    """Two classes told apart by which half of the image is bright (0: left, 1: right), so a
    horizontal flip (OpenOOD's train preprocessor) turns one class into the other. Returns
    ``dataset_config`` kwargs for the ID splits."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(per_split)]
    lists = {}
    for split in ("train", "val", "test"):
        images = []
        for label in labels:
            pixels = np.full((size, size), 30.0)
            half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            pixels[:, half] = 200.0
            pixels = np.repeat(pixels[..., None], 3, axis=2) + rng.normal(0, 10, (size, size, 3))
            images.append(np.clip(pixels, 0, 255).astype(np.uint8))
        lists[split] = write_image_list(data_root, data_dir, f"{name}/{split}",
                                        f"benchmark_imglist/{name}/{split}_{name}.txt", images,
                                        labels)
    return dict(name=name, data_root=str(data_root), num_classes=2, id_train=lists["train"],
                id_val=lists["val"], id_test=lists["test"], data_dir=data_dir, image_size=size)


def make_openood_layout(data_root, id_name="cifar10", size=32, per_list=12, seed=0) -> None:
    """Fill every image list OpenOOD's ``DATA_INFO[id_name]`` names, and every dataset folder
    ``data_setup`` checks, with a few images: the stock benchmark, miniature and offline."""
    from openood.evaluation_api.datasets import DATA_INFO

    info = DATA_INFO[id_name]
    num_classes = info["num_classes"]
    leaves = []

    def walk(node, tag):
        if isinstance(node, dict) and "imglist_path" in node:
            leaves.append((tag, node))
        elif isinstance(node, dict):
            for key, value in node.items():
                if key != "datasets":
                    walk(value, f"{tag}_{key}" if tag else key)

    walk({"id": info["id"], "csid": info["csid"], "ood": info["ood"]}, "")
    for k, (tag, leaf) in enumerate(leaves):
        is_ood = tag.startswith("ood")
        folder = os.path.basename(leaf["imglist_path"]).rsplit(".", 1)[0].split("_", 1)[1]
        write_images(data_root, leaf["data_dir"], f"{folder}/{tag}", leaf["imglist_path"], per_list,
                     size, num_classes, seed + k, ood=is_ood)


def _import_before_the_group():
    """Import OpenOOD's trainers before a worker's process group exists: they import diffdist,
    whose functions take ``group=dist.group.WORLD`` as a default argument, so importing it
    while a group exists keeps that group alive past destroy_process_group (see gloo_group)."""
    import openood.networks.lenet  # noqa: F401
    import openood.trainers  # noqa: F401
    import openood.utils  # noqa: F401
    import um_plugin.openood  # noqa: F401  registers


def ddp_worker(rank, world_size, init_file, out_dir, configs, dataset_tensors):
    """One rank of the gloo test: for each trainer config, build the OpenOOD trainer on a
    DDP-wrapped LeNet, train an epoch on this rank's shard, save what must agree across ranks."""
    from core_helpers import gloo_group
    _import_before_the_group()
    with gloo_group(rank, world_size, init_file=init_file):
        for name, config_dict in configs.items():
            _ddp_train_one(rank, world_size, out_dir, name, config_dict, dataset_tensors)


def _ddp_train_one(rank, world_size, out_dir, name, config_dict, dataset_tensors):
    """One config of :func:`ddp_worker`; its DDP wrapper dies on return, before the group."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

    import um_plugin.openood  # noqa: F401  registers
    from openood.networks.lenet import LeNet
    from openood.trainers import get_trainer
    from openood.utils import Config
    from um_plugin.core.masks import iter_score_masks

    x, y = dataset_tensors

    class Dicts(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"data": x[i], "label": y[i]}

    sampler = DistributedSampler(Dicts(), num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(Dicts(), batch_size=4, sampler=sampler)
    torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's, as in OpenOOD
    net = torch.nn.parallel.DistributedDataParallel(LeNet(num_classes=3, num_channel=3))
    trainer = get_trainer(net, loader, None, Config(config_dict))
    out_net, metrics = trainer.train_epoch(1)
    out_net = getattr(out_net, "module", out_net)  # um hands back OpenOOD's DDP wrapper
    masks, scores = {}, {}
    for layer, _, m in iter_score_masks(trainer.model):
        m.group.refresh()
        masks[layer] = m.mask.detach().clone()
        scores[layer] = m.scores.detach().clone()
    torch.save({"xi": trainer.xi, "metrics": metrics, "state": out_net.state_dict(),
                "masks": masks, "scores": scores, "type": type(out_net).__name__,
                "shard": list(iter(sampler))},
               os.path.join(out_dir, f"{name}_rank{rank}.pt"))


def bn_net():
    """A small conv net with BatchNorm (its running statistics are what a NaN step corrupts)."""
    import torch
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).to(torch.float32)


def ddp_nan_worker(rank, world_size, init_file, out_dir, config_dict, nan_rank):
    """One rank of the NaN test: only ``nan_rank``'s second batch holds a NaN. Saves what this
    rank raised and its BatchNorm buffers next to those after the last finite step."""
    import torch

    from core_helpers import gloo_group
    _import_before_the_group()
    result = {"rank": rank}
    try:
        with gloo_group(rank, world_size, init_file=init_file, timeout_s=20):
            _ddp_nan_run(rank, config_dict, nan_rank, result)
    finally:
        torch.save(result, os.path.join(out_dir, f"nan_rank{rank}.pt"))


def _ddp_nan_run(rank, config_dict, nan_rank, result):
    """The body of :func:`ddp_nan_worker`; its DDP wrapper dies on return, before the group."""
    import copy

    import torch
    from torch.utils.data import DataLoader

    import um_plugin.openood  # noqa: F401  registers
    from openood.trainers import get_trainer
    from openood.utils import Config

    torch.manual_seed(0)
    net = bn_net()
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.arange(16) % 3
    if rank == nan_rank:
        x[9] = float("nan")  # second batch of 8
    loader = DataLoader([{"data": a, "label": b} for a, b in zip(x, y)], batch_size=8)
    reference = copy.deepcopy(net).train()
    with torch.no_grad():
        reference(x[:8])  # BatchNorm statistics after the one finite step
    trainer = get_trainer(torch.nn.parallel.DistributedDataParallel(net), loader, None,
                          Config(config_dict))
    try:
        trainer.train_epoch(1)
        result["error"] = None
    except Exception as exc:  # what each rank raised is the result
        result.update(error=type(exc).__name__, message=str(exc),
                      step=getattr(exc, "step", None))
    result["buffers"] = [b.detach().clone() for b in trainer.model.buffers()]
    result["expected"] = [b.detach().clone() for b in reference.buffers()]
