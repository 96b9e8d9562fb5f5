"""The embedded benchmark: quick smoke run, outputs, one-line errors, interrupt, OpenOOD parity."""
import json
import os

import numpy as np
import pytest
import torch
from bench_helpers import forbid_work, one_line_error
from openood_fixtures import need_openood

from benchmarks.embedded import cli, protocol, scoring
from benchmarks.embedded import datasets as emb
from benchmarks.embedded.config import METHODS, QUICK, BenchConfig
from benchmarks.embedded.training import make_model
from um_plugin.core.xi import OFFICIAL_ESTIMATE_KEEP_RATIO


pytestmark = pytest.mark.usefixtures("bench_extras")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UM_PLUGIN_CACHE", str(tmp_path_factory.getbasetemp() / "um-cache"))


@pytest.mark.slow
def test_quick_mode_writes_every_output(tmp_path, capsys):
    out = tmp_path / "res"
    rc = cli.main(["--quick", "--out", str(out), "--backend", "plugin", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| method | score | ID acc |" in printed and "umap" in printed
    for name in ("results.json", "summary.csv", "summary.md", "hist_ebo.png", "hist_msp.png",
                 "finetune_loss.png", "stage_auroc.png", "xi_sweep.png"):
        assert (out / name).is_file(), name
    for method in METHODS:
        for score in ("msp", "odin", "ebo", "mls"):
            lines = (out / "openood_format" / f"{method}_{score}.csv").read_text().splitlines()
            assert lines[0] == ",FPR@95,AUROC,AUPR_IN,AUPR_OUT,ACC"
            assert [ln.split(",")[0] for ln in lines[1:]] == [
                "letters", "animals", "textures", "photos", "noise", "nearood", "farood"]
    res = json.loads((out / "results.json").read_text())
    rec = res["seeds"]["0"]
    assert len(os.listdir(out / "checkpoints" / "seed0")) == QUICK["epochs"]  # one per epoch
    assert rec["models"]["um"]["xi_label"] in (f"est@{OFFICIAL_ESTIMATE_KEEP_RATIO:g}", "fixed 0.05")
    auroc = rec["models"]["baseline"]["metrics"]["msp"]["sets"]["noise"]["auroc"]
    [noise] = [ln.split(",") for ln in (out / "openood_format" / "baseline_msp.csv").read_text()
               .splitlines() if ln.startswith("noise,")]
    assert float(noise[2]) == pytest.approx(auroc, abs=1e-6)  # one seed: the table is its value
    assert [e["epoch"] for e in rec["train_log"]] == list(range(1, QUICK["epochs"] + 1))
    summary = (out / "summary.md").read_text()  # one seed: no "± 0.00" posing as a spread
    assert "±" not in summary and "one seed: single values, no spread" in summary


def test_spread_is_the_sample_std_over_seeds_and_says_so(tmp_path):
    out = tmp_path / "two"
    assert cli.main(["--quick", "--seeds", "0", "1", "--out", str(out), "--backend", "plugin",
                     "--methods", "baseline", "--scores", "msp", "--no-progress"]) == 0
    seeds = json.loads((out / "results.json").read_text())["seeds"]
    near = [seeds[s]["models"]["baseline"]["metrics"]["msp"]["sets"]["nearood"]["auroc"]
            for s in ("0", "1")]
    summary = (out / "summary.md").read_text()
    assert "mean ± sample std (ddof=1) over the 2 seeds" in summary
    row = next(ln for ln in summary.splitlines() if ln.startswith("| baseline | msp |"))
    assert f"| {np.mean(near):.2f} ± {np.std(near, ddof=1):.2f} |" in row


def test_threads_bound_torch_and_every_openmp_blas_pool_then_restore(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits
    seen = []
    monkeypatch.setattr(protocol, "_run", lambda cfg: seen.append(
        (torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()})))
    monkeypatch.setattr(BenchConfig, "validate", lambda self: self)
    torch_before = torch.get_num_threads()
    with threadpool_limits(limits=2):  # as a shell without OMP_NUM_THREADS=1 starts it
        torch.set_num_threads(2)
        before = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
        protocol.run(BenchConfig(threads=1))
        after = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
        torch.set_num_threads(torch_before)
    assert seen == [(1, {1})] and after == before


@pytest.mark.parametrize("argv, message", [
    (["--methods", "baseline,oe"], "unknown method(s) ['oe']; valid"),
    (["--sets", "letters,svhn"], "unknown OOD set(s) ['svhn']; valid"),
    (["--scores", "msp,knn"], "unknown score(s) ['knn']; valid"),
    (["--keep-ratio", "2"], "--keep-ratio: keep_ratio must be in (0, 1]"),
    (["--keep-ratio", "0"], "--keep-ratio: keep_ratio must be in (0, 1]"),
    (["--xi-fixed", "-1"], "--xi-fixed: loss constraint xi must be a finite number >= 0"),
    (["--xi-fixed", "nan"], "--xi-fixed: loss constraint xi must be a finite number >= 0"),
    (["--xi-keeps", "1.5"], "--xi-keeps: keep_ratio must be in (0, 1]"),
    (["--xi-keeps", "--xi-fixed"], "UM/UMAP need at least one ξ candidate"),
    (["--threads", "-1"], "--threads must be an integer >= 0"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--ft-epochs", "0"], "--ft-epochs must be an integer >= 1, got 0"),
    (["--quick", "--ft-epochs", "0"], "--ft-epochs must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--xi-draws", "0"], "--xi-draws must be an integer >= 1"),
    (["--n-ood", "0"], "--n-ood must be an integer >= 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--um-lr", "inf"], "--um-lr must be a finite number > 0"),
    (["--umap-lr", "-0.1"], "--umap-lr must be a finite number > 0"),
    (["--seeds", "0", "0"], "--seeds must be distinct integers >= 0"),
    (["--seeds", "-1"], "--seeds must be distinct integers >= 0"),
    (["--backend", "tf"], "argument --backend: invalid choice: 'tf'"),
    (["--checkpoint", "/nonexistent/x.pt"], "checkpoint '/nonexistent/x.pt' does not exist"),
    (["--nosuch"], "unrecognized arguments: --nosuch"),
])
def test_bad_arguments_get_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch, emb, "build_embedded")
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    err = one_line_error(capsys, cli.PROG)
    assert message in err, err


