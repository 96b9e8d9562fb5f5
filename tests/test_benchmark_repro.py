"""The paper-reproduction scripts, dry-run through OpenOOD's Evaluator on tiny OpenOOD-format data."""
import json

import pytest
from openood_fixtures import need_openood

from benchmarks import repro


pytestmark = pytest.mark.usefixtures("bench_extras")


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
    with pytest.raises(repro.ReproError, match="missing; download OpenOOD"):
        repro.check_data(info, str(tmp_path))
    table = repro.side_by_side({"suite": "imagenet", "dry_run": False, "xi": 0.1, "methods": {
        "umap": {"odin": {"inaturalist": {"AUROC": 90.0, "FPR@95": 30.0}}}}})
    assert "| umap | odin | inaturalist | 90.00 | 30.00 | 94.71 | 21.97 |" in table


def test_repro_errors_are_one_line(tmp_path, capsys):
    need_openood()
    assert repro.main(["cifar10", "--out", str(tmp_path), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing; download" in err
