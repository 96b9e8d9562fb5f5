"""The embedded benchmark: quick smoke run, outputs, one-line errors, interrupt, OpenOOD parity."""
import json
import os

import numpy as np
import pytest
from openood_fixtures import need_openood
import torch

from um_plugin.bench import embedded as bench
from um_plugin.data import embedded as emb


pytestmark = pytest.mark.usefixtures("bench_extras")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UM_PLUGIN_CACHE", str(tmp_path_factory.getbasetemp() / "um-cache"))


def test_quick_mode_writes_every_output(tmp_path, capsys):
    out = tmp_path / "res"
    rc = bench.main(["--quick", "--out", str(out), "--backend", "plugin", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| method | score | ID acc |" in printed and "umap" in printed
    for name in ("results.json", "summary.csv", "summary.md", "hist_ebo.png", "hist_msp.png",
                 "finetune_loss.png", "stage_auroc.png", "xi_sweep.png"):
        assert (out / name).is_file(), name
    for method in bench.METHODS:
        for score in ("msp", "odin", "ebo", "mls"):
            lines = (out / "openood_format" / f"{method}_{score}.csv").read_text().splitlines()
            assert lines[0] == ",FPR@95,AUROC,AUPR_IN,AUPR_OUT,ACC"
            assert [ln.split(",")[0] for ln in lines[1:]] == [
                "letters", "animals", "textures", "photos", "noise", "nearood", "farood"]
    res = json.loads((out / "results.json").read_text())
    rec = res["seeds"]["0"]
    assert len(os.listdir(out / "checkpoints" / "seed0")) == 2  # one per epoch
    assert rec["models"]["um"]["xi_label"] in ("est@0.965", "fixed 0.05")
    auroc = rec["models"]["baseline"]["metrics"]["msp"]["sets"]["noise"]["AUROC"]
    assert 0 <= auroc <= 100


@pytest.mark.parametrize("argv, message", [
    (["--methods", "baseline,oe"], "unknown method(s) ['oe']"),
    (["--sets", "letters,svhn"], "unknown OOD set(s) ['svhn']"),
    (["--scores", "msp,knn"], "unknown score(s) ['knn']"),
])
def test_bad_arguments_get_one_line(argv, message, tmp_path, capsys):
    assert bench.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "valid" in err


def test_unwritable_output_folder_gets_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert bench.main(["--quick", "--out", str(blocker / "sub"), "--backend", "plugin"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not writable" in err


def test_checkpoint_of_another_architecture_gets_one_line(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert bench.main(["--quick", "--out", str(tmp_path / "o"), "--backend", "plugin",
                       "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a LeNet" in err


def test_interrupted_run_keeps_finished_seeds(tmp_path, monkeypatch):
    real = bench.run_seed
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "run_seed", flaky)
    out = tmp_path / "r"
    rc = bench.main(["--quick", "--seeds", "0", "1", "--out", str(out), "--backend", "plugin",
                     "--methods", "baseline", "--scores", "msp", "--no-progress"])
    assert rc == 130
    res = json.loads((out / "results.json").read_text())
    assert list(res["seeds"]) == ["0"] and res["interrupted"] is True
    assert "baseline | msp" in (out / "summary.md").read_text()


def test_openood_path_gives_the_plugin_scores_and_metrics(tmp_path):
    need_openood()
    from um_plugin.metrics import id_ood_metrics
    from um_plugin.openood.benchmarks import unregister_benchmark
    data = emb.build_embedded(n_ood=40, n_val_ood=20)
    scorer = bench.OpenOODScorer(data, str(tmp_path / "oo"), id_name="mnist5k_parity")
    try:
        model = bench.make_model(3)
        tensors = {"id_test": emb.to_tensor(data.id["test"][0])}
        tensors.update({k: emb.to_tensor(v) for k, v in data.ood_sets().items()})
        for score in ("msp", "odin", "ebo", "mls"):
            df, raw = scorer.evaluate(model, score)
            plug = bench.score_all(model, tensors, [score])[score]
            for key in tensors:
                np.testing.assert_allclose(raw[key][1], plug[key][1], rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(raw[key][0], plug[key][0])
            for name in data.ood_sets():  # same scores -> same metrics, ours vs OpenOOD's table
                ours = id_ood_metrics(raw["id_test"][1], raw[name][1])
                for metric, value in ours.items():
                    assert value == pytest.approx(df.loc[name, metric], abs=1e-9)
    finally:
        unregister_benchmark("mnist5k_parity")
