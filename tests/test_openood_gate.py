"""`um-openood gate` / `eval --baseline`: exit 1 per fallen metric, 0 within tolerance, missing
rows named, malformed CSVs one line and exit 2; and every bad `eval` argument stops before work."""
import os

import pytest
import torch

from bench_helpers import one_line, one_line_error
from openood_fixtures import lenet, make_tiny_benchmark


def _row(model="um", pp="msp", near=90.0, far=95.0, fpr=20.0, bench="b" * 64):
    return {"model": model, "postprocessor": pp, "runs": 2, "near_AUROC": near,
            "near_AUROC_std": 1.0, "far_AUROC": far, "far_AUROC_std": 0.5, "near_FPR@95": fpr,
            "near_FPR@95_std": 2.0, "far_FPR@95": 10.0, "far_FPR@95_std": 0.0, "ID_ACC": 99.0,
            "ID_ACC_std": 0.0, "benchmark": bench}


def _write(path, rows):
    from um_plugin.leaderboard.table import to_csv
    path.write_text(to_csv(rows))
    return str(path)


def _gate(tmp_path, run_rows, base_rows, tolerance, capsys, *extra):
    from um_plugin.cli import main
    run = _write(tmp_path / "run.csv", run_rows)
    base = ["--baseline", _write(tmp_path / "base.csv", base_rows)] if base_rows else []
    code = main(["gate", run, *base, "--tolerance", str(tolerance), *extra])
    captured = capsys.readouterr()
    return code, captured.out, [l for l in captured.err.splitlines() if "gate:" in l]


def test_gate_fails_when_the_baseline_is_better_by_more_than_the_tolerance(tmp_path, capsys):
    code, out, err = _gate(tmp_path, [_row(near=87.0, fpr=24.5)], [_row()], 2, capsys)
    assert code == 1 and "gate: FAILED (2)" in out
    assert err == [
        "um-openood: gate: um / msp: near_AUROC fell 3.00 points (reference 90.00, now 87.00, tolerance 2)",
        "um-openood: gate: um / msp: near_FPR@95 fell 4.50 points (reference 20.00, now 24.50, tolerance 2)"]


def test_gate_passes_within_tolerance_and_on_improvements(tmp_path, capsys):
    # near AUROC 1.5 lower, FPR 1.9 higher (worse, within 2), far AUROC better, FPR lower is better
    code, out, err = _gate(tmp_path, [_row(near=88.5, far=99.0, fpr=21.9)], [_row()], 2, capsys)
    assert code == 0 and err == [] and "gate: passed" in out
    assert "um / msp: near_AUROC 90.00 -> 88.50, far_AUROC 95.00 -> 99.00; 5 metrics compared, " \
           "largest fall +1.90 points (near_FPR@95)" in out
    code, _, err = _gate(tmp_path, [_row(fpr=10.0)], [_row(fpr=20.0)], 0, capsys)
    assert code == 0 and err == []  # FPR fell from 20 to 10: better, not a fall


def test_gate_names_rows_in_one_file_only(tmp_path, capsys):
    run = [_row(), _row(model="umap")]
    code, out, err = _gate(tmp_path, run, [_row(), _row(pp="ebo")], 1, capsys)
    assert code == 1
    assert err == ["um-openood: gate: row um / ebo is in the baseline only: this run did not score it"]
    assert "row umap / msp is in this run only (not in the baseline); not gated" in out
    code, out, err = _gate(tmp_path, run, [_row()], 1, capsys)
    assert code == 0 and "row umap / msp is in this run only" in out


def test_a_baseline_column_the_run_lacks_fails(tmp_path, capsys):
    base = [dict(_row(), noise_AUROC=80.0)]
    code, _, err = _gate(tmp_path, [_row()], base, 1, capsys)
    assert code == 0 and err == []  # not a --metrics column by default
    code, _, err = _gate(tmp_path, [_row()], base, 1, capsys, "--metrics", "all")
    assert code == 1 and err == ["um-openood: gate: um / msp: noise_AUROC is in the reference row only"]


