"""Score trained checkpoints with OpenOOD's ``Evaluator``, as ``scripts/eval_ood.py`` does, for
any ``id_name`` the Evaluator knows and any network.

``eval_ood.py`` fixes the ID set (four choices) and builds a ResNet itself, so a registered
offline benchmark or a LeNet cannot be scored with it. Here the network comes from OpenOOD's own
builder (``get_network``) or from ``module:Class``, and every number comes from
``Evaluator.eval_ood`` (OpenOOD's metrics); this module only picks the checkpoints, loads them,
and averages the per-run tables over the run folders (mean and population std, as eval_ood.py).
Everything that can be checked is checked by :func:`plan` before any scoring starts.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from openood.evaluation_api import datasets as oo_datasets
from openood.evaluation_api import postprocessor as eval_pp

from um_plugin.core.distributed import strip_ddp_prefix

from .config_discovery import base_config_candidates, config_roots
from .names import is_method_name, known_postprocessor_names, split_name

CHECKPOINT = "best.ckpt"  # what main.py's recorder saves and eval_ood.py reads


@dataclass
class Model:
    """One leaderboard model: a run folder's ``s*`` checkpoints, or one checkpoint file."""
    name: str
    root: str
    checkpoints: List[str]  # one per run (seed) folder, sorted
    csv_dir: str            # where --save-csv writes ood/<pp>.csv


@dataclass
class Plan:
    """Everything :func:`score_all` needs, validated."""
    models: List[Model]
    postprocessors: List[str]
    id_name: str
    data_root: str
    config_root: str
    make_net: Callable[[], torch.nn.Module]
    device: str
    batch_size: int = 200
    num_workers: int = 4
    fsood: bool = False
    save_score: bool = False
    results: Dict = field(default_factory=dict)


