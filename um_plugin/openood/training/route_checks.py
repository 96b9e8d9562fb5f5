"""Route 1 checks on a merged ``main.py`` config that OpenOOD would otherwise end in a traceback
(or, worse, run past): an unknown trainer, a batch size below 1, a missing data folder, and for
the ``um`` / ``umap`` trainers a base checkpoint that is not given, missing, unreadable, or does
not load whole into the network (OpenOOD's ``get_network`` drops what does not fit and UM would
fine-tune a random final layer). Each is one ``ValueError`` naming the key.
"""
from __future__ import annotations

import copy
import inspect
import os
import re

from um_plugin.core.config import check_integer
from um_plugin.openood.evaluation.evaluate import load_weights
from um_plugin.openood.settings.options import TRAINER_NAMES


def openood_trainer_names() -> list:
    """The names OpenOOD's ``get_trainer`` builds (read from its source)."""
    from openood.trainers import utils
    return sorted(set(re.findall(r"'([\w-]+)'\s*:\s*\w+Trainer\b",
                                 inspect.getsource(utils.get_trainer))))


def _positive(config, key: str) -> None:
    node = config
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return
    check_integer(f"--{key}", node, 1)


def check_trainer_name(config) -> None:
    trainer = config.get("trainer")
    name = trainer.get("name") if trainer is not None else None
    if name is None:
        return
    known = sorted(set(openood_trainer_names()) | set(TRAINER_NAMES))
    if name not in known:
        raise ValueError(f"--trainer.name {name!r} is not a trainer OpenOOD or um-plugin knows; "
                         f"use one of {known}")


def check_data_paths(config) -> None:
    """Each split's image list and image folder of the dataset section exists."""
    dataset = config.get("dataset") or {}
    for split in dataset.get("split_names") or []:
        section = dataset.get(split) or {}
        for key in ("imglist_pth", "data_dir"):
            path = section.get(key)
            if isinstance(path, str) and path and not os.path.exists(path):
                raise ValueError(f"--dataset.{split}.{key}: {path!r} does not exist (cwd "
                                 f"{os.getcwd()!r}); nothing is downloaded")


def check_base_checkpoint(config, trainer: str) -> None:
    """The um / umap trainer's base: given, readable, and loading whole into the network."""
    network = config.network
    checkpoint = network.get("checkpoint")
    if not network.get("pretrained") or checkpoint in (None, "", "none"):
        raise ValueError(f"--network.checkpoint: the {trainer} trainer fine-tunes a trained "
                         "network; pass --network.checkpoint PATH (with network.pretrained: True)")
    if not isinstance(checkpoint, str) or not os.path.isfile(checkpoint):
        raise ValueError(f"--network.checkpoint {checkpoint!r} does not exist (cwd "
                         f"{os.getcwd()!r})")
    classes = (config.get("dataset") or {}).get("num_classes")
    outputs = network.get("num_classes")  # a command-line value stays the YAML's type (str)
    if classes is not None and str(outputs) != str(classes):
        raise ValueError(f"--network.num_classes {outputs} differs from dataset.num_classes "
                         f"{classes}; the network must have one output per class of the dataset")
    from openood.networks import get_network
    plain = copy.deepcopy(network)
    plain.pretrained, plain.num_gpus = False, 0
    try:
        net = get_network(plain)
    except Exception as exc:  # noqa: BLE001  the builder's error, in one line
        raise ValueError(f"--network.name {network.get('name')!r} cannot be built to check "
                         f"--network.checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        load_weights(net, checkpoint)
    except ValueError as exc:
        raise ValueError(f"--network.checkpoint: {exc} (OpenOOD would load only the part that "
                         f"fits and the {trainer} trainer would fine-tune the rest at random)") from None


def check_route1(config) -> None:
    """Every check above that applies to ``config``."""
    check_trainer_name(config)
    _positive(config, "dataset.train.batch_size")
    trainer = config.trainer.name if config.get("trainer") is not None else None
    if trainer in TRAINER_NAMES:
        check_base_checkpoint(config, trainer)
        check_data_paths(config)
