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

import contextlib
import importlib
import inspect
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from openood.evaluation_api import datasets as oo_datasets
from openood.evaluation_api import postprocessor as eval_pp

from um_plugin.core.distributed import strip_ddp_prefix
from um_plugin.leaderboard.provenance import data_identity, versions
from um_plugin.leaderboard.runs import Model, trainer_settings
from um_plugin.leaderboard.table import row_from_tables, write_atomic
from um_plugin.workers import default_workers

from um_plugin.openood.evaluation import score_cache
from um_plugin.openood.registry.dataset_file import register_benchmark_file
from um_plugin.openood.cpu import enable_cpu_fallback
from um_plugin.openood.registry.config_discovery import base_config_candidates, config_roots
from um_plugin.openood.registry.names import is_method_name, known_postprocessor_names, split_name
from um_plugin.openood.evaluation.postprocessor_config import ResolvedPostprocessor, build, resolve_all
from um_plugin.openood.evaluation.sweep_report import add_chosen, save_search_tables, sweep_from_flags
from um_plugin.openood.registry.networks import NETWORKS
from um_plugin.openood.registry.wrapping import original

# eval_ood.py's networks for OpenOOD's own ID sets; anything else needs --network
DEFAULT_NETWORK = {"cifar10": "resnet18_32x32", "cifar100": "resnet18_32x32",
                   "imagenet200": "resnet18_224x224", "imagenet": "resnet50"}


@dataclass
class Plan:
    """Everything :func:`score_all` needs, validated by :func:`plan`."""
    models: List[Model]
    postprocessors: List[ResolvedPostprocessor]
    id_name: str
    data_root: str
    config_root: str
    make_net: Callable[[], torch.nn.Module]
    device: str
    benchmark: str           # the benchmark's identity hash
    batch_size: int = 200
    num_workers: int = default_workers()  # 4, at most the CPUs available
    fsood: bool = False
    save_score: bool = False
    sweep: dict = field(default_factory=dict)  # --sweep: in each of our configs (and hash)


def openood_network_names() -> List[str]:
    """The names ``openood.networks.get_network`` builds (read from its source), and ours."""
    from openood.networks import utils as net_utils
    return sorted(set(re.findall(r"network_config\.name\s*==\s*'([\w-]+)'",
                                 inspect.getsource(original(net_utils.get_network))))
                  | set(NETWORKS))


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


def benchmark_identity(id_name: str, data_root: str, fsood: bool) -> str:
    """A hash of the benchmark's image lists, of every listed file's name and size, of its
    class count and test preprocessing: rows and caches of other data never mix."""
    from openood.evaluation_api.preprocessor import default_preprocessing_dict
    info = oo_datasets.DATA_INFO[id_name]
    leaves = [info["id"]["train"], info["id"]["val"], info["id"]["test"], info["ood"]["val"]]
    groups = [info["ood"]["near"], info["ood"]["far"]] + ([info["csid"]] if fsood else [])
    leaves += [group[name] for group in groups for name in group["datasets"]]
    lists = [os.path.join(data_root, leaf["imglist_path"]) for leaf in leaves]
    roots = {path: os.path.join(data_root, leaf["data_dir"]) for path, leaf in zip(lists, leaves)}
    extra = {"num_classes": info["num_classes"], "fsood": fsood,
             "preprocessing": default_preprocessing_dict.get(id_name)}
    return data_identity(lists, roots, extra)


