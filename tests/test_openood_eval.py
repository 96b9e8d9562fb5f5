"""`um-openood eval`: OpenOOD's leaderboard evaluation on a registered offline benchmark, a LeNet
trained by main.py in two seed folders, then UM and UMAP by main.py; every number is the
Evaluator's for the same checkpoint and postprocessor."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from openood_fixtures import checkout_env, main_py_argv, make_tiny_benchmark
from um_plugin.leaderboard.provenance import sha256_file

# One interpreter imports OpenOOD once and forks a child per main.py run (each as
# `um-openood run --cpu main.py ...`): the same runs as separate commands, without paying the
# imports six times on a small CI machine.
_DRIVER = r"""
import json, os, sys
import um_plugin.openood, openood.pipelines  # noqa: F401  imported once, before the forks
from um_plugin.cli import main
for argv in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            import traceback; traceback.print_exc(); code = 3
        sys.stdout.flush(); sys.stderr.flush(); os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"main.py run failed: {argv}")
"""


def _main_py_runs(runs, cwd):
    import json
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(runs)], cwd=cwd,
                          env=checkout_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def trained(oo, checkout, tmp_path_factory):
    """A registered benchmark and its YAMLs; base LeNet s0/s1 by main.py, then UM and UMAP."""
    from um_plugin.shipped import configs_root
    from um_plugin.openood.registry.dataset_file import write_benchmark_file
    tmp = tmp_path_factory.mktemp("eval")
    kwargs = make_tiny_benchmark(str(tmp / "data"), name="evalbench", per_split=24)
    bench_yml = write_benchmark_file(kwargs, str(tmp / "bench.yml"))
    oo.register_benchmark(**kwargs, dataset_yaml=str(tmp / "evalbench.yml"))
    flags = ["--num_workers", "0", "--output_dir", tmp / "runs", "--dataset.train.batch_size", "8"]
    runs = [main_py_argv(checkout, tmp / "evalbench.yml", "lenet",
                         os.path.join(checkout, "configs/pipelines/train/baseline.yml"), *flags,
                         "--optimizer.num_epochs", "2", "--seed", s, "--exp_name", f"base/s{s}")
            for s in (0, 1)]
    for method in ("um", "umap"):
        runs += [main_py_argv(checkout, tmp / "evalbench.yml", "lenet",
                              os.path.join(configs_root(), f"train_{method}.yml"), *flags,
                              "--optimizer.num_epochs", "1", "--seed", s, "--network.checkpoint",
                              tmp / "runs" / "base" / f"s{s}" / "best.ckpt", "--exp_name", f"{method}/s{s}")
                 for s in (0, 1)]
    _main_py_runs(runs, cwd=tmp)
    yield tmp, kwargs, bench_yml
    oo.unregister_benchmark("evalbench")


def _reference(checkout, kwargs, checkpoint, postprocessor):
    """OpenOOD's Evaluator, by hand, on one checkpoint."""
    from openood.evaluation_api import Evaluator
    from openood.networks.lenet import LeNet
    net = LeNet(num_classes=3, num_channel=3)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    net.eval()
    evaluator = Evaluator(net, id_name=kwargs["name"], data_root=kwargs["data_root"],
                          config_root=os.path.join(checkout, "configs"),
                          postprocessor_name=postprocessor, batch_size=16, num_workers=0)
    return evaluator.eval_ood(progress=False)


