"""um-openood: run OpenOOD's own scripts unchanged with UM / UMAP registered.

    um-openood run [--cpu] main.py --config ... train_umap.yml ...
    um-openood run [--cpu] scripts/eval_ood.py --root results/... --postprocessor umap_ebo
    um-openood install-configs <OpenOOD>/configs      # copy our YAMLs into OpenOOD's tree
    um-openood configs                                # print where the shipped YAMLs are
    um-openood dataset-config NAME --data-root DIR --num-classes N --image-size S --out FILE
    um-openood eval --root results/<exp> --postprocessor msp,ebo [--benchmark FILE] ...
    um-openood gate leaderboard.csv --baseline stored.csv --tolerance 1

Every argument is checked before any work; a bad one ends the command with one line
"um-openood: error: ..." and exit code 2. For a script that reads its config like main.py,
that includes the config: OpenOOD's own reader on the same arguments, then the um / umap
options, before the script creates its output folder.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from um_plugin import cli_eval
from um_plugin.cli_eval import check_device, positive_int
from um_plugin.shipped import configs_root, install_configs, shipped_configs

PROG = "um-openood"
# um_plugin.openood is imported inside the functions that use it: it imports OpenOOD, which the
# parser, --help, install-configs and the one-line "OpenOOD is missing" error must not need.


def prepare_run(cpu: bool = False) -> None:
    """Register um/umap with OpenOOD and, with ``cpu``, make its ``.cuda()`` calls no-ops."""
    import um_plugin.openood  # noqa: F401  registers on import (OpenOOD is optional)
    if cpu:
        from um_plugin.openood.cpu import enable_cpu_fallback
        enable_cpu_fallback()


def run_script(script: str, args: list, cpu: bool = False) -> None:
    """Run an OpenOOD script as ``__main__`` in this process, plug-in registered."""
    if not os.path.isfile(script):
        raise FileNotFoundError(f"script {script!r} not found (cwd {os.getcwd()!r}); run from "
                                "your OpenOOD checkout or pass the script's path")
    prepare_run(cpu)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` does
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an OpenOOD script with um/umap registered")
    run.add_argument("--cpu", action="store_true",
                     help="make OpenOOD's .cuda() calls no-ops (machines without a GPU)")
    run.add_argument("script", help="e.g. main.py or scripts/eval_ood.py")
    run.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script unchanged")
    inst = sub.add_parser("install-configs", help="copy our YAMLs into an OpenOOD configs/ tree")
    inst.add_argument("dest", help="OpenOOD's configs/ folder")
    inst.add_argument("--force", action="store_true", help="overwrite differing files")
    sub.add_parser("configs", help="print the folder of the shipped YAMLs and their names")
    ds = sub.add_parser(
        "dataset-config", help="write the dataset YAML main.py needs for an offline benchmark",
        description="Write the dataset: YAML OpenOOD's main.py reads, for a benchmark in "
                    "OpenOOD's on-disk layout (the one register_benchmark takes): image lists "
                    "<data-root>/benchmark_imglist/NAME/{train,val,test}_NAME.txt unless given, "
                    "images under <data-root>/<data-dir>.")
    ds.add_argument("name", help="the benchmark's name (dataset.name)")
    ds.add_argument("--data-root", required=True, help="folder holding benchmark_imglist/")
    ds.add_argument("--out", required=True, help="YAML file to write")
    ds.add_argument("--num-classes", type=positive_int, required=True)
    ds.add_argument("--image-size", type=positive_int, required=True,
                    help="centre crop size (register_benchmark's image_size)")
    ds.add_argument("--pre-size", type=positive_int, default=None,
                    help="resize before the crop (default: image size)")
    ds.add_argument("--data-dir", default="images_classic/",
                    help="image folder relative to the data root (default: images_classic/)")
    for split in ("train", "val", "test"):
        ds.add_argument(f"--{split}", default=None, metavar="IMGLIST",
                        help=f"{split} image list relative to the data root "
                             f"(default: benchmark_imglist/NAME/{split}_NAME.txt)")
    ds.add_argument("--normalization", default="default", metavar="TYPE",
                    help="'default' (mean = std = 0.5) or a name in OpenOOD's normalization_dict")
    ds.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    cli_eval.add_parsers(sub)  # eval, gate; dataset-config's --benchmark-out
    return parser


def _check(args) -> None:
    """Raise ValueError (one line) for an argument that cannot work, before any work."""
    if args.command == "run":
        if not os.path.isfile(args.script):
            raise ValueError(f"script {args.script!r} not found (cwd {os.getcwd()!r}); run from "
                             "your OpenOOD checkout or pass the script's path")
        check_device(args.cpu)
    if args.command == "install-configs" and not os.path.isdir(args.dest):
        raise ValueError(f"{args.dest!r} is not a folder; pass OpenOOD's configs/ directory")
    if args.command == "dataset-config":
        if not os.path.isdir(os.path.join(args.data_root, "benchmark_imglist")):
            raise ValueError(f"--data-root {args.data_root!r} has no benchmark_imglist/ folder")
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r} is a folder; pass the YAML file to write")
        cli_eval.check_benchmark_out(args)


def _dataset_config(args) -> str:
    from um_plugin.openood.benchmarks import (DEFAULT_NORMALIZATION, dataset_config,
                                              normalization_by_name, save_yaml)
    lists = {split: getattr(args, split) or f"benchmark_imglist/{args.name}/{split}_{args.name}.txt"
             for split in ("train", "val", "test")}
    normalization = (DEFAULT_NORMALIZATION if args.normalization == "default"
                     else normalization_by_name(args.normalization))
    config = dataset_config(args.name, args.data_root, num_classes=args.num_classes,
                            id_train=lists["train"], id_val=lists["val"], id_test=lists["test"],
                            data_dir=args.data_dir, image_size=args.image_size,
                            pre_size=args.pre_size, normalization=normalization,
                            batch_size=args.batch_size)
    written = save_yaml(config, args.out, f"benchmark {args.name!r} under "
                                          f"{os.path.abspath(args.data_root)}")
    if args.benchmark_out is not None:
        written += "\n" + cli_eval.write_benchmark_out(args)
    return written


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    if args.command in cli_eval.COMMANDS:
        return cli_eval.main(args, _error)
    try:
        _check(args)
        if args.command == "run":
            prepare_run(args.cpu)
            from um_plugin.openood.script_config import check_script_config
            check_script_config(args.script, args.args)
        elif args.command == "install-configs":
            for path in install_configs(args.dest, force=args.force):
                print(path)
        elif args.command == "dataset-config":
            print(_dataset_config(args))
        else:
            print(configs_root())
            for rel in shipped_configs():
                print("  " + rel)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        return _error(str(exc))
    if args.command == "run":  # the script's own errors are its own: not caught above
        from um_plugin.openood.options import RouteStop
        try:
            run_script(args.script, args.args, cpu=args.cpu)
        except RouteStop as exc:  # e.g. the fit check: the run stopped before any training
            return _error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
