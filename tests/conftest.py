"""Shared fixtures: the OpenOOD gate (skip, or fail under UM_PLUGIN_REQUIRE_OPENOOD=1) and tiny benchmarks."""
import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from openood_fixtures import REQUIRE_ENV, make_tiny_benchmark, openood_checkout  # noqa: E402


def _missing(reason):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, but {REQUIRE_ENV}=1 requires the OpenOOD integration tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def oo():
    """OpenOOD, with um/umap registered; skips (or fails, under the env switch) without it."""
    try:
        importlib.import_module("openood")
    except ImportError as exc:
        _missing(f"OpenOOD is not importable ({exc})")
    return importlib.import_module("um_plugin.openood")


@pytest.fixture(scope="session")
def checkout(oo):
    """OpenOOD's source checkout (main.py, scripts/eval_ood.py, configs/)."""
    path = openood_checkout()
    if path is None:
        _missing("no OpenOOD checkout found (set UM_PLUGIN_OPENOOD_ROOT to one)")
    return path


@pytest.fixture(scope="session")
def tiny_bench(oo, tmp_path_factory):
    """A registered 3-class, 28x28 offline benchmark named 'tinybench'."""
    root = tmp_path_factory.mktemp("tinybench_data")
    kwargs = make_tiny_benchmark(str(root))
    oo.register_benchmark(**kwargs)
    yield kwargs
    oo.unregister_benchmark(kwargs["name"])


@pytest.fixture(autouse=True)
def _cpu_fallback_does_not_leak():
    """Benchmark entry points switch OpenOOD's CPU fallback on for their whole process; inside
    the test session that would leak into later tests, so each test ends with it off again."""
    yield
    cpu = sys.modules.get("um_plugin.openood.cpu")
    if cpu is not None:
        cpu.disable_cpu_fallback()
