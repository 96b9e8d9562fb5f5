"""Benchmarks live in benchmarks/ and are never installed: the package is the method and its adapter."""
import ast
import configparser
import os
import pathlib
import subprocess
import sys

import pytest
from setuptools import find_packages

from bench_helpers import one_line

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


@pytest.mark.slow
@pytest.mark.parametrize("module, bad", [
    ("benchmarks.embedded", ["--keep-ratio", "2"]),
    ("benchmarks.cost", ["--threads", "-1"]),
    ("benchmarks.repro", ["cifar10", "--xi", "-1"]),
])
def test_entry_points_run_from_the_checkout(module, bad, tmp_path):
    """``python -m benchmarks.<x>`` works from the repository root; a bad argument is one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "usage: python -m " + module in ok.stdout, ok.stderr
    out = ["--out", str(tmp_path / "o")] + (["--data-root", str(tmp_path)] if "repro" in module else [])
    res = subprocess.run([sys.executable, "-m", module, *bad, *out], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    one_line(res.stderr, prefix=f"python -m {module}: error: ")