@pytest.mark.parametrize("text, says", [
    ("a,b\n1,2\n", "has no 'model' and 'postprocessor' columns"),
    ("", "has no 'model' and 'postprocessor' columns"),
    ("model,postprocessor,runs\num,msp,1\n", "has no metric columns"),
    ("model,postprocessor,near_AUROC\num,msp,high\n", "line 2: near_AUROC is 'high', not a number"),
    ("model,postprocessor,near_AUROC\num,msp,1\num,msp,2\n", "line 3: row ('um', 'msp') appears twice"),
    ("model,postprocessor,near_AUROC\num,msp\n", "line 2: 2 cells, the header has 3"),
    ("model,postprocessor,near_AUROC\n", "has no rows"),
])
def test_malformed_csvs_end_in_one_line_and_exit_2(tmp_path, capsys, text, says):
    from um_plugin.cli import main
    good = _write(tmp_path / "good.csv", [_row()])
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    for argv in (["gate", good, "--baseline", str(bad)], ["gate", str(bad), "--baseline", good]):
        assert main(argv) == 2
        one_line(capsys.readouterr().err, says, prefix="um-openood: error: leaderboard CSV ")
    assert main(["gate", good, "--baseline", str(tmp_path / "nope.csv")]) == 2
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("cell", ["inf", "1e999", "5000", "-inf", "nan", "-0.5"])
@pytest.mark.parametrize("where", ["run", "baseline"])
def test_values_the_gate_cannot_judge_are_refused_in_one_line(tmp_path, capsys, cell, where):
    from um_plugin.cli import main
    good = _write(tmp_path / "good.csv", [_row()])
    bad = _write(tmp_path / "bad.csv", [_row()])
    text = open(bad).read().replace("20.0", cell, 1)  # near_FPR@95
    open(bad, "w").write(text)
    argv = ["gate", bad, "--baseline", good] if where == "run" else ["gate", good, "--baseline", bad]
    assert main(argv) == 2
    one_line_error(capsys, "um-openood", f"near_FPR@95 is '{cell}'",
                   "finite percentage in [0, 100]")


def test_rows_of_another_benchmark_are_not_compared_unless_asked(tmp_path, capsys):
    from um_plugin.cli import main
    _write(tmp_path / "base.csv", [_row(bench="c" * 64)])
    _write(tmp_path / "run.csv", [_row()])
    run, base = str(tmp_path / "run.csv"), str(tmp_path / "base.csv")
    assert main(["gate", run, "--baseline", base]) == 2
    one_line_error(capsys, "um-openood", "different benchmarks (benchmark cccccccccccc vs "
                   "bbbbbbbbbbbb", "--allow-other-data")
    assert main(["gate", run, "--baseline", base, "--allow-other-data"]) == 0
    assert "compared across benchmarks" in capsys.readouterr().out


def test_versus_gates_each_row_against_that_models_row_with_the_same_postprocessor(
        tmp_path, capsys):
    rows = [_row("base", "msp"), _row("base", "ebo", near=80.0), _row("um", "msp", near=91.0),
            _row("um", "ebo", near=77.0)]
    code, out, err = _gate(tmp_path, rows, None, 2, capsys, "--versus", "base")
    assert code == 1 and "um / msp vs base: near_AUROC 90.00 -> 91.00" in out
    assert err == ["um-openood: gate: um / ebo vs base: near_AUROC fell 3.00 points (reference "
                   "80.00, now 77.00, tolerance 2)"]
    # against a stored base instead: only the baseline's base rows are the reference
    code, out, err = _gate(tmp_path, rows[2:], [_row("base", "msp"), _row("base", "ebo", near=76)],
                           2, capsys, "--versus", "base")
    assert code == 0 and err == []
    code, out, err = _gate(tmp_path, rows[2:], [_row("base", "msp")], 2, capsys, "--versus", "base")
    assert code == 1 and err == ["um-openood: gate: um / ebo: the baseline has no row base / ebo "
                                 "to gate it against"]
    from um_plugin.cli import main
    assert main(["gate", str(tmp_path / "run.csv"), "--versus", "nobody"]) == 2
    assert "--versus 'nobody': this CSV has no rows of model 'nobody'" in capsys.readouterr().err


