"""Every command README.md shows runs as written, on tiny data made here.

* the method's Python snippet, with ``model`` / ``train_loader`` a tiny CNN and its data;
* Route 1's two commands, in a miniature OpenOOD tree (``main.py``, ``configs/``, a tiny
  offline CIFAR-10 under ``./data``, a base checkpoint where the command expects it), with
  ``--cpu`` (this machine has no GPU) and ``--num_workers 0`` added, and 2 epochs instead of
  100 (into the folder the second command reads) to keep the test short;
* Route 2's Python snippet in that tree, as written (it calls ``use_cpu()``; its ``umap.yml``: 2 epochs).
"""
import os
import re
import shlex
import shutil

import pytest
import torch

from core_helpers import TinyCNN, loader
from openood_fixtures import REPO, make_openood_layout, run_cli

README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands(text):
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_method_snippet_runs(capsys):
    [snippet] = [b for b in _blocks("python") if "from um_plugin import" in b]
    torch.manual_seed(0)
    model = TinyCNN()
    exec(compile(snippet, "README.md", "exec"), {"model": model, "train_loader": loader()})
    assert "xi =" in capsys.readouterr().out


@pytest.mark.slow
def test_route1_commands_then_route2_snippet_run_as_written(oo, checkout, tmp_path, monkeypatch,
                                                           capsys):
    from openood.networks import ResNet18_32x32

    from um_plugin.shipped import install_configs
    [block] = [b for b in _blocks("bash") if "main.py" in b and "eval_ood.py" in b]
    train, evaluate = _commands(block)
    tree = tmp_path / "OpenOOD"
    (tree / "scripts").mkdir(parents=True)
    os.symlink(os.path.join(checkout, "main.py"), tree / "main.py")
    os.symlink(os.path.join(checkout, "scripts", "eval_ood.py"), tree / "scripts" / "eval_ood.py")
    for folder in ("datasets", "networks", "preprocessors", "postprocessors"):
        shutil.copytree(os.path.join(checkout, "configs", folder), tree / "configs" / folder)
    install_configs(str(tree / "configs"), force=True)
    make_openood_layout(str(tree / "data"), "cifar10", size=32, per_list=8)
    base = tree / "results/cifar10_resnet18_32x32_base_e100_lr0.1_default/s0/best.ckpt"
    base.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(ResNet18_32x32(num_classes=10).state_dict(), base)

    assert train[:3] == ["um-openood", "run", "main.py"] and str(base.relative_to(tree)) in train
    root = evaluate[evaluate.index("--root") + 1]
    fast = ["--optimizer.num_epochs", "2", "--exp_name", f"{os.path.basename(root)}/s0"]
    out = run_cli("run", "--cpu", *train[2:], "--num_workers", "0", *fast, cwd=tree).stdout
    assert "the umap trainer differs from the authors' setting in: epochs 2 (authors: 100)" in out
    assert "best.ckpt holds the final epoch's model (epoch 2" in out
    assert evaluate[:3] == ["um-openood", "run", "scripts/eval_ood.py"]
    out = run_cli("run", "--cpu", *evaluate[2:], cwd=tree).stdout
    table = out[out.rindex("FPR@95"):]
    assert "farood" in table and "nan" not in table.lower()

    # Route 2's snippet in the same tree (./data, ./configs), `net` a trained-shaped ResNet
    [snippet] = [b for b in _blocks("python") if "Evaluator(" in b]
    umap_yml = tree / "configs" / "postprocessors" / "umap.yml"
    umap_yml.write_text(umap_yml.read_text().replace("epochs: 100", "epochs: 2"))
    monkeypatch.chdir(tree)
    net = ResNet18_32x32(num_classes=10)
    net.load_state_dict(torch.load(base, weights_only=True))
    assert "um_plugin.openood.use_cpu()" in snippet  # the CPU switch, shown where it is needed
    exec(compile(snippet, "README.md", "exec"), {"net": net})
    out = capsys.readouterr().out
    assert "postprocessor 'umap_ebo' differs from the authors' setting in: epochs 2" in out
    assert "farood" in out
