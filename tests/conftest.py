"""Shared fixtures: the OpenOOD gate (skip, or fail under UM_PLUGIN_REQUIRE_OPENOOD=1) and tiny benchmarks."""
import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from openood_fixtures import (_missing, make_tiny_benchmark, need_openood,  # noqa: E402,F401
                              openood_checkout, write_config_root)


BENCH_ENV = "UM_PLUGIN_REQUIRE_BENCH"
BENCH_MODULES = ("mlxtend", "animal_shape_mnist", "skimage", "sklearn", "matplotlib", "PIL")


def need_bench(*modules):
    """Skip (or fail, under UM_PLUGIN_REQUIRE_BENCH=1) without these ``[bench]`` packages."""
    for name in modules or BENCH_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _missing(f"this test needs {name} ({exc}); pip install '.[bench]' (from the checkout)",
                     BENCH_ENV, "the benchmark tests")


@pytest.fixture(scope="module")
def base():
    """The base model the core tests fine-tune or estimate ξ on (a TinyCNN trained on the
    separable data); one per test module, which copies it where a test changes it."""
    from core_helpers import trained_model
    return trained_model()


@pytest.fixture
def bench_extras():
    """Every package the embedded benchmark's data and plots come from."""
    need_bench()


@pytest.fixture
def sklearn_extra():
    """scikit-learn, which the OOD metrics use."""
    need_bench("sklearn")


@pytest.fixture(scope="session")
def oo():
    """OpenOOD, with um/umap registered; skips (or fails, under the env switch) without it."""
    need_openood()
    return importlib.import_module("um_plugin.openood")


@pytest.fixture(scope="session")
def checkout(oo):
    """OpenOOD's source checkout (main.py, scripts/eval_ood.py, configs/)."""
    path = openood_checkout()
    if path is None:
        _missing("no OpenOOD checkout found: install OpenOOD editable from one (pip install -e "
                 "<OpenOOD checkout>) or set UM_PLUGIN_OPENOOD_ROOT to one")
    return path


@pytest.fixture(scope="session")
def tiny_bench(oo, tmp_path_factory):
    """A registered 3-class, 28x28 offline benchmark named 'tinybench'."""
    root = tmp_path_factory.mktemp("tinybench_data")
    kwargs = make_tiny_benchmark(str(root))
    oo.register_benchmark(**kwargs)
    yield kwargs
    oo.unregister_benchmark(kwargs["name"])


# Quick Route 2 settings for the tests' tiny benchmarks (the shipped YAMLs are the authors'
# 100-epoch setting): the Evaluator's loader and images, a few epochs, per-step cosine.
QUICK_POSTPROCESSOR_ARGS = {"um": dict(epochs=10, lr=0.01), "umap": dict(epochs=10, lr=0.1)}
QUICK_COMMON_ARGS = dict(preprocessing="test", batch_size=None, nesterov=True, lr_schedule="step")


@pytest.fixture(scope="session")
def quick_configs(checkout, tmp_path_factory):
    """A ``configs/`` root: OpenOOD's postprocessor YAMLs plus quick ``um.yml`` / ``umap.yml``."""
    return write_config_root(checkout, tmp_path_factory.mktemp("quick_configs"),
                             {mode: {**QUICK_COMMON_ARGS, **args}
                              for mode, args in QUICK_POSTPROCESSOR_ARGS.items()})


@pytest.fixture(autouse=True)
def _cpu_fallback_does_not_leak():
    """Benchmark entry points switch OpenOOD's CPU fallback on for their whole process; inside
    the test session that would leak into later tests, so each test ends with it off again."""
    yield
    cpu = sys.modules.get("um_plugin.openood.cpu")
    if cpu is not None:
        cpu.disable_cpu_fallback()
