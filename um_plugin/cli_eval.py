"""``um-openood eval`` / ``um-openood gate``: leaderboard rows and CI gates for any benchmark.

    um-openood eval --root results/<exp> [more roots] --postprocessor msp,ebo,um_ebo \
        [--benchmark bench.yml | --id-data cifar10] [--network lenet | module:Class] [--cpu] \
        [--out DIR] [--save-csv] [--baseline leaderboard.csv --tolerance 1]
    um-openood gate leaderboard.csv --baseline stored.csv --tolerance 1

Kept apart from ``cli.py`` (the parser is built without importing OpenOOD); the work is in
``um_plugin.openood.evaluate`` (scoring) and ``um_plugin.openood.leaderboard`` (table, gate).
Exit codes: 0 done (gate passed), 1 the gate found a metric that fell, 2 a bad argument.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import warnings

# um_plugin.openood is imported inside the functions that use it: it imports OpenOOD, which
# the parser and `um-openood --help` must not need.
COMMANDS = ("eval", "gate")
# eval_ood.py's networks for OpenOOD's own ID sets; anything else needs --network
DEFAULT_NETWORK = {"cifar10": "resnet18_32x32", "cifar100": "resnet18_32x32",
                   "imagenet200": "resnet18_224x224", "imagenet": "resnet50"}


def check_device(cpu: bool) -> None:
    """OpenOOD calls ``.cuda()`` unconditionally (its scripts, trainers, Evaluator): without a
    GPU, ``run`` and ``eval`` need ``--cpu``."""
    import torch  # keeps `um-openood --help` fast
    if not cpu and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is available (torch.cuda.is_available() is False) and "
                         "OpenOOD calls .cuda(); add --cpu to run on the CPU")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _points(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of points >= 0, got {text!r}")
    return value


def _gate_arguments(p):
    p.add_argument("--baseline", metavar="CSV", default=None,
                   help="stored leaderboard.csv; exit 1 when a metric fell by more than "
                        "--tolerance (its columns decide what is gated)")
    p.add_argument("--tolerance", type=_points, default=1.0, metavar="POINTS",
                   help="allowed fall in percentage points (default 1)")


def add_parsers(sub) -> None:
    """Add the ``eval`` and ``gate`` verbs, and ``dataset-config``'s ``--benchmark-out``."""
    ev = sub.add_parser(
        "eval", help="OpenOOD leaderboard evaluation for any benchmark and network",
        description="Score every s*/best.ckpt under each --root (or a checkpoint file) with "
                    "OpenOOD's Evaluator, for each postprocessor; print the leaderboard table "
                    "(mean and std over the run folders).")
    ev.add_argument("--root", nargs="+", required=True, metavar="PATH",
                    help="run folder(s) holding s* seed folders, or checkpoint file(s)")
    ev.add_argument("--postprocessor", default="msp", metavar="NAMES",
                    help="comma-separated, e.g. msp,ebo,um_ebo (default msp)")
    ev.add_argument("--id-data", default=None, metavar="NAME",
                    help="ID benchmark name the Evaluator knows (default: --benchmark's name)")
    ev.add_argument("--benchmark", default=None, metavar="FILE",
                    help="YAML of register_benchmark's arguments, registered before scoring")
    ev.add_argument("--network", default=None, metavar="NAME",
                    help="OpenOOD network name (lenet, resnet18_32x32, ...) or module:Class "
                         "(default: eval_ood.py's for cifar10/cifar100/imagenet200/imagenet)")
    ev.add_argument("--num-classes", type=positive_int, default=None,
                    help="network's classes (default: the benchmark's)")
    ev.add_argument("--checkpoint-name", default="best.ckpt",
                    help="checkpoint file in each s* folder (default best.ckpt)")
    ev.add_argument("--batch-size", type=positive_int, default=200)
    ev.add_argument("--num-workers", type=int, default=4, help="data loader workers (default 4)")
    ev.add_argument("--data-root", default=None,
                    help="folder holding benchmark_imglist/ (default: --benchmark's, else ./data)")
    ev.add_argument("--config-root", default=None,
                    help="OpenOOD's configs/ (default: found as the plug-in finds it)")
    ev.add_argument("--save-csv", action="store_true",
                    help="write <root>/ood/<postprocessor>.csv as eval_ood.py does")
    ev.add_argument("--save-score", action="store_true",
                    help="pickle the scores to <run>/scores/<postprocessor>.pkl")
    ev.add_argument("--fsood", action="store_true", help="full-spectrum OOD (csid sets as ID)")
    ev.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU present)")
    ev.add_argument("--out", default=None, metavar="DIR",
                    help="write leaderboard.csv / .md and <model>/ood/<postprocessor>.csv here")
    ev.add_argument("--sort-by", default="near_AUROC", metavar="COLUMN",
                    help="leaderboard order, e.g. near_AUROC (default), far_FPR@95, ID_ACC")
    ev.add_argument("--verbose", action="store_true",
                    help="show OpenOOD's own output (else it goes to <out>/eval.log)")
    _gate_arguments(ev)
    gt = sub.add_parser("gate", help="compare a leaderboard.csv with a stored one (CI)",
                        description="Exit 1 with one line per metric that fell by more than "
                                    "--tolerance points, 0 otherwise.")
    gt.add_argument("csv", help="leaderboard.csv of this run")
    _gate_arguments(gt)
    ds = sub.choices.get("dataset-config")
    if ds is not None:
        ds.add_argument("--benchmark-out", default=None, metavar="FILE",
                        help="also write the register_benchmark YAML um-openood eval "
                             "--benchmark reads (needs --ood-val, --near, --far)")
        ds.add_argument("--ood-val", default=None, metavar="IMGLIST",
                        help="OOD validation list (default benchmark_imglist/NAME/val_ood.txt)")
        for group in ("near", "far"):
            ds.add_argument(f"--{group}", default=None, metavar="SET[=IMGLIST],...",
                            help=f"{group}-OOD sets (imglist default "
                                 "benchmark_imglist/NAME/test_SET.txt)")


