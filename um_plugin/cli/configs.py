"""``um-openood configs``: print the folder of the shipped YAMLs and their names."""
from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("configs", help="print the folder of the shipped YAMLs and their names")


def check(args) -> None:
    """Nothing to check."""


def run(args) -> int:
    from um_plugin.shipped import configs_root, shipped_configs
    print(configs_root())
    for rel in shipped_configs():
        print("  " + rel)
    return 0
