"""Benchmarks live in benchmarks/ and are never installed: the package is the method and its adapter."""
import ast
import configparser
import pathlib

from setuptools import find_packages

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_only_um_plugin_is_packaged_and_only_um_openood_is_a_console_script():
    cfg = _setup_cfg()
    include = cfg["options.packages.find"]["include"].replace(",", " ").split()
    packages = find_packages(str(ROOT), include=include)
    assert packages and all(p == "um_plugin" or p.startswith("um_plugin.") for p in packages)
    assert "benchmarks" in find_packages(str(ROOT))  # it exists, it is just not included
    scripts = [line.split("=")[0].strip() for line in
               cfg["options.entry_points"]["console_scripts"].strip().splitlines()]
    assert scripts == ["um-openood"]


def test_um_plugin_never_imports_the_benchmarks():
    for path in (ROOT / "um_plugin").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            assert not any(n == "benchmarks" or n.startswith("benchmarks.") for n in names), path