@pytest.mark.slow
def test_eval_rows_and_csvs_equal_the_evaluators_numbers(oo, checkout, trained, capsys):
    from um_plugin.cli import main
    tmp, kwargs, bench_yml = trained
    roots = [str(tmp / "runs" / m) for m in ("base", "um", "umap")]
    out = tmp / "board"
    code = main(["eval", "--cpu", "--benchmark", bench_yml, "--network", "lenet", "--root", *roots,
                 "--postprocessor", "msp,ebo", "--batch-size", "16", "--num-workers", "0",
                 "--out", str(out), "--save-csv", "--sort-by", "far_AUROC"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | postprocessor | runs | near AUROC | near FPR@95 | far AUROC")
    assert len(table) == 2 + 6  # header, rule, (3 models x 2 postprocessors)

    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["postprocessor"]) for r in rows] != [] and len(rows) == 6
    assert list(rows[0])[:5] == ["model", "postprocessor", "runs", "near_AUROC", "near_AUROC_std"]
    far = [float(r["far_AUROC"]) for r in rows]
    assert far == sorted(far, reverse=True)  # --sort-by far_AUROC, best first
    with open(out / "leaderboard.md") as f:
        markdown = f.read().splitlines()
    assert markdown[:len(table)] == table
    assert markdown[-1].startswith("\u00b1 = population std over the n runs of a row (n = 1: no \u00b1)")
    with open(out / "leaderboard.json") as f:
        described = json.load(f)["rows"]
    assert sorted((r["model"], r["postprocessor"]) for r in described) == sorted(
        (r["model"], r["postprocessor"]) for r in rows)

    for row in rows:
        assert row["runs"] == "2"
        folders = [os.path.join(tmp, "runs", row["model"], s, "best.ckpt") for s in ("s0", "s1")]
        assert row["checkpoint_sha256"] == ";".join(sha256_file(c) for c in folders)
        assert len(row["benchmark"]) == 64 and len(row["config_sha256"]) == 64
        assert row["versions"].startswith("um-plugin 0.1.0; OpenOOD ") and "; torch " in row["versions"]
        tables = [_reference(checkout, kwargs, c, row["postprocessor"]) for c in folders]
        stack = np.stack([t.to_numpy(dtype=float) for t in tables])
        mean, std = stack.mean(0), stack.std(0)
        index, columns = list(tables[0].index), list(tables[0].columns)
        for group, label in (("nearood", "near"), ("farood", "far"), ("noise_far", "noise_far")):
            for metric in ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT"):
                i, j = index.index(group), columns.index(metric)
                assert float(row[f"{label}_{metric}"]) == pytest.approx(mean[i, j], abs=1e-9)
                assert float(row[f"{label}_{metric}_std"]) == pytest.approx(std[i, j], abs=1e-9)
        assert float(row["ID_ACC"]) == pytest.approx(mean[0, columns.index("ACC")], abs=1e-9)
        # OpenOOD's own CSV format (what eval_ood.py --save-csv writes), in both places
        expected = [[""] + columns] + [
            [name] + [f"{mean[i, j]:.2f} \u00b1 {std[i, j]:.2f}" for j in range(len(columns))]
            for i, name in enumerate(index)]
        for path in (tmp / "runs" / row["model"] / "ood" / f"{row['postprocessor']}.csv",
                     out / row["model"] / "ood" / f"{row['postprocessor']}.csv"):
            with open(path, newline="") as f:
                assert list(csv.reader(f)) == expected, path
    umap = torch.load(tmp / "runs" / "umap" / "s0" / "best.ckpt")
    assert 0.15 < (umap["fc.weight"] == 0).float().mean().item() < 0.25  # UMAP's checkpoint