def model_from_root(root: str, checkpoint_name: str = CHECKPOINT) -> Model:
    """Every ``s*`` folder under ``root`` holding ``checkpoint_name`` (eval_ood.py's layout), or
    ``root`` itself when it is a checkpoint file."""
    if os.path.isfile(root):
        path = os.path.abspath(root)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{os.path.basename(os.path.dirname(path))}/{stem}"
        return Model(name, path, [path], os.path.dirname(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root!r} is neither a run folder nor a checkpoint file")
    runs = sorted(d for d in os.listdir(root)
                  if d.startswith("s") and os.path.isdir(os.path.join(root, d)))
    if not runs:
        raise ValueError(f"--root {root!r} has no s* run folders (main.py writes <exp>/s<seed>/); "
                         f"pass the folder above them, or a checkpoint file")
    missing = [d for d in runs if not os.path.isfile(os.path.join(root, d, checkpoint_name))]
    if missing:
        raise FileNotFoundError(f"--root {root!r}: run folder(s) {missing} have no "
                                f"{checkpoint_name!r} (--checkpoint-name)")
    name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    return Model(name, os.path.abspath(root),
                 [os.path.join(os.path.abspath(root), d, checkpoint_name) for d in runs],
                 os.path.abspath(root))


def openood_network_names() -> List[str]:
    """The names ``openood.networks.get_network`` builds (read from its source)."""
    from openood.networks import utils as net_utils
    return sorted(set(re.findall(r"network_config\.name\s*==\s*'([\w-]+)'",
                                 inspect.getsource(net_utils.get_network))))


def network_factory(spec: str, num_classes: int, device: str) -> Callable[[], torch.nn.Module]:
    """A function building a fresh, untrained network: an OpenOOD name or ``module:Class``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"--network {spec!r}: cannot import {module_name!r} ({exc})") from None
        cls = getattr(module, attr, None)
        if not callable(cls):
            raise ValueError(f"--network {spec!r}: {module_name!r} has no class {attr!r}")

        def make():
            return cls(num_classes=num_classes).to(device)
    else:
        from openood.networks import get_network
        from openood.utils import Config
        names = openood_network_names()
        if spec not in names:
            raise ValueError(f"--network {spec!r} is not an OpenOOD network name; use one of "
                             f"{names} or module:Class")

        def make():
            # num_gpus=1: get_network calls .cuda() (a no-op under --cpu)
            config = Config({"name": spec, "num_classes": num_classes, "pretrained": False,
                             "checkpoint": "none", "num_gpus": 1})
            return get_network(config)
    try:
        net = make()
    except Exception as exc:  # noqa: BLE001  the builder's own error, reported in one line
        raise ValueError(f"--network {spec!r} with --num-classes {num_classes} cannot be built "
                         f"from a name alone ({type(exc).__name__}: {exc}); pass module:Class "
                         "taking num_classes=") from None
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"--network {spec!r} builds a {type(net).__name__}, not one nn.Module; "
                         "pass module:Class")
    return make


def load_weights(net: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load a saved state_dict (a ``module.`` prefix from DDP is dropped), strictly; one-line
    error naming what does not fit."""
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  unpickling errors come in many types
        raise ValueError(f"checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"checkpoint {path!r} is not a state_dict (got {type(state).__name__})")
    strip_ddp_prefix(state)
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        detail = "; ".join(part for part in (
            f"missing {missing[:4]}" if missing else "", f"unexpected {extra[:4]}" if extra else "",
            f"shape of {shapes[0]!r} {tuple(state[shapes[0]].shape)} vs network's "
            f"{tuple(own[shapes[0]].shape)}" if shapes else "") if part)
        raise ValueError(f"checkpoint {path!r} does not fit --network {type(net).__name__}: "
                         f"{detail}")
    net.load_state_dict(state, strict=True)
    return net


def check_postprocessor(name: str, config_root: str) -> None:
    """Whether the Evaluator can build ``name`` from files on disk (it would download a YAML)."""
    if is_method_name(name):
        mode, base = split_name(name)
        if base is None:
            return
        if base not in known_postprocessor_names():
            raise ValueError(f"--postprocessor {name!r}: unknown base {base!r}; OpenOOD knows "
                             f"{known_postprocessor_names()}")
        if not any(os.path.isfile(p) for p in base_config_candidates(base, config_root)):
            raise ValueError(f"--postprocessor {name!r}: no postprocessors/{base}.yml in "
                             f"{config_roots(config_root)}; pass --config-root <OpenOOD>/configs")
        return
    if name not in eval_pp.postprocessors:
        raise ValueError(f"--postprocessor {name!r} is not one the Evaluator knows; use one of "
                         f"{sorted(eval_pp.postprocessors)} or um_<base> / umap_<base>")
    path = os.path.join(config_root, "postprocessors", f"{name}.yml")
    if not os.path.isfile(path):
        raise ValueError(f"--postprocessor {name!r}: {path!r} does not exist (the Evaluator "
                         "would download it); pass --config-root <OpenOOD>/configs")


def default_config_root() -> Optional[str]:
    """The first OpenOOD ``configs/`` folder found where the plug-in looks for one."""
    return next((r for r in config_roots() if os.path.isdir(os.path.join(r, "postprocessors"))),
                None)


def check_data(id_name: str, data_root: str, fsood: bool) -> None:
    """Every image list the Evaluator will open exists under ``data_root`` (and the stock sets'
    folders too), so OpenOOD's ``data_setup`` downloads nothing."""
    if id_name not in oo_datasets.DATA_INFO:
        raise ValueError(f"--id-data {id_name!r} is not a benchmark the Evaluator knows; use one "
                         f"of {sorted(oo_datasets.DATA_INFO)} or --benchmark FILE")
    info = oo_datasets.DATA_INFO[id_name]
    if fsood and not info["csid"].get("datasets"):
        raise ValueError(f"--fsood: benchmark {id_name!r} has no covariate-shift ID (csid) sets")
    leaves = [info["id"]["train"], info["id"]["val"], info["id"]["test"], info["ood"]["val"]]
    groups = [info["ood"]["near"], info["ood"]["far"]] + ([info["csid"]] if fsood else [])
    leaves += [group[name] for group in groups for name in group["datasets"]]
    for leaf in leaves:
        path = os.path.join(data_root, leaf["imglist_path"])
        if not os.path.isfile(path):
            raise ValueError(f"--data-root {data_root!r}: image list {leaf['imglist_path']!r} of "
                             f"benchmark {id_name!r} does not exist ({path!r}); nothing is "
                             "downloaded")
    for dataset in oo_datasets.benchmarks_dict.get(id_name, []):
        for kind, names in oo_datasets.dir_dict.items():
            if dataset in names:
                folder = os.path.join(data_root, kind, dataset)
                if not (os.path.isdir(folder) and os.listdir(folder)):
                    raise ValueError(f"--data-root {data_root!r}: {folder!r} is missing or empty "
                                     f"(images of {dataset!r}); nothing is downloaded")


def _cached(folder: str, kind: str, name: str):
    path = os.path.join(folder, kind, f"{name}.pkl")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    return None


def _store(folder: str, kind: str, name: str, obj, overwrite: bool) -> None:
    path = os.path.join(folder, kind, f"{name}.pkl")
    if os.path.isfile(path) and not overwrite:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, pickle.HIGHEST_PROTOCOL)


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def score_one(plan: Plan, checkpoint: str, postprocessor: str) -> pd.DataFrame:
    """OpenOOD's metrics table for one checkpoint and postprocessor (``Evaluator.eval_ood``).

    As eval_ood.py: a postprocessor pickled in ``<run>/postprocessors/`` (its search or setup
    done) is reused and one that did a search is saved there; scores saved with ``--save-score``
    in ``<run>/scores/`` are reused."""
    from openood.evaluation_api import Evaluator
    run = os.path.dirname(checkpoint)
    net = load_weights(plan.make_net(), checkpoint).to(plan.device).eval()
    evaluator = Evaluator(net, id_name=plan.id_name, data_root=plan.data_root,
                          config_root=plan.config_root, preprocessor=None,
                          postprocessor_name=postprocessor,
                          postprocessor=_cached(run, "postprocessors", postprocessor),
                          batch_size=plan.batch_size, shuffle=False,
                          num_workers=plan.num_workers)
    scores = _cached(run, "scores", postprocessor)
    if scores is not None:
        _merge(evaluator.scores, scores)
    pp = evaluator.postprocessor
    if hasattr(pp, "setup_flag") or pp.hyperparam_search_done is True:
        _store(run, "postprocessors", postprocessor, pp, overwrite=False)
    table = evaluator.eval_ood(fsood=plan.fsood, progress=False)
    if plan.save_score:
        _store(run, "scores", postprocessor, evaluator.scores, overwrite=True)
    return table


def mean_std(tables: List[pd.DataFrame]):
    """Mean and population std over the run folders' tables (same index and columns)."""
    stack = np.stack([t.to_numpy(dtype=float) for t in tables])
    like = tables[0]
    return (pd.DataFrame(stack.mean(0), index=like.index, columns=like.columns),
            pd.DataFrame(stack.std(0), index=like.index, columns=like.columns))


def openood_csv_table(mean: pd.DataFrame, std: pd.DataFrame) -> pd.DataFrame:
    """The table eval_ood.py writes: every cell ``'mean ± std'`` with two decimals."""
    cells = [[f"{m:.2f} \u00b1 {s:.2f}" for m, s in zip(mr, sr)]
             for mr, sr in zip(mean.to_numpy(), std.to_numpy())]
    return pd.DataFrame(cells, index=mean.index, columns=mean.columns)
