"""``um-openood install-configs DEST``: copy the shipped YAMLs into OpenOOD's configs/ tree."""
from __future__ import annotations

import os

from .common import CommandError


def add_parser(sub) -> None:
    inst = sub.add_parser("install-configs", help="copy our YAMLs into an OpenOOD configs/ tree")
    inst.add_argument("dest", help="OpenOOD's configs/ folder")
    inst.add_argument("--force", action="store_true", help="overwrite differing files")


def check(args) -> None:
    if not os.path.isdir(args.dest):
        raise ValueError(f"{args.dest!r} is not a folder; pass OpenOOD's configs/ directory")


def run(args) -> int:
    from um_plugin.shipped import install_configs
    try:
        written = install_configs(args.dest, force=args.force)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for path in written:
        print(path)
    return 0