def _output_size(net: torch.nn.Module, id_name: str) -> Optional[int]:
    """The network's number of outputs on one image of the benchmark's size (None if unknown)."""
    from openood.evaluation_api.preprocessor import default_preprocessing_dict
    size = (default_preprocessing_dict.get(id_name) or {}).get("img_size")
    if size is None:
        return None
    device = next(net.parameters()).device
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def plan(args) -> Plan:
    """Check what needs OpenOOD (benchmark, data, postprocessors, network, classes), then
    load every checkpoint strictly; no scoring. One-line ValueErrors. The caller has checked
    the device (``um_plugin.cli.common.check_device``: without a GPU, ``args.cpu``)."""
    if args.cpu:  # importing this package registered um / umap with OpenOOD
        enable_cpu_fallback()
    data_root, id_name = args.data_root, args.id_data
    if args.benchmark is not None:
        kwargs = register_benchmark_file(args.benchmark)
        if id_name is not None and id_name != kwargs["name"]:
            raise ValueError(f"--id-data {id_name!r} differs from --benchmark's name "
                             f"{kwargs['name']!r}; leave --id-data out")
        if data_root is not None and os.path.abspath(data_root) != kwargs["data_root"]:
            raise ValueError(f"--data-root {data_root!r} differs from --benchmark's data_root "
                             f"{kwargs['data_root']!r}; leave --data-root out")
        id_name, data_root = kwargs["name"], kwargs["data_root"]
    data_root = os.path.abspath(data_root or "./data")
    check_data(id_name, data_root, args.fsood)
    config_root = args.config_root or default_config_root()
    if config_root is None or not os.path.isdir(os.path.join(config_root, "postprocessors")):
        raise ValueError(f"--config-root {config_root!r} has no postprocessors/ folder; pass "
                         "OpenOOD's configs/ (or set $UM_PLUGIN_OPENOOD_ROOT to a checkout)")
    for name in args.postprocessors:
        check_postprocessor(name, config_root)
    sweep = sweep_from_flags(args.sweep, args.postprocessors)
    resolved = resolve_all(args.postprocessors, config_root, id_name, args.overrides,
                           args.batch_size, sweep)
    classes = oo_datasets.DATA_INFO[id_name]["num_classes"]
    if args.num_classes is not None and args.num_classes != classes:
        raise ValueError(f"--num-classes {args.num_classes}: benchmark {id_name!r} has {classes} "
                         "classes; a network with another output size cannot be scored on it")
    network = args.network or DEFAULT_NETWORK.get(id_name)
    if network is None:
        raise ValueError(f"--network is needed for benchmark {id_name!r} (an OpenOOD network "
                         "name such as lenet, or module:Class)")
    device = "cpu" if args.cpu else "cuda"
    make_net = network_factory(network, classes, device)
    outputs = _output_size(make_net(), id_name)
    if outputs is not None and outputs != classes:
        raise ValueError(f"--network {network!r} has {outputs} outputs; benchmark {id_name!r} "
                         f"has {classes} classes")
    identity = benchmark_identity(id_name, data_root, args.fsood)
    for model in args.models:  # every checkpoint fits, before any scoring
        for path in model.checkpoints:
            load_weights(make_net(), path)
    return Plan(models=args.models, postprocessors=resolved, id_name=id_name,
                data_root=data_root, config_root=config_root, make_net=make_net, device=device,
                benchmark=identity, batch_size=args.batch_size, num_workers=args.num_workers,
                fsood=args.fsood, save_score=args.save_score, sweep=sweep)