def test_metrics_and_per_metric_tolerances(tmp_path, capsys):
    run, base = [_row(near=87.0, fpr=24.5)], [_row()]
    code, _, err = _gate(tmp_path, run, base, "near_AUROC=3,near_FPR@95=5", capsys)
    assert code == 0 and err == []
    code, _, err = _gate(tmp_path, run, base, "5,near_AUROC=2", capsys)
    assert code == 1 and err == ["um-openood: gate: um / msp: near_AUROC fell 3.00 points "
                                 "(reference 90.00, now 87.00, tolerance 2)"]
    code, _, err = _gate(tmp_path, run, base, 1, capsys, "--metrics", "far_AUROC,ID_ACC")
    assert code == 0 and err == []
    from um_plugin.cli import main
    for extra, says in ((["--metrics", "nosuch"], "--metrics ['nosuch']: not a column"),
                        (["--tolerance", "near_AUROC=x"], "--tolerance near_AUROC: must be a number"),
                        (["--tolerance", "-1"], "must be a number of points >= 0"),
                        (["--metrics", "ID_ACC", "--tolerance", "near_AUROC=1"],
                         "--tolerance names ['near_AUROC'], which --metrics does not gate"),
                        ([], "gate needs --baseline CSV or --versus MODEL")):
        base_args = [] if not extra else ["--baseline", str(tmp_path / "base.csv")]
        assert main(["gate", str(tmp_path / "run.csv"), *base_args, *extra]) == 2
        one_line_error(capsys, "um-openood", says)


def test_gate_runs_where_openood_and_torch_cannot_be_imported(tmp_path):
    from openood_fixtures import run_python
    run = _write(tmp_path / "run.csv", [_row("base"), _row("um", near=89.5)])
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('openood', 'torch', 'pandas', 'numpy'):\n"
            "            raise ImportError(f'{name} blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from um_plugin.cli import main\n"
            f"code = main(['gate', {run!r}, '--versus', 'base'])\n"
            "assert not {'torch', 'openood'} & set(sys.modules)\n"
            "sys.exit(code)\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "um / msp vs base: near_AUROC 90.00 -> 89.50" in proc.stdout and "gate: passed" in proc.stdout


@pytest.fixture
def eval_setup(oo, checkout, tmp_path):
    """A benchmark YAML and a run folder with two LeNet seeds (no training: arguments only)."""
    from um_plugin.openood.registry.dataset_file import write_benchmark_file
    kwargs = make_tiny_benchmark(str(tmp_path / "data"), name="argbench", per_split=6)
    bench = write_benchmark_file(kwargs, str(tmp_path / "bench.yml"))
    for seed in ("s0", "s1"):
        (tmp_path / "run" / seed).mkdir(parents=True)
        torch.save(lenet().state_dict(), tmp_path / "run" / seed / "best.ckpt")
    (tmp_path / "run5" / "s0").mkdir(parents=True)
    torch.save(lenet(5).state_dict(), tmp_path / "run5" / "s0" / "best.ckpt")
    yield tmp_path, bench
    from um_plugin.openood.registry.datasets import _OURS
    if "argbench" in _OURS:
        oo.unregister_benchmark("argbench")


