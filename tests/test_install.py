"""A fresh machine: the package installs without warnings, README's set-up is the one installer
(the same one .ci/run runs), and the installer's own decisions (which torch build, which
OpenOOD folder) and refusals."""
import importlib.machinery
import importlib.util
import os
import re
import subprocess

import pytest

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


def test_readme_install_is_the_installer_then_the_test_command():
    block = re.search(r"```bash\n(.*?)```", _section("Install and test"), re.S).group(1)
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert commands == [["bash", "install.sh"], ["python", "-m", "pytest"]]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "bash install.sh --openood" in ci and "\npython -m pytest\n" in ci


def _fake_env(tmp_path, gpu, index_reachable=True):
    """A PATH whose ``python`` logs every call and has torch once it installed it, and a ready OpenOOD folder,
    so install.sh's decisions can be read without installing anything."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        '#!/bin/bash\necho "$*" >> "{log}"\ncase "$*" in\n'
        '  "-m pip install -q torch torchvision"*) touch "{log}.torch" ;;\n'
        '  "-c import torch, torchvision") [ -e "{log}.torch" ] || exit 1 ;;\n'
        '  "-c import urllib.request"*) exit {probe} ;;\nesac\n'.format(log=log, probe=0 if index_reachable else 1))
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: fake'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    checkout = tmp_path / "OpenOOD"
    (checkout / "openood").mkdir(parents=True)
    (checkout / "main.py").write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return env, log, checkout


@pytest.mark.parametrize("gpu", [False, True])
def test_installer_takes_the_cpu_torch_build_where_no_gpu_is_seen(tmp_path, gpu):
    env, log, checkout = _fake_env(tmp_path, gpu)
    proc = subprocess.run(["bash", os.path.join(ROOT, "install.sh"), "--dir", str(checkout)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    torch_install = [c for c in calls if c.startswith("-m pip install -q torch torchvision")]
    cpu_index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert torch_install == ["-m pip install -q torch torchvision" + ("" if gpu else " " + cpu_index)]
    assert f"-m pip install -q -e {ROOT}[test,openood,bench]" in calls
    assert f"-m pip install -q --no-deps -e {checkout}" in calls
    assert f"using the OpenOOD checkout at {checkout}" in proc.stdout


def test_installer_says_so_when_the_cpu_index_cannot_be_reached(tmp_path):
    """Offline mirrors (this machine, CI): one line, then the default index, no retries."""
    env, log, checkout = _fake_env(tmp_path, gpu=False, index_reachable=False)
    proc = subprocess.run(["bash", os.path.join(ROOT, "install.sh"), "--dir", str(checkout)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "the PyTorch CPU index (https://download.pytorch.org/whl/cpu) cannot be reached" in proc.stdout
    assert [c for c in log.read_text().splitlines() if c.startswith("-m pip install -q torch")] == \
        ["-m pip install -q torch torchvision"]


@pytest.mark.parametrize("args, says", [
    (["--bogus"], "unknown option '--bogus' (valid: --openood SRC, --dir DIR, --cpu, --gpu, --help)"),
    (["--openood"], "--openood needs a path or git URL"),
    (["--openood", "/nowhere/OpenOOD.zip", "--dir", "NEW"], "--openood /nowhere/OpenOOD.zip: not a git URL, a .tar.gz file or a folder"),
])
def test_installer_refuses_bad_arguments_in_one_line(tmp_path, args, says):
    env, log, _ = _fake_env(tmp_path, gpu=False)
    args = [str(tmp_path / "new") if a == "NEW" else a for a in args]
    proc = subprocess.run(["bash", os.path.join(ROOT, "install.sh"), *args], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == f"install.sh: {says}\n"
    assert not (tmp_path / "new").exists()


def test_installer_never_overwrites_a_folder_that_is_not_openood(tmp_path):
    env, log, _ = _fake_env(tmp_path, gpu=False)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    proc = subprocess.run(["bash", os.path.join(ROOT, "install.sh"), "--dir", str(other)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "is not an OpenOOD checkout" in proc.stderr
    assert (other / "notes.txt").read_text() == "keep" and len(os.listdir(other)) == 1


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
