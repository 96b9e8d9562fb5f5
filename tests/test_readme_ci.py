"""The CI recipe in README.md runs as written, on CPU, and gates UM against its base.

The job's steps are read from the README's YAML block and run in one bash (-eo pipefail, as
GitHub Actions runs them) from the checkout's root. Left out: the `uses:` step (the checkout is
here) and the step named `install` (pip and git clone: this environment has the plug-in and
OpenOOD already). `$OOD` is a temporary OpenOOD tree (its main.py, a copy of its configs/, which
the job writes into) and `$T` a temporary folder; everything else is as the README says.
"""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from openood_fixtures import REPO, checkout_env


def readme_job():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("### CI: leaderboard rows and a gate"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (name, job), = yaml.safe_load(block).items()
    return job


@pytest.mark.slow
def test_readme_ci_job_runs_as_written_and_its_gate_passes(oo, checkout, tmp_path):
    job = readme_job()
    steps = [s for s in job["steps"] if "uses" not in s and s.get("name") != "install"]
    assert len(steps) == 1 and "um-openood eval" in steps[0]["run"] and "--versus base" in steps[0]["run"]
    assert set(job["env"]) == {"OOD", "T"}
    tree = tmp_path / "OpenOOD"
    tree.mkdir()
    os.symlink(os.path.join(checkout, "main.py"), tree / "main.py")
    shutil.copytree(os.path.join(checkout, "configs"), tree / "configs")
    env = checkout_env(OOD=str(tree), T=str(tmp_path / "ci"))
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                           steps[0]["run"]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "gate: passed" in proc.stdout and "| base | msp | 1 |" in proc.stdout
    assert "um / msp vs base: " in proc.stdout and "um / ebo vs base: " in proc.stdout
    board = tmp_path / "ci" / "board"
    assert {"leaderboard.csv", "leaderboard.json", "leaderboard.md"} <= set(os.listdir(board))
