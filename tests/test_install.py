"""A fresh machine: the package installs without warnings, and README's Install and Test steps
give what the tests need (pytest, a CPU torch, OpenOOD's checkout)."""
import importlib.machinery
import importlib.util
import os
import re

import openood_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_folder_with_installed_files_is_a_declared_package(monkeypatch):
    """`pip install -e .` stays quiet: a folder of package data that is not a package makes
    setuptools warn (about 180 lines for the YAML folders)."""
    from setuptools.config.setupcfg import read_configuration
    monkeypatch.chdir(ROOT)
    options = read_configuration("setup.cfg")["options"]
    folders = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, "um_plugin")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(f.endswith((".py", ".yml")) for f in files):
            folders.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert set(options["packages"]) == folders
    for package in folders:
        ymls = [f for f in os.listdir(os.path.join(ROOT, *package.split("."))) if f.endswith(".yml")]
        if ymls:
            assert options["package_data"].get(package) == ["*.yml"], package


def _section(title):
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.search(rf"^## {title}\n(.*?)(?=^## )", text, re.S | re.M).group(1)


def test_readme_install_brings_pytest_and_a_cpu_torch():
    """Install gets pytest (the test extra) and the CPU torch build (plain `pip install torch`
    pulls the CUDA one)."""
    install = _section("Install")
    assert 'pip install ".[test]"' in install
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in install


def test_readme_test_section_says_where_the_openood_checkout_comes_from():
    text = " ".join(_section("Test").split())
    assert "python -m pytest" in text and "UM_PLUGIN_OPENOOD_ROOT=<OpenOOD checkout>" in text
    assert "editable install" in text


def test_an_editable_openood_install_gives_the_checkout(tmp_path, monkeypatch):
    """The tests find OpenOOD's checkout through an editable install; the env var still wins."""
    checkout = tmp_path / "OpenOOD"
    (checkout / "configs" / "postprocessors").mkdir(parents=True)
    (checkout / "openood").mkdir()
    (checkout / "openood" / "__init__.py").write_text("")
    (checkout / "main.py").write_text("")
    monkeypatch.delenv(openood_fixtures.CHECKOUT_ENV, raising=False)
    spec = importlib.machinery.ModuleSpec("openood", None, origin=str(checkout / "openood" / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "openood" else None)
    assert openood_fixtures.openood_checkout() == str(checkout)
    other = tmp_path / "other"
    (other / "configs" / "postprocessors").mkdir(parents=True)
    (other / "main.py").write_text("")
    monkeypatch.setenv(openood_fixtures.CHECKOUT_ENV, str(other))
    assert openood_fixtures.openood_checkout() == str(other)
