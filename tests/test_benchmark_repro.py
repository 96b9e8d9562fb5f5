"""The paper-reproduction scripts, dry-run through OpenOOD's Evaluator on tiny OpenOOD-format data."""
import json

import pytest
from bench_helpers import forbid_work, one_line_error
from openood_fixtures import need_openood

from benchmarks.repro import pipeline
from benchmarks import repro
from benchmarks.checks import BenchmarkError


pytestmark = pytest.mark.usefixtures("bench_extras")


@pytest.mark.slow
def test_cifar10_dry_run_goes_through_openood(tmp_path, capsys):
    need_openood()
    rc = repro.main(["cifar10", "--dry-run", "--out", str(tmp_path), "--methods", "baseline,umap",
                     "--scores", "msp,odin", "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "cifar10_results.json").read_text())
    assert res["dry_run"] is True and res["xi"] > 0
    rows = res["methods"]["umap"]["odin"]
    assert set(rows) == {"cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"}
    assert (tmp_path / "cifar10_umap_odin.csv").is_file()
    assert "DRY RUN" in capsys.readouterr().out


def test_imagenet_suite_uses_the_papers_ood_sets_and_numbers(tmp_path):
    need_openood()
    id_name, info = repro.suite_info("imagenet", str(tmp_path))
    assert info["ood"]["far"]["datasets"] == ["inaturalist", "sun", "places", "texture"]
    assert info["ood"]["near"]["datasets"] == ["ssb_hard", "ninco"]
    assert repro.PAPER[("imagenet", "umap", "odin")]["average"] == (89.24, 40.94)
    with pytest.raises(BenchmarkError, match="missing; download OpenOOD"):
        repro.check_data(info, str(tmp_path))
    table = repro.side_by_side({"suite": "imagenet", "dry_run": False, "xi": 0.1, "methods": {
        "umap": {"odin": {"inaturalist": {"AUROC": 90.0, "FPR@95": 30.0}}}}})
    assert "| umap | odin | inaturalist | 90.00 | 30.00 | 94.71 | 21.97 |" in table


def test_repro_errors_are_one_line(tmp_path, capsys):
    need_openood()
    assert repro.main(["cifar10", "--out", str(tmp_path), "--data-root", str(tmp_path)]) == 2
    one_line_error(capsys, "python -m benchmarks.repro", "missing; download")


@pytest.mark.parametrize("argv, message", [
    (["cifar10", "--xi", "-1"], "loss constraint xi must be a finite number >= 0"),
    (["cifar10", "--keep-ratio", "2"], "keep_ratio must be in (0, 1]"),
    (["cifar10", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["cifar10", "--batch", "-4"], "--batch must be an integer >= 1"),
    (["cifar10", "--xi-draws", "0"], "--xi-draws must be an integer >= 1"),
    (["cifar10", "--workers", "-1"], "--workers must be an integer >= 0"),
    (["cifar10", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["cifar10", "--methods", "baseline,oe"], "unknown method(s) ['oe']; valid"),
    (["cifar10", "--scores", "knn"], "unknown score(s) ['knn']; valid"),
    (["cifar10", "--checkpoint", "/nonexistent.ckpt"], "checkpoint '/nonexistent.ckpt' does not exist"),
    (["cifar10"], "--data-root is required"),
    (["svhn"], "argument suite: invalid choice: 'svhn'"),
    (["cifar10", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
])
def test_bad_arguments_get_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch, pipeline, "write_dry_run_data", "register_suite")
    data = [] if "--data-root" in argv or argv == ["cifar10"] else ["--data-root", str(tmp_path)]
    assert repro.main(argv + data + ["--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys, "python -m benchmarks.repro")
    assert message in err, err


def test_unwritable_output_folder_gets_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert repro.main(["cifar10", "--dry-run", "--out", str(blocker / "sub")]) == 2
    one_line_error(capsys, "python -m benchmarks.repro", "--out folder", "is not writable")
