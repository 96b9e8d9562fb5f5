"""README's two set-up commands, run as written on a fresh machine: a copy of this checkout and
a new virtualenv, the installer (OpenOOD from a local snapshot where this machine cannot reach
its git host), then ``import um_plugin.openood`` and the test command's collection.

This is the install that ``.ci/run`` and the README's CI recipe run too (one installer)."""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from openood_fixtures import REPO, _missing, openood_checkout

pytestmark = pytest.mark.slow


def readme_setup_commands():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = re.search(r"^## Install and test\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def openood_source():
    """The OpenOOD snapshot CI is given (``../shared/vendor``), else this machine's checkout."""
    snapshots = sorted(glob.glob(os.path.join(REPO, "..", "shared", "vendor", "openood-*.tar.gz")))
    if snapshots:
        return snapshots[-1]
    checkout = openood_checkout()
    if checkout is None:
        _missing("no OpenOOD source to install from (../shared/vendor/openood-*.tar.gz or a checkout)")
    return checkout


def copy_of_checkout(dest):
    """The checkout's files as a clone would have them: tracked and untracked, none ignored."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(dest, name))


def test_readme_setup_commands_give_a_working_openood_in_a_fresh_venv(tmp_path):
    install, test = readme_setup_commands()
    assert install == ["bash", "install.sh"] and test == ["python", "-m", "pytest"]
    source = openood_source()
    project, venv = tmp_path / "um-plugin", tmp_path / "venv"
    copy_of_checkout(project)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "UM_PLUGIN_OPENOOD_ROOT", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))

    def run(*args, timeout):
        proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    proc = run(*install, "--openood", source, timeout=1800)
    assert f"OpenOOD at {project / 'OpenOOD'}" in proc.stdout
    assert "ERROR" not in proc.stderr, proc.stderr[-3000:]  # e.g. pip's dependency-conflict lines
    where = run("python", "-c", "import um_plugin.openood, openood, libmr, um_plugin; "
                "print(openood.__file__); print(um_plugin.__file__)", timeout=300).stdout.split()
    assert where == [str(project / "OpenOOD" / "openood" / "__init__.py"),
                     str(project / "um_plugin" / "__init__.py")]
    collected = run(*test, "--collect-only", "-q", timeout=600).stdout
    count = int(re.search(r"^(\d+) tests? collected", collected, re.M).group(1))
    assert count > 100 and not re.search(r"\b\d+ errors?\b", collected), collected[-2000:]
