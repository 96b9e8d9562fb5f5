"""``um-openood``: run OpenOOD's own scripts unchanged with UM / UMAP registered.

    um-openood run [--cpu] main.py --config ... train_umap.yml ...
    um-openood run [--cpu] scripts/eval_ood.py --root results/... --postprocessor umap_ebo
    um-openood install-configs <OpenOOD>/configs      # copy our YAMLs into OpenOOD's tree
    um-openood configs                                # print where the shipped YAMLs are
"""
from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys
from importlib import resources


def configs_root() -> str:
    """Folder of the shipped YAMLs (``train_*.yml``, ``postprocessors/*.yml``)."""
    return str(resources.files("um_plugin").joinpath("openood", "configs"))


def shipped_configs() -> list:
    """Paths of the shipped YAMLs, relative to :func:`configs_root`."""
    root = configs_root()
    out = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".yml"):
                out.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(out)


def openood_destination(rel: str) -> str:
    """Where a shipped YAML goes in OpenOOD's tree: pipeline configs under pipelines/train/."""
    if os.path.dirname(rel) == "" and os.path.basename(rel).startswith("train_"):
        return os.path.join("pipelines", "train", rel)
    return rel


def install_configs(dest: str, force: bool = False) -> list:
    """Copy the shipped YAMLs into an OpenOOD ``configs/`` tree; return the written paths.

    ``train_um[ap].yml`` land in ``pipelines/train/``, ``um[ap].yml`` in ``postprocessors/``.

    Refuses to overwrite a different existing file unless ``force``.
    """
    if not os.path.isdir(dest):
        raise FileNotFoundError(f"{dest!r} is not a folder; pass OpenOOD's configs/ directory")
    written = []
    for rel in shipped_configs():
        src, target = os.path.join(configs_root(), rel), os.path.join(dest, openood_destination(rel))
        if os.path.exists(target) and not force:
            with open(src, "rb") as a, open(target, "rb") as b:
                if a.read() == b.read():
                    continue
            raise FileExistsError(f"{target!r} exists and differs from the shipped {rel}; "
                                  "pass --force to overwrite it")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(src, target)
        written.append(target)
    return written


def run_script(script: str, args: list, cpu: bool = False) -> None:
    """Run an OpenOOD script as ``__main__`` in this process, plug-in registered."""
    if not os.path.isfile(script):
        raise FileNotFoundError(f"script {script!r} not found (cwd {os.getcwd()!r}); run from "
                                "your OpenOOD checkout or pass the script's path")
    import um_plugin.openood  # noqa: F401  registers on import
    if cpu:
        from um_plugin.openood.cpu import enable_cpu_fallback
        enable_cpu_fallback()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` does
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="um-openood", description=__doc__.split("\n\n")[0])
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
    return parser


def main(argv=None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        run_script(args.script, args.args, cpu=args.cpu)
    elif args.command == "install-configs":
        for path in install_configs(args.dest, force=args.force):
            print(path)
    else:
        print(configs_root())
        for rel in shipped_configs():
            print("  " + rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