def _ood_sets(text, name, flag):
    sets = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, _, imglist = part.partition("=")
        if not key or key in sets:
            raise ValueError(f"--{flag} {text!r}: empty or repeated set name {key!r}")
        sets[key] = imglist or f"benchmark_imglist/{name}/test_{key}.txt"
    if not sets:
        raise ValueError(f"--benchmark-out needs --{flag} SET[=IMGLIST],...")
    return sets


def _benchmark_kwargs(args) -> dict:
    """register_benchmark's arguments for ``dataset-config``'s benchmark; every list checked."""
    from um_plugin.openood.benchmarks import DEFAULT_NORMALIZATION, normalization_by_name
    lists = {split: getattr(args, split) or f"benchmark_imglist/{args.name}/{split}_{args.name}.txt"
             for split in ("train", "val", "test")}
    kwargs = dict(name=args.name, data_root=args.data_root, num_classes=args.num_classes,
                  id_train=lists["train"], id_val=lists["val"], id_test=lists["test"],
                  ood_val=args.ood_val or f"benchmark_imglist/{args.name}/val_ood.txt",
                  near_ood=_ood_sets(args.near, args.name, "near"),
                  far_ood=_ood_sets(args.far, args.name, "far"), data_dir=args.data_dir,
                  image_size=args.image_size, pre_size=args.pre_size,
                  normalization=(DEFAULT_NORMALIZATION if args.normalization == "default"
                                 else normalization_by_name(args.normalization)))
    named = [(key, kwargs[key]) for key in ("id_train", "id_val", "id_test", "ood_val")]
    named += [(f"{group}[{set_name!r}]", imglist) for group in ("near_ood", "far_ood")
              for set_name, imglist in kwargs[group].items()]
    for what, imglist in named:
        if not os.path.isfile(os.path.join(args.data_root, imglist)):
            raise ValueError(f"--benchmark-out: {what} image list {imglist!r} does not exist "
                             f"under --data-root {args.data_root!r}")
    return kwargs


def check_benchmark_out(args) -> None:
    """Argument checks for ``dataset-config --benchmark-out`` (before anything is written)."""
    if getattr(args, "benchmark_out", None) is None:
        return
    if os.path.isdir(args.benchmark_out):
        raise ValueError(f"--benchmark-out {args.benchmark_out!r} is a folder; pass a YAML file")
    _benchmark_kwargs(args)