def score_one(plan: Plan, checkpoint: str, sha256: str, pp: ResolvedPostprocessor):
    """OpenOOD's metrics table for one checkpoint and postprocessor (``Evaluator.eval_ood``),
    and the cache notes. As eval_ood.py, cached postprocessors / scores in the run folder are
    reused, but only those made from the same checkpoint bytes, config and benchmark; with
    ``save_score`` they are (re)written."""
    from openood.evaluation_api import Evaluator
    run, notes = os.path.dirname(checkpoint), []
    key = {"checkpoint_sha256": sha256, "config_sha256": pp.sha256, "benchmark": plan.benchmark}
    cached_pp, why = score_cache.load(run, "postprocessors", pp.name, key)
    scores, why_scores = score_cache.load(run, "scores", pp.name, key)
    notes += [n for n in (why, why_scores) if n]
    net = load_weights(plan.make_net(), checkpoint).to(plan.device).eval()
    evaluator = Evaluator(net, id_name=plan.id_name, data_root=plan.data_root,
                          config_root=plan.config_root, preprocessor=None,
                          postprocessor_name=pp.name, postprocessor=cached_pp or build(pp),
                          batch_size=plan.batch_size, shuffle=False,
                          num_workers=plan.num_workers)
    if scores is not None:
        _merge(evaluator.scores, scores)
    table = evaluator.eval_ood(fsood=plan.fsood, progress=False)
    post = evaluator.postprocessor  # a UM sweep's choice and table, for the row and a CSV
    table.attrs["chosen"] = getattr(post, "chosen_values", dict)()
    table.attrs["search_table"] = getattr(post, "search_table", [])
    if plan.save_score:
        if cached_pp is None and (hasattr(post, "setup_flag") or post.hyperparam_search_done):
            notes.append(score_cache.store(run, "postprocessors", pp.name, post, key))
        notes.append(score_cache.store(run, "scores", pp.name, evaluator.scores, key))
    return table, [n for n in notes if n]


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def score_all(plan: Plan, *, verbose: bool = False, out: Optional[str] = None,
              save_csv: bool = False) -> list:
    """Score every (model, run, postprocessor); write OpenOOD's per-model CSVs (folders made
    before scoring); return the leaderboard rows with their provenance."""
    task = "fsood" if plan.fsood else "ood"
    folders = {}
    for model in plan.models:
        folders[model.name] = ([os.path.join(model.csv_dir, task)] if save_csv else []) + (
            [os.path.join(out, model.name, task)] if out is not None else [])
        for folder in folders[model.name]:
            os.makedirs(folder, exist_ok=True)
    log = io.StringIO()  # OpenOOD's prints and inner progress bars, unless verbose
    jobs = [(m, i, p) for m in plan.models for p in plan.postprocessors
            for i in range(len(m.checkpoints))]
    tables = {}
    with tqdm(jobs, desc="um-openood eval", unit="run", file=sys.stderr) as bar:
        for model, i, pp in bar:
            checkpoint = model.checkpoints[i]
            bar.set_postfix_str(f"{model.name} {pp.name}", refresh=True)
            with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if not verbose:
                    stack.enter_context(contextlib.redirect_stdout(log))
                    stack.enter_context(contextlib.redirect_stderr(log))
                table, notes = score_one(plan, checkpoint, model.sha256[i], pp)
            shown = dict.fromkeys(notes + [f"{w.category.__name__}: {w.message}" for w in caught
                                           if not issubclass(w.category, DeprecationWarning)])
            for line in shown:  # cache decisions, FitCheckWarning: above the bar, once per run
                bar.write(f"{model.name} {pp.name} {os.path.relpath(checkpoint)}: {line}",
                          file=sys.stderr)
            tables.setdefault((model.name, pp.name), []).append(table)
    rows, made_with = [], versions()
    for model in plan.models:
        for pp in plan.postprocessors:
            mean, std = mean_std(tables[(model.name, pp.name)])
            text = openood_csv_table(mean, std).to_csv()
            for folder in folders[model.name]:
                write_atomic(os.path.join(folder, f"{pp.name}.csv"), text)
                save_search_tables(os.path.join(folder, f"{pp.name}_search.csv"),
                                   tables[(model.name, pp.name)])
            trained = dict.fromkeys(filter(None, (trainer_settings(os.path.dirname(c))
                                                  for c in model.checkpoints)))
            settings = "; ".join(([f"{pp.name}: {pp.settings}"] if pp.settings else [])
                                 + list(trained))
            provenance = {"checkpoint_sha256": ";".join(model.sha256),
                          "config_sha256": pp.sha256, "settings": settings,
                          "benchmark": plan.benchmark, "versions": made_with,
                          "checkpoints": list(model.checkpoints)}
            rows.append(add_chosen(row_from_tables(model.name, pp.name, len(model.checkpoints),
                                                   mean, std, provenance),
                                   tables[(model.name, pp.name)]))
    if out is not None and not verbose:
        write_atomic(os.path.join(out, "eval.log"), log.getvalue())
    return rows

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
