"""``um-openood eval``: OpenOOD leaderboard rows for any benchmark and network, with provenance.

    um-openood eval --root results/<exp> [more roots] --postprocessor msp,ebo,um_ebo \
        [--benchmark bench.yml | --id-data cifar10] [--network lenet | module:Class] [--cpu] \
        [--set KEY=VALUE] [--sweep KEY=V1,V2] [--out DIR] [--save-csv] [--save-score] \
        [gate options]

The checks here need no torch; planning and scoring are the library's
(:mod:`um_plugin.openood.evaluation.evaluate`), the table and the gate :mod:`um_plugin.leaderboard`'s.
Exit codes: 0 done (gate passed), 1 the gate found a metric that fell, 2 a bad argument.
"""
from __future__ import annotations

import os

from um_plugin.workers import default_workers

from .common import CommandError, check_device, positive_int
from .gate import add_gate_arguments, gate_options, read_baseline, report


def add_parser(sub) -> None:
    ev = sub.add_parser(
        "eval", help="OpenOOD leaderboard evaluation for any benchmark and network",
        description="Score every s*/best.ckpt under each --root (or a checkpoint file) with "
                    "OpenOOD's Evaluator, for each postprocessor; print the leaderboard table "
                    "(mean and population std over the run folders) and what each row was "
                    "made from.")
    ev.add_argument("--root", nargs="+", required=True, metavar="PATH",
                    help="run folder(s) holding s* seed folders, or checkpoint file(s)")
    ev.add_argument("--postprocessor", default="msp", metavar="NAMES",
                    help="comma-separated, e.g. msp,ebo,um_ebo (default msp)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a postprocessor setting (postprocessor_args key, e.g. "
                         "preprocessing=test or fit_check=warn; repeatable)")
    ev.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="UM settings OpenOOD's parameter search chooses for um_*/umap_* (e.g. "
                         "loss_constraint_list=auto,0.5x,2x; repeatable; over the YAML's "
                         "postprocessor_sweep); the leaderboard's chosen column names the "
                         "choice, <out>/<model>/ood/<pp>_search.csv holds each run's search")
    ev.add_argument("--id-data", default=None, metavar="NAME",
                    help="ID benchmark name the Evaluator knows (default: --benchmark's name)")
    ev.add_argument("--benchmark", default=None, metavar="FILE",
                    help="YAML of register_benchmark's arguments, registered before scoring")
    ev.add_argument("--network", default=None, metavar="NAME",
                    help="OpenOOD network name (lenet, resnet18_32x32, ...) or module:Class "
                         "(default: eval_ood.py's for cifar10/cifar100/imagenet200/imagenet)")
    ev.add_argument("--num-classes", type=positive_int, default=None,
                    help="network's classes (default, and it must be: the benchmark's)")
    ev.add_argument("--checkpoint-name", default="best.ckpt",
                    help="checkpoint file in each s* folder (default best.ckpt)")
    ev.add_argument("--batch-size", type=positive_int, default=200)
    ev.add_argument("--num-workers", type=int, default=default_workers(),
                    help="data loader workers (default: 4, at most the CPUs available)")
    ev.add_argument("--data-root", default=None,
                    help="folder holding benchmark_imglist/ (default: --benchmark's, else ./data)")
    ev.add_argument("--config-root", default=None,
                    help="OpenOOD's configs/ (default: found as the plug-in finds it)")
    ev.add_argument("--save-csv", action="store_true",
                    help="write <root>/ood/<postprocessor>.csv as eval_ood.py does")
    ev.add_argument("--save-score", action="store_true",
                    help="cache postprocessors and scores in <run>/postprocessors|scores/ "
                         "(reused only for the same checkpoint, config and benchmark)")
    ev.add_argument("--fsood", action="store_true", help="full-spectrum OOD (csid sets as ID)")
    ev.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU present)")
    ev.add_argument("--out", default=None, metavar="DIR",
                    help="write leaderboard.csv / .json / .md and <model>/ood/<pp>.csv here")
    ev.add_argument("--sort-by", default="near_AUROC", metavar="COLUMN",
                    help="leaderboard order, e.g. near_AUROC (default), far_FPR@95, ID_ACC")
    ev.add_argument("--verbose", action="store_true",
                    help="show OpenOOD's own output (else it goes to <out>/eval.log)")
    add_gate_arguments(ev)