def write_benchmark_out(args) -> str:
    """``dataset-config --benchmark-out``: the register_benchmark YAML for the same benchmark."""
    from um_plugin.openood.benchmark_file import write_benchmark_file
    return write_benchmark_file(_benchmark_kwargs(args), args.benchmark_out)


class _Prepared:
    def __init__(self, plan=None, baseline=None, args=None):
        self.plan, self.baseline, self.args = plan, baseline, args


def _read_baseline(args):
    if args.baseline is None:
        return None
    from um_plugin.openood.leaderboard import read_csv
    return read_csv(args.baseline)


def prepare(args) -> _Prepared:
    """Check every argument (one-line ValueError) and register what scoring needs; no scoring."""
    if args.command == "gate":
        from um_plugin.openood.leaderboard import read_csv
        if args.baseline is None:
            raise ValueError("gate needs --baseline CSV")
        return _Prepared(plan=read_csv(args.csv), baseline=read_csv(args.baseline), args=args)
    check_device(args.cpu)
    import um_plugin.openood  # noqa: F401  registers um / umap with OpenOOD
    from um_plugin.openood import evaluate as ev
    from um_plugin.openood.leaderboard import sort_columns
    if args.cpu:
        from um_plugin.openood.cpu import enable_cpu_fallback
        enable_cpu_fallback()
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.sort_by not in sort_columns():
        raise ValueError(f"--sort-by {args.sort_by!r} is not a leaderboard column; use one of "
                         f"{sort_columns()}")
    if args.out is not None and os.path.isfile(args.out):
        raise ValueError(f"--out {args.out!r} is a file; pass a folder")
    baseline = _read_baseline(args)
    data_root = args.data_root
    id_name = args.id_data
    if args.benchmark is not None:
        from um_plugin.openood.benchmark_file import register_benchmark_file
        kwargs = register_benchmark_file(args.benchmark)
        if id_name is not None and id_name != kwargs["name"]:
            raise ValueError(f"--id-data {id_name!r} differs from --benchmark's name "
                             f"{kwargs['name']!r}; leave --id-data out")
        if data_root is not None and os.path.abspath(data_root) != kwargs["data_root"]:
            raise ValueError(f"--data-root {data_root!r} differs from --benchmark's data_root "
                             f"{kwargs['data_root']!r}; leave --data-root out")
        id_name, data_root = kwargs["name"], kwargs["data_root"]
    if id_name is None:
        raise ValueError("pass --id-data NAME (a benchmark the Evaluator knows) or --benchmark FILE")
    data_root = data_root or "./data"
    ev.check_data(id_name, data_root, args.fsood)
    config_root = args.config_root or ev.default_config_root()
    if config_root is None or not os.path.isdir(os.path.join(config_root, "postprocessors")):
        raise ValueError(f"--config-root {config_root!r} has no postprocessors/ folder; pass "
                         "OpenOOD's configs/ (or set $UM_PLUGIN_OPENOOD_ROOT to a checkout)")
    names = [n.strip() for n in args.postprocessor.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--postprocessor {args.postprocessor!r}: names must be non-empty and "
                         "distinct, comma-separated")
    for name in names:
        ev.check_postprocessor(name, config_root)
    models = [ev.model_from_root(root, args.checkpoint_name) for root in args.root]
    seen = {}
    for model in models:
        if model.name in seen:
            raise ValueError(f"--root {seen[model.name]!r} and {model.root!r} both give model "
                             f"name {model.name!r}; rename one folder")
        seen[model.name] = model.root
    from openood.evaluation_api.datasets import DATA_INFO
    num_classes = args.num_classes or DATA_INFO[id_name]["num_classes"]
    network = args.network or DEFAULT_NETWORK.get(id_name)
    if network is None:
        raise ValueError(f"--network is needed for benchmark {id_name!r} (an OpenOOD network "
                         "name such as lenet, or module:Class)")
    device = "cpu" if args.cpu else "cuda"
    make_net = ev.network_factory(network, num_classes, device)
    for model in models:  # every checkpoint fits, before any scoring
        for path in model.checkpoints:
            ev.load_weights(make_net(), path)
    plan = ev.Plan(models=models, postprocessors=names, id_name=id_name,
                   data_root=os.path.abspath(data_root), config_root=config_root,
                   make_net=make_net, device=device, batch_size=args.batch_size,
                   num_workers=args.num_workers, fsood=args.fsood, save_score=args.save_score)
    return _Prepared(plan, baseline, args)


