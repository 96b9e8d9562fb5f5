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
def test_cifar10_dry_run_prints_the_plan_and_goes_through_openood(tmp_path, capsys):
    """Their rows at their settings through OpenOOD's Evaluator, twice (--runs 2), on tiny data."""
    need_openood()
    rc = repro.main(["cifar10", "--dry-run", "--out", str(tmp_path), "--methods",
                     "baseline,um_oe", "--runs", "2", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "cifar10_results.json").read_text())
    assert res["dry_run"] is True and res["xi"] > 0 and len(res["runs"]) == 2
    rows = res["methods"]["um_oe"]["ebo"]
    assert set(rows) == {"cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"}
    assert (tmp_path / "cifar10_um_oe_ebo_run1.csv").is_file()
    finetune = res["finetune"]["um_oe"]
    assert finetune["outlier_loss"] == "oe" and finetune["mode"] == "um" and finetune["lr"] == 0.01
    # the authors' average: the plain mean over the 3 sets OpenOOD ships with their images
    runs = [r["um_oe"]["ebo"] for r in res["runs"]]
    mean = sum(sum(r[s]["AUROC"] for s in ("cifar100", "svhn", "texture")) / 3 for r in runs) / 2
    assert res["summary"]["um_oe"]["ebo"]["AUROC"][0] == pytest.approx(mean)
    assert "network: densenet_bc100 = their DenseNet-BC-100" in out and "DRY RUN" in out
    assert "| OE+UM | ebo |" in out and "97.60 ± 0.03" in out


def test_the_plan_names_their_rows_numbers_and_every_difference(capsys):
    need_openood()
    from benchmarks.repro.plan import plan_text
    rc = pipeline.ReproConfig("cifar10", dry_run=True).validate()
    text = plan_text(rc, rc.schedule())
    assert rc.methods == ["baseline", "um", "umap", "oe", "um_oe"] and rc.scores == ["ebo"]
    for line in ("| Energy | baseline | – | – | – | – | – | – | 92.07 (0.22) | 92.72 (0.39) | "
                 "42.69 (1.31) | 94.01 (0.08) | the base network |",
                 "| Energy+UM | um | 1 | 0.1 | 4 | estimated | – | – | 93.73 (0.36)",
                 "| Energy+UMAP | umap | 1 | 0.1 | 4 | estimated | – | keep 0.8, weights frozen | – |",
                 "| OE | oe | 1 | 0.01 | 4 | 0 | OE, weight 0.5 | – | 97.07 (0.01)",
                 "| OE+UM | um_oe | 1 | 0.01 | 4 | estimated | OE, weight 0.5 | – | 97.60 (0.03) | "
                 "97.87 (0.02) | 11.22 (0.16) | 93.66 (0.12) |"):
        assert line in text, text
    assert "theirs is densenet_cifar10_last.state (the final epoch)" in text
    assert ("cifar100 (their CIFAR100), svhn (their SVHN), texture (their dtd) = 3 of their 7"
            in text)
    for missing in ("iNaturalist", "SUN", "Places", "LSUN"):
        assert f"{missing}: " in text.split("missing (")[1].split("\n")[0]
    assert "differs: batch 4 (theirs: 256)" in text and "outliers differ: OpenOOD's TIN-597" in text
    rc = pipeline.ReproConfig("cifar100", network="resnet18_32x32", epochs=3, lr=0.05,
                              data_root=".", methods=["umap"], scores=["msp"]).validate()
    text = plan_text(rc, rc.schedule())
    assert "| Energy+UMAP | umap | 3 | 0.05 | 256 | estimated | – | keep 0.8, weights trained |" in text
    assert "differs: network resnet18_32x32 = OpenOOD's ResNet-18 (32x32) (theirs:" in text
    assert "differs: --epochs 3 for every fine-tuned row" in text and "--lr 0.05" in text
    assert "densenet_cifar100_best.state" in text
    assert "differs: scores msp besides or instead of energy (theirs: energy)" in text
    umap = rc.finetune_config("umap", 1, rc.schedule())
    assert umap.freeze_weights is False and umap.seed == 2  # run 1: apart from xi's seed 0


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
    (["cifar10", "--methods", "baseline,poem"], "unknown method(s) ['poem']; valid"),
    (["imagenet", "--methods", "oe"], "unknown method(s) ['oe']; valid"),
    (["cifar10", "--network", "vgg"], "unknown network(s) ['vgg']; valid"),
    (["cifar10", "--runs", "0"], "--runs must be an integer >= 1"),
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