def _writable_folder(path: str, flag: str) -> None:
    """``path`` is, or can be made as, a folder this process can write into: a file is created
    and removed in its first existing folder (root passes every permission check, a read-only
    filesystem does not)."""
    import tempfile
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path!r}: {probe!r} is a file; pass a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".um-openood-probe"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path!r}: cannot write into {probe!r} ({exc.strerror}); pass "
                         "a folder you can write to") from None


def parse_overrides(items) -> dict:
    """``--set KEY=VALUE`` (values read as YAML: 0.1, true, test) -> {key: value}."""
    import yaml
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or key in out:
            raise ValueError(f"--set {item!r}: use KEY=VALUE once per key (e.g. --set "
                             "preprocessing=test)")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key] = text
    return out


def check(args) -> None:
    """Every check that needs neither torch nor OpenOOD; the library checks the rest."""
    from um_plugin.leaderboard.runs import model_from_root
    from um_plugin.leaderboard.table import sort_columns
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.sort_by not in sort_columns():
        raise ValueError(f"--sort-by {args.sort_by!r} is not a leaderboard column; use one of "
                         f"{sort_columns()}")
    if args.out is not None:
        _writable_folder(args.out, "--out")
    names = [n.strip() for n in args.postprocessor.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--postprocessor {args.postprocessor!r}: names must be non-empty and "
                         "distinct, comma-separated")
    args.postprocessors, args.overrides = names, parse_overrides(args.set)
    if args.benchmark is None and args.id_data is None:
        raise ValueError("pass --id-data NAME (a benchmark the Evaluator knows) or --benchmark FILE")
    if args.benchmark is not None and not os.path.isfile(args.benchmark):
        raise ValueError(f"--benchmark {args.benchmark!r} is not a file")
    args.gate_options = gate_options(args)
    args.baseline_rows = read_baseline(args)
    models = [model_from_root(root, args.checkpoint_name) for root in args.root]
    seen = {}
    for model in models:
        if model.name in seen:
            raise ValueError(f"--root {seen[model.name]!r} and {model.root!r} both give model "
                             f"name {model.name!r}; rename one folder")
        seen[model.name] = model.root
        if args.save_score or args.save_csv:
            for folder in {os.path.dirname(c) for c in model.checkpoints} | {model.csv_dir}:
                _writable_folder(folder, "--save-score/--save-csv: run folder")
    args.models = models
    check_device(args.cpu)
    from um_plugin.openood.evaluation import evaluate  # OpenOOD from here on
    args.plan = evaluate.plan(args)


def run(args) -> int:
    from um_plugin.leaderboard import table
    from um_plugin.leaderboard.table import parse_csv
    from um_plugin.openood.evaluation import evaluate
    from um_plugin.openood.settings.options import RouteStop
    for model in args.models:
        for line in model.skipped:
            print(f"um-openood eval: {line}", flush=True)
    try:
        rows = table.sort_rows(evaluate.score_all(args.plan, verbose=args.verbose,
                                                  out=args.out, save_csv=args.save_csv),
                               args.sort_by)
    except RouteStop as exc:  # e.g. um_ebo's fit check: stopped before fine-tuning
        raise CommandError(str(exc)) from None
    print(table.to_markdown(rows), end="")  # shown before any write: never lost
    if args.out is not None:
        try:
            for path in table.write(rows, args.out):
                print(f"wrote {path}")
        except OSError as exc:
            raise CommandError(f"--out {args.out!r}: the leaderboard above could not be "
                               f"written ({exc.strerror}: {exc.filename})") from None
    if args.baseline is None and args.versus is None:
        return 0
    return report(parse_csv(table.to_csv(rows), "this run's leaderboard"), args.baseline_rows,
                  args.gate_options)