@pytest.mark.parametrize("argv, field, want", [
    (["--quick"], "epochs", QUICK["epochs"]),
    (["--quick", "--epochs", "7"], "epochs", 7),          # an explicit value beats the preset
    (["--quick", "--ft-epochs", "3"], "ft_epochs", 3),
    (["--quick", "--seeds", "4", "5"], "seeds", [4, 5]),
    (["--xi-sweep", "--xi-fixed", "0.2"], "xi_fixed", [0.2]),
    (["--quick", "--xi-sweep"], "xi_fixed", [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]),
    ([], "epochs", BenchConfig().epochs),
    ([], "keep_ratio", 0.8),
])
def test_presets_never_override_explicit_options(argv, field, want):
    args = cli.build_parser().parse_args(argv)
    assert getattr(cli.config_from_args(args), field) == want


def test_unwritable_output_folder_gets_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["--quick", "--out", str(blocker / "sub"), "--backend", "plugin"]) == 2
    one_line_error(capsys, cli.PROG, "--out folder", "is not writable")


def test_checkpoint_of_another_architecture_gets_one_line(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert cli.main(["--quick", "--out", str(tmp_path / "o"), "--backend", "plugin",
                     "--checkpoint", str(path)]) == 2
    one_line_error(capsys, cli.PROG, "is not a LeNet")


@pytest.mark.slow
def test_interrupted_run_keeps_finished_seeds(tmp_path, monkeypatch):
    real = protocol.run_seed
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "run_seed", flaky)
    out = tmp_path / "r"
    rc = cli.main(["--quick", "--seeds", "0", "1", "--out", str(out), "--backend", "plugin",
                   "--methods", "baseline", "--scores", "msp", "--no-progress"])
    assert rc == 130
    res = json.loads((out / "results.json").read_text())
    assert list(res["seeds"]) == ["0"] and res["interrupted"] is True
    assert "baseline | msp" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_openood_path_gives_the_plugin_scores_and_metrics(tmp_path, capsys):
    need_openood()
    from benchmarks.metrics import id_ood_metrics
    from um_plugin.openood.registry.datasets import unregister_benchmark
    data = emb.build_embedded(n_ood=40, n_val_ood=20)
    scorer = scoring.OpenOODScorer(data, str(tmp_path / "oo"), id_name="mnist5k_parity",
                                   progress=True)
    err = capsys.readouterr().err  # its setup's stages, each with progress
    for stage in ("write images", "build the Evaluator", "read the test images"):
        assert f"OpenOOD: {stage}" in err
    try:
        model = make_model(3)
        tensors = {"id_test": emb.to_tensor(data.id["test"][0])}
        tensors.update({k: emb.to_tensor(v) for k, v in data.ood_sets().items()})
        for score in ("msp", "odin", "ebo", "mls"):
            df, raw = scorer.evaluate(model, score)
            plug = scoring.score_all(model, tensors, [score])[score]
            for key in tensors:
                np.testing.assert_allclose(raw[key][1], plug[key][1], rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(raw[key][0], plug[key][0])
            table = scoring.OpenOODScorer.table(df)
            for name in data.ood_sets():  # same scores -> same metrics, ours vs OpenOOD's table
                ours = id_ood_metrics(raw["id_test"][1], raw[name][1])
                for metric, value in ours.items():
                    assert value == pytest.approx(df.loc[name, metric], abs=1e-9)
                    assert table.sets[name].get(metric) == pytest.approx(value, abs=1e-9)
    finally:
        unregister_benchmark("mnist5k_parity")


def test_auto_backend_without_openood_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Without OpenOOD, --backend auto says in one line that it uses the plug-in's scorers
    (it does not fall back silently)."""
    class Stop(Exception):
        pass

    def stop(**kwargs):
        raise Stop  # the line must come before any work

    monkeypatch.setattr(protocol.emb, "build_embedded", stop)
    cfg = dict(QUICK, out=str(tmp_path / "o"), progress=False)
    monkeypatch.setattr(protocol, "openood_missing", lambda: "ModuleNotFoundError: no 'openood'")
    with pytest.raises(Stop):
        protocol.run(BenchConfig(**cfg))
    lines = capsys.readouterr().err.splitlines()
    assert [ln for ln in lines if ln.startswith("scoring backend:")] == [
        "scoring backend: the plug-in's scorers, not OpenOOD's Evaluator: OpenOOD cannot be "
        "imported (ModuleNotFoundError: no 'openood'); install it for OpenOOD's scoring (see "
        "README, Install)"]
    for backend, missing in (("plugin", "ModuleNotFoundError: x"), ("auto", None)):
        monkeypatch.setattr(protocol, "openood_missing", lambda: missing)
        with pytest.raises(Stop):
            protocol.run(BenchConfig(**dict(cfg, backend=backend)))
        assert "scoring backend" not in capsys.readouterr().err  # chosen, or not a fallback


def test_ce_control_has_its_own_bar_and_is_run_um_at_xi_0(capsys):
    """The plain-CE control's progress bar is not labelled 'um epoch'; same numbers as run_um
    at ξ 0."""
    import copy
    from benchmarks.embedded.training import finetune, finetune_config, make_loader
    from um_plugin.core import run_um
    cfg = BenchConfig(ft_epochs=2, batch_size=32, progress=True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    base = make_model(0)
    model, rec = finetune("ce", base, make_loader(x, y, 32, 1), 0.3, cfg, 0)
    err = capsys.readouterr().err
    assert "ce epoch 1/2" in err and "ce epoch 2/2" in err and "um epoch" not in err
    ref = copy.deepcopy(base)
    torch.manual_seed(0)
    hist = run_um(ref, make_loader(x, y, 32, 1), 0.0, finetune_config("ce", cfg, 0))
    assert rec.loss == list(hist.loss) and rec.acc == list(hist.acc)
    for ours, theirs in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_openood_scoring_shows_progress(capsys):
    """OpenOOD scoring (30-70 s a seed) shows progress."""
    from benchmarks.embedded.records import ScoreMetrics
    x = torch.rand(8, 3, 28, 28)

    class Scorer:  # OpenOODScorer's interface, scoring with the plug-in
        @staticmethod
        def evaluate(model, score):
            return None, {"id_test": scoring.score_all(model, {"id_test": x}, [score])[score]["id_test"]}

        @staticmethod
        def table(df):
            return ScoreMetrics()

    inputs = protocol.Inputs(x, torch.zeros(8), {"id_test": x}, np.zeros(8), {})
    models = {"baseline": make_model(0), "ce": make_model(1)}
    res = protocol.score_with_openood(Scorer(), models, inputs,
                                      BenchConfig(scores=["msp", "ebo"], progress=True), "seed 0: OO")
    assert res["ce"]["ebo"].max_abs_score_diff_vs_plugin == 0
    err = capsys.readouterr().err
    assert "seed 0: OO:   0%|          | 0/4" in err  # one step per (model, score)


def test_stage_plot_labels_do_not_overlap(tmp_path, monkeypatch):
    """stage_auroc.png keeps the best/final labels of close curves apart."""
    from benchmarks.embedded import plots
    from benchmarks.embedded.records import BenchResult, SeedResult, StagePoint, StageScore
    finals = {"nearood": 77.7, "farood": 97.4, "letters": 76.5, "animals": 78.8,
              "textures": 98.6, "photos": 96.0, "noise": 97.5}
    rec = SeedResult(0)
    rec.stage = [StagePoint(e, {"msp": StageScore(90.0, 80.0 + e, {k: v - 2 + e for k, v in finals.items()})})
                 for e in (1, 2)]
    result = BenchResult(BenchConfig(), "plugin", None)
    result.seeds[0] = rec
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: figures.append(fig))
    plots._stage(result, str(tmp_path), {k: "near" for k in finals if not k.endswith("ood")})
    [fig] = figures
    fig.tight_layout()
    fig.canvas.draw()  # places the legend's texts
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = list(ax.texts) + (list(ax.get_legend().get_texts()) if ax.get_legend() else [])
        boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), [t.get_text() for t in texts]
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "textures: best 98.6 @2, final 98.6" in labels