@pytest.mark.parametrize("change, says", [
    ({"--postprocessor": "msp,nosuch"}, "--postprocessor 'nosuch' is not one the Evaluator knows"),
    ({"--postprocessor": "msp,msp"}, "names must be non-empty and distinct"),
    ({"--postprocessor": "um_nosuch"}, "unknown base 'nosuch'"),
    ({"--network": "nosuchnet"}, "--network 'nosuchnet' is not an OpenOOD network name"),
    ({"--network": "torch.nn:NoSuch"}, "'torch.nn' has no class 'NoSuch'"),
    ({"--num-classes": "5"}, "--num-classes 5: benchmark 'argbench' has 3 classes"),
    ({"--root": "RUN5"}, "does not fit --network LeNet: shape of 'fc.weight' (5, 84) vs "
                         "network's (3, 84)"),
    ({"--out": "RUN/s0/best.ckpt/board"}, "best.ckpt' is a file; pass a folder"),
    ({"--out": "/proc/self/board"}, "cannot write into '/proc/self'"),
    ({"--set": "nosuch=1"}, "--set nosuch: no postprocessor of ['msp'] has this setting"),
    ({"--set": "temperature"}, "--set 'temperature': use KEY=VALUE"),
    ({"--postprocessor": "um_msp", "--set": "epochs=0"}, "--postprocessor 'um_msp': "
                                                         "postprocessor.postprocessor_args.epochs"),
    ({"--tolerance": "near_AUROC=x"}, "--tolerance near_AUROC: must be a number"),
    ({"--root": "RUN/s0"}, "has no s* run folders"),
    ({"--root": "RUN/nope"}, "is neither a run folder nor a checkpoint file"),
    ({"--checkpoint-name": "last.ckpt"}, "have no 'last.ckpt'"),
    ({"--sort-by": "AUROC"}, "--sort-by 'AUROC' is not a leaderboard column"),
    ({"--benchmark": None, "--id-data": "nosuchbench"}, "--id-data 'nosuchbench' is not a benchmark"),
    ({"--benchmark": None}, "pass --id-data NAME"),
    ({"--benchmark": "BAD"}, "unknown key(s) ['colour']"),
    ({"--fsood": True}, "--fsood: benchmark 'argbench' has no covariate-shift ID (csid) sets"),
    ({"--baseline": "BADCSV"}, "has no 'model' and 'postprocessor' columns"),
    ({"--config-root": "RUN"}, "has no postprocessors/ folder"),
])
def test_bad_eval_arguments_stop_before_any_scoring(eval_setup, capsys, monkeypatch, change, says):
    import openood.evaluation_api as api

    from um_plugin.cli import main
    tmp, bench = eval_setup

    class NoScoring:
        def __init__(self, *a, **k):
            raise AssertionError("scoring started")
    monkeypatch.setattr(api, "Evaluator", NoScoring)
    (tmp / "bad.yml").write_text(open(bench).read() + "colour: red\n")
    (tmp / "bad.csv").write_text("a,b\n1,2\n")
    options = {"--benchmark": bench, "--network": "lenet", "--root": str(tmp / "run"),
               "--postprocessor": "msp", "--num-workers": "0", **change}
    argv = ["eval", "--cpu"]
    for flag, value in options.items():
        value = {"BAD": str(tmp / "bad.yml"), "BADCSV": str(tmp / "bad.csv")}.get(value, value)
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, value.replace("RUN5", str(tmp / "run5")).replace("RUN", str(tmp / "run"))]
    assert main(argv) == 2
    one_line_error(capsys, "um-openood", says)


def test_dataset_config_writes_the_benchmark_file_eval_reads(oo, tmp_path, capsys):
    from um_plugin.cli import main
    from um_plugin.openood.registry.dataset_file import load_benchmark_file
    kwargs = make_tiny_benchmark(str(tmp_path / "data"), name="dsbench", per_split=6)
    argv = ["dataset-config", "dsbench", "--data-root", kwargs["data_root"], "--num-classes", "3",
            "--image-size", "28", "--out", str(tmp_path / "ds.yml"), "--benchmark-out",
            str(tmp_path / "cfg" / "bench.yml"), "--ood-val", kwargs["ood_val"],
            "--near", f"noise_near={kwargs['near_ood']['noise_near']}",
            "--far", f"noise_far={kwargs['far_ood']['noise_far']}"]
    assert main(argv) == 0
    loaded = load_benchmark_file(str(tmp_path / "cfg" / "bench.yml"))
    assert loaded == {**kwargs, "data_root": os.path.abspath(kwargs["data_root"]), "pre_size": None,
                      "normalization": [[0.5] * 3, [0.5] * 3]}
    assert main(argv[:-2] + ["--far", "noise_missing"]) == 2  # default list name, not on disk
    err = capsys.readouterr().err
    assert "far_ood['noise_missing'] image list 'benchmark_imglist/dsbench/test_noise_missing.txt' " \
           "does not exist" in err


def test_a_checkpoint_that_does_not_match_its_checksum_is_refused_before_scoring(
        eval_setup, capsys, monkeypatch):
    import openood.evaluation_api as api

    from um_plugin.cli import main
    from um_plugin.leaderboard.runs import write_checksum
    tmp, bench = eval_setup
    monkeypatch.setattr(api, "Evaluator", None)  # scoring would fail loudly
    path = tmp / "run" / "s1" / "best.ckpt"
    write_checksum(str(path))
    data = bytearray(path.read_bytes())
    data[-200:-136] = bytes(64)  # 64 bytes changed inside the file
    path.write_bytes(bytes(data))
    argv = ["eval", "--cpu", "--benchmark", bench, "--network", "lenet", "--root",
            str(tmp / "run"), "--num-workers", "0"]
    assert main(argv) == 2
    one_line_error(capsys, "um-openood", f"checkpoint {str(path)!r} does not match its checksum "
                   f"file {str(path) + '.sha256'!r}")