@pytest.mark.slow
def test_eval_gate_on_its_own_leaderboard(oo, trained, capsys, tmp_path):
    """The same run gated on its own CSV passes (tolerance 0); a baseline 3 points better on far
    AUROC fails with one line naming it."""
    from um_plugin.cli import main
    tmp, _, bench_yml = trained
    args = ["eval", "--cpu", "--benchmark", bench_yml, "--network", "lenet", "--root",
            str(tmp / "runs" / "um"), "--postprocessor", "msp", "--num-workers", "0",
            "--batch-size", "16", "--out", str(tmp_path)]
    assert main(args + ["--save-score"]) == 0
    assert os.path.isfile(tmp / "runs" / "um" / "s0" / "scores" / "msp.pkl")  # as eval_ood.py
    stored = tmp_path / "leaderboard.csv"
    # the second run reuses the saved scores (as eval_ood.py does): the same numbers
    assert main(args + ["--baseline", str(stored), "--tolerance", "0"]) == 0
    assert "gate: passed" in capsys.readouterr().out
    with open(stored) as f:
        rows = list(csv.DictReader(f))
    rows[0]["far_AUROC"] = str(float(rows[0]["far_AUROC"]) + 3)
    better = tmp_path / "better.csv"
    with open(better, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(args + ["--baseline", str(better), "--tolerance", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("um-openood: gate:")] == [
        f"um-openood: gate: um / msp: far_AUROC fell 3.00 points (reference "
        f"{float(rows[0]['far_AUROC']):.2f}, now {float(rows[0]['far_AUROC']) - 3:.2f}, tolerance 2)"]


def _tree(folder):
    """Every file under ``folder`` with its bytes' hash: what a run folder holds."""
    return {os.path.relpath(os.path.join(d, f), folder): sha256_file(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


def _eval(main, capsys, bench_yml, root, *extra, config_root=None):
    argv = ["eval", "--cpu", "--benchmark", bench_yml, "--network", "lenet", "--root", str(root),
            "--postprocessor", "ebo", "--num-workers", "0", "--batch-size", "16", *extra]
    if config_root:
        argv += ["--config-root", str(config_root)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    row = next(r for r in out.splitlines() if r.startswith("| um | ebo |"))
    return row, [line for line in err.splitlines() if "recomputing" in line or "skipped" in line
                 ] + [line for line in out.splitlines() if "skipped" in line]


@pytest.mark.slow
def test_cached_scores_are_used_only_for_the_same_checkpoint_config_and_benchmark(
        oo, checkout, trained, capsys, tmp_path):
    """Without --save-* the run folder is unchanged; with --save-score a rerun reuses the cache,
    and after the checkpoint, the postprocessor YAML or an image list changed (or the cache file
    was cut short) it recomputes, says why, and its row is a fresh Evaluator's."""
    from um_plugin.cli import main
    from um_plugin.leaderboard.runs import STOP_MARKER
    tmp, kwargs, _ = trained
    root = tmp_path / "um"
    shutil.copytree(tmp / "runs" / "um", root, ignore=shutil.ignore_patterns("ood"))
    (root / "s2").mkdir()
    (root / "s2" / STOP_MARKER).write_text("the fit check stopped this run\n")
    data = tmp_path / "data"
    shutil.copytree(kwargs["data_root"], data)
    from um_plugin.openood.registry.dataset_file import write_benchmark_file
    bench = write_benchmark_file({**kwargs, "data_root": str(data)}, str(tmp_path / "bench.yml"))
    configs = tmp_path / "configs"
    shutil.copytree(os.path.join(checkout, "configs", "postprocessors"), configs / "postprocessors")

    def expected(checkpoints, config_root=configs, data_root=str(data)):
        from openood.evaluation_api import Evaluator
        from openood.networks.lenet import LeNet
        tables = []
        for checkpoint in checkpoints:
            net = LeNet(num_classes=3, num_channel=3)
            net.load_state_dict(torch.load(checkpoint, map_location="cpu"))
            tables.append(Evaluator(net.eval(), id_name=kwargs["name"], data_root=data_root,
                                    config_root=str(config_root), postprocessor_name="ebo",
                                    batch_size=16, num_workers=0).eval_ood(progress=False))
        near = np.mean([t.loc["nearood", "AUROC"] for t in tables]) * 1
        return f"{near:.2f} \u00b1"

    before = _tree(root)
    row, said = _eval(main, capsys, bench, root, config_root=configs)
    assert _tree(root) == before  # nothing written into the run folder
    assert said == [f"um-openood eval: --root {str(root)!r}: s2/ skipped, its run was stopped: "
                    "the fit check stopped this run"]
    checkpoints = [str(root / s / "best.ckpt") for s in ("s0", "s1")]
    assert row.split(" | ")[3].startswith(expected(checkpoints))
    first, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert os.path.isfile(root / "s0" / "scores" / "ebo.pkl") and len(said) == 1  # the skip
    again, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert again == first and len(said) == 1  # from the cache

    shutil.copy(tmp / "runs" / "base" / "s0" / "best.ckpt", root / "s0" / "best.ckpt")
    assert main(["eval", "--cpu", "--benchmark", bench, "--network", "lenet", "--root",
                 str(root), "--num-workers", "0"]) == 2  # the recorder's checksum: refused
    assert "does not match its checksum file" in capsys.readouterr().err
    os.remove(root / "s0" / "best.ckpt.sha256")  # as the message says, for a deliberate swap
    row, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert any(f"recomputing {root / 's0' / 'scores' / 'ebo.pkl'}: made from other checkpoint "
               "bytes" in line for line in said), said
    assert not any("s1" in line and "recomputing" in line for line in said)
    assert row.split(" | ")[3].startswith(expected(checkpoints))

    (configs / "postprocessors" / "ebo.yml").write_text(
        (configs / "postprocessors" / "ebo.yml").read_text().replace("temperature: 1", "temperature: 1000"))
    row, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert sum("made from other postprocessor config" in line for line in said) == 4, said
    assert row.split(" | ")[3].startswith(expected(checkpoints))

    near = data / kwargs["near_ood"]["noise_near"]
    near.write_text("".join(near.read_text().splitlines(keepends=True)[:-5]))
    row, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert sum("made from other benchmark" in line for line in said) == 4, said
    assert row.split(" | ")[3].startswith(expected(checkpoints))

    scores = root / "s1" / "scores" / "ebo.pkl"
    scores.write_bytes(scores.read_bytes()[:100])
    row, said = _eval(main, capsys, bench, root, "--save-score", config_root=configs)
    assert any(f"recomputing {scores}: its bytes are not the ones written" in l for l in said), said
    assert row.split(" | ")[3].startswith(expected(checkpoints))