def score(prepared) -> list:
    """Score every (model, run, postprocessor); write the CSVs; return the leaderboard rows."""
    from tqdm.auto import tqdm

    from um_plugin.openood import evaluate as ev
    from um_plugin.openood.leaderboard import row_from_tables
    plan, args = prepared.plan, prepared.args
    log = io.StringIO()  # OpenOOD's prints and inner progress bars, unless --verbose
    jobs = [(m, c, p) for m in plan.models for p in plan.postprocessors for c in m.checkpoints]
    tables = {}
    with tqdm(jobs, desc="um-openood eval", unit="run", file=sys.stderr) as bar:
        for model, checkpoint, pp in bar:
            bar.set_postfix_str(f"{model.name} {pp}", refresh=True)
            quiet = contextlib.nullcontext() if args.verbose else contextlib.ExitStack()
            with quiet as stack, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if stack is not None:
                    stack.enter_context(contextlib.redirect_stdout(log))
                    stack.enter_context(contextlib.redirect_stderr(log))
                table = ev.score_one(plan, checkpoint, pp)
            shown = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught
                                  if not issubclass(w.category, DeprecationWarning))
            for line in shown:  # e.g. FitCheckWarning: shown above the bar, once per run
                bar.write(f"{model.name} {pp} {os.path.relpath(checkpoint)}: {line}",
                          file=sys.stderr)
            tables.setdefault((model.name, pp), []).append(table)
    task = "fsood" if plan.fsood else "ood"
    rows = []
    for model in plan.models:
        for pp in plan.postprocessors:
            mean, std = ev.mean_std(tables[(model.name, pp)])
            table = ev.openood_csv_table(mean, std)
            targets = []
            if args.save_csv:
                targets.append(os.path.join(model.csv_dir, task))
            if args.out is not None:
                targets.append(os.path.join(args.out, model.name, task))
            for folder in targets:
                os.makedirs(folder, exist_ok=True)
                table.to_csv(os.path.join(folder, f"{pp}.csv"))
            rows.append(row_from_tables(model.name, pp, len(model.checkpoints), mean, std))
    if args.out is not None and not args.verbose:
        with open(os.path.join(args.out, "eval.log"), "w") as f:
            f.write(log.getvalue())
    return rows


def report_gate(baseline, run_rows, tolerance) -> int:
    """Print the comparison (stdout) and each failure (stderr); 1 when something fell."""
    from um_plugin.openood.leaderboard import gate
    result = gate(baseline, run_rows, tolerance)
    print(f"gate (tolerance {tolerance:g} points):")
    for line in result.comparison + result.notes:
        print(line)
    for line in result.failures:
        print(f"um-openood: gate: {line}", file=sys.stderr)
    print("gate: passed" if result.passed else f"gate: FAILED ({len(result.failures)})")
    return 0 if result.passed else 1


def execute(prepared) -> int:
    args = prepared.args
    if args.command == "gate":
        return report_gate(prepared.baseline, prepared.plan, args.tolerance)
    from um_plugin.openood import leaderboard as lb
    rows = lb.sort_rows(score(prepared), args.sort_by)
    print(lb.to_markdown(rows), end="")
    if args.out is not None:
        for path in lb.write(rows, args.out):
            print(f"wrote {path}")
    if prepared.baseline is None:
        return 0
    run = {(r["model"], r["postprocessor"]):
           {k: v for k, v in r.items() if k not in lb.KEY and k != "runs"
            and not k.endswith(lb.STD)} for r in rows}
    return report_gate(prepared.baseline, run, args.tolerance)


def main(args, error) -> int:
    """Run ``eval`` / ``gate``; ``error(message)`` prints the one-line error and returns 2."""
    try:
        prepared = prepare(args)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        return error(str(exc))
    from um_plugin.openood.options import RouteStop
    try:
        return execute(prepared)
    except RouteStop as exc:  # e.g. um_ebo's fit check: stopped before fine-tuning
        return error(str(exc))
