"""UM's own settings chosen by OpenOOD's parameter search (``postprocessor_sweep``, APS_mode)."""
import copy
import pickle
import re

import pytest
import torch

from conftest import QUICK_COMMON_ARGS, QUICK_POSTPROCESSOR_ARGS
from openood_fixtures import lenet, write_config_root

TEST_LISTS = ("tinybench/test/", "noise_near/", "noise_far/")  # ID test and OOD test images


def _config_root(checkout, folder, mode, sweep=None, **args):
    sections = {mode: {"APS_mode": True, "postprocessor_sweep": sweep}} if sweep else None
    return write_config_root(checkout, folder,
                             {mode: {**QUICK_COMMON_ARGS, **QUICK_POSTPROCESSOR_ARGS[mode], **args}},
                             sections)


def _evaluator(oo, bench, config_root, name, net=None):
    from openood.evaluation_api import Evaluator
    with oo.enable_cpu_fallback():
        return Evaluator(lenet() if net is None else net, id_name=bench["name"],
                         data_root=bench["data_root"], config_root=config_root,
                         postprocessor_name=name, batch_size=8, num_workers=0)


@pytest.fixture
def image_spy(monkeypatch):
    """Every image OpenOOD's image-list datasets read, in order (their list lines)."""
    from openood.datasets.imglist_dataset import ImglistDataset
    seen = []
    getitem = ImglistDataset.getitem

    def spy(self, index):
        seen.append(self.imglist[index].split(" ", 1)[0])
        return getitem(self, index)
    monkeypatch.setattr(ImglistDataset, "getitem", spy)
    return seen


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_um_msp_xi_list_chosen_by_openood_search(oo, tiny_bench, checkout, tmp_path, capsys,
                                                 image_spy):
    """Each ξ's validation AUROC printed, the best chosen, the network bit-equal to a plain run
    with that ξ, and no test image read before the search ends."""
    xis = [0.5, "auto", "2x"]
    root = _config_root(checkout, tmp_path / "sweep", "um", {"loss_constraint_list": xis})
    evaluator = _evaluator(oo, tiny_bench, root, "um_msp")
    read_during_search = list(image_spy)
    out, err = capsys.readouterr()
    pp = evaluator.postprocessor
    assert "costs 3 fine-tuning(s) of 10 epoch(s)" in out.split("Starting automatic parameter")[0]
    assert "um_msp search: 100%" in err and "3/3" in err  # the bar over combinations
    openood = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"Hyperparam: \[([^\]]*)\], auroc: ([0-9.e-]+)", out)}
    assert list(openood) == ["0.5", "'auto'", "'2x'"]  # OpenOOD's own search, in its order
    rows = pp.search.table_rows()
    assert [r["loss_constraint"] for r in rows] == xis
    for row, auroc in zip(rows, openood.values()):  # the table holds OpenOOD's numbers
        assert row["status"] == "ok" and row["val_AUROC"] == pytest.approx(100 * auroc)
        assert 0 <= row["val_ID_ACC"] <= 100 and row["xi"] > 0
    best = max(range(3), key=lambda i: (list(openood.values())[i], -i))
    assert [r["chosen"] for r in rows] == [i == best for i in range(3)]
    assert pp.chosen_values()["loss_constraint"] == xis[best]
    assert f"chosen: loss_constraint={xis[best]}" in out and "val_AUROC" in out
    estimate = rows[1]["xi"]
    assert rows[2]["xi"] == 2 * estimate and rows[0]["xi"] == 0.5
    assert pp.xi == rows[best]["xi"] and pp.hyperparam_search_done

    assert read_during_search and not [p for p in read_during_search if p.startswith(TEST_LISTS)]
    assert {p.split("/")[0] + "/" + p.split("/")[1] for p in read_during_search} == {
        "tinybench/train", "tinybench/val", "noise_val/test"}  # train, ID val, OOD val only
    chosen = _state(evaluator.net)
    with oo.enable_cpu_fallback():
        evaluator.eval_ood(progress=False)
    assert any(p.startswith(TEST_LISTS) for p in image_spy)  # the spy does see test images

    xi = rows[best]["xi"] if xis[best] != "auto" else "auto"
    plain_root = _config_root(checkout, tmp_path / "plain", "um", loss_constraint=xi)
    plain = _evaluator(oo, tiny_bench, plain_root, "um_msp")
    assert plain.postprocessor.xi == pp.xi
    assert _equal(_state(plain.net), chosen)

    # pickled after its search (eval's cache), it fine-tunes a fresh network with its choice
    from openood.evaluation_api import Evaluator
    clone = pickle.loads(pickle.dumps(pp))
    assert clone.search is None and clone.chosen_values() == pp.chosen_values()
    with oo.enable_cpu_fallback():
        again = Evaluator(lenet(), id_name=tiny_bench["name"], data_root=tiny_bench["data_root"],
                          postprocessor=clone, batch_size=8, num_workers=0)
    assert _equal(_state(again.net), chosen)


def test_umap_odin_searches_the_product_with_odins_lists(oo, tiny_bench, checkout, tmp_path,
                                                         capsys):
    root = _config_root(checkout, tmp_path, "umap", {"loss_constraint_list": ["auto", "0.5x"]},
                        epochs=3)
    evaluator = _evaluator(oo, tiny_bench, root, "umap_odin")
    out = capsys.readouterr().out
    pp = evaluator.postprocessor
    assert list(pp.args_dict) == ["temperature", "noise", "loss_constraint_list"]
    temperatures, noises = [1, 10, 100, 1000], [0.0014, 0.0028]  # ODIN's own YAML
    combos = [m.group(1) for m in re.finditer(r"Hyperparam: \[([^\]]*)\], auroc", out)]
    assert combos == [f"{t}, {n}, '{x}'" for x in ("auto", "0.5x") for n in noises
                      for t in temperatures]
    assert out.count("fine-tuning setting ") == 2  # each ξ fine-tuned once for 8 ODIN settings
    assert "16 combination(s)" in out and "costs 2 fine-tuning(s)" in out
    rows = pp.search.table_rows()
    assert len(rows) == 16 and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    assert pp.get_hyperparam() == [chosen["temperature"], chosen["noise"],
                                   chosen["loss_constraint"]]
    assert pp.base.temperature == chosen["temperature"] and pp.base.noise == chosen["noise"]
    assert max(r["val_AUROC"] for r in rows) == chosen["val_AUROC"]


@pytest.mark.parametrize("mode", ["umap", "um"])
def test_each_setting_is_the_plain_run_bit_for_bit(oo, tiny_bench, checkout, tmp_path, mode):
    """A one-value sweep is the plain run; so is every later setting of a longer sweep, whose
    augmented images ('train') draw from the global RNG where a plain run would start."""
    args = dict(preprocessing="train", epochs=2)

    def plain(xi, epochs, folder, **more):
        root = _config_root(checkout, tmp_path / folder, mode,
                            **{**args, "loss_constraint": xi, "epochs": epochs, **more})
        torch.manual_seed(5)
        return _evaluator(oo, tiny_bench, root, f"{mode}_msp")

    if mode == "umap":
        swept = _config_root(checkout, tmp_path / "one", mode,
                             {"loss_constraint_list": ["1.5x"], "epochs_list": [3],
                              "keep_ratio_list": [0.7]}, **args)
        torch.manual_seed(5)
        sweep = _evaluator(oo, tiny_bench, swept, f"{mode}_msp")
        alone = plain(sweep.postprocessor.xi, 3, "one_plain", keep_ratio=0.7)
        zeros = (sweep.net.state_dict()["fc.weight"] == 0).float().mean().item()
        assert 0.25 < zeros < 0.35  # keep_ratio_list's 0.7, not the YAML's 0.8
        assert alone.postprocessor.xi == sweep.postprocessor.xi
        assert _equal(_state(alone.net), _state(sweep.net))
        return
    xis = [2.0, "2x", "0.5x"]  # above and below the loss; the second estimate is reused
    swept = _config_root(checkout, tmp_path / "three", mode, {"loss_constraint_list": xis},
                         **args)
    torch.manual_seed(5)
    search = _evaluator(oo, tiny_bench, swept, f"{mode}_msp").postprocessor.search
    outcomes = list(search.outcomes.values())
    assert not _equal(outcomes[1].state, outcomes[2].state)
    for i, outcome in enumerate(outcomes):
        assert _equal(_state(plain(outcome.xi, 2, f"plain{i}").net), outcome.state), xis[i]


def test_failed_setting_is_marked_and_the_search_goes_on(oo, tiny_bench, checkout, tmp_path,
                                                         monkeypatch, capsys):
    from um_plugin.core.finetune import NonFiniteLossError
    from um_plugin.openood.postprocessing import postprocessors as ours
    from um_plugin.openood.settings.options import RouteStop
    real = dict(ours.RUNNERS)

    def nan_for_big_xi(model, loader, xi, config):
        if xi > 1:
            raise NonFiniteLossError(0, 1, float("nan"))
        return real["um"](model, loader, xi, config)
    monkeypatch.setitem(ours.RUNNERS, "um", nan_for_big_xi)
    root = _config_root(checkout, tmp_path / "some", "um", {"loss_constraint_list": [5.0, 0.4]})
    evaluator = _evaluator(oo, tiny_bench, root, "um_msp")
    out = capsys.readouterr().out
    rows = evaluator.postprocessor.search.table_rows()
    assert rows[0]["status"].startswith("failed: NonFiniteLossError: loss became non-finite")
    assert rows[0]["val_AUROC"] is None and not rows[0]["chosen"]
    assert rows[1]["status"] == "ok" and rows[1]["chosen"]
    assert "Hyperparam: [5.0], auroc: 0.0" in out and "FAILED, the search goes on" in out
    assert evaluator.postprocessor.xi == 0.4

    real_prepare = ours.prepare_xi

    def estimate_does_not_fit(model, loader, xi, *args, **kwargs):
        if xi.value is None:
            raise oo.FitCheckError("the model does not fit its training images")
        return real_prepare(model, loader, xi, *args, **kwargs)
    monkeypatch.setattr(ours, "prepare_xi", estimate_does_not_fit)
    root = _config_root(checkout, tmp_path / "fit", "um",
                        {"loss_constraint_list": ["auto", 0.4, "2x"]})
    rows = _evaluator(oo, tiny_bench, root, "um_msp").postprocessor.search.table_rows()
    fit = "failed: FitCheckError: the model does not fit its training images"
    assert [r["status"] for r in rows] == [fit, "ok", fit]  # '2x' shares auto's failed estimate
    assert [r["chosen"] for r in rows] == [False, True, False]

    root = _config_root(checkout, tmp_path / "all", "um", {"loss_constraint_list": [5.0, 9.0]})
    with pytest.raises(RouteStop) as caught:  # what um-openood eval turns into exit 2
        _evaluator(oo, tiny_bench, root, "um_msp")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        "um_msp: every one of the 2 fine-tuning(s) of the sweep stopped, nothing to choose from "
        "(NonFiniteLossError: loss became non-finite at epoch 0, step 1")  # one reason, once


def test_sweep_values_are_checked_in_one_line(oo, checkout, tmp_path):
    from openood.evaluation_api.postprocessor import get_postprocessor
    from um_plugin.openood.postprocessing.sweep import parse_flag
    cases = [("um", {"loss_constraint_list": ["huge"]}, r"loss_constraint_list: 'huge' is not a "
              r"loss constraint; use a number > 0, 'auto' .* '2x'"),
             ("um", {"keep_ratio_list": [0.5]}, r"keep_ratio_list is a UMAP setting"),
             ("umap", {"keep_ratio_list": [0.5, 1.5]}, r"keep_ratio_list: keep_ratio must be"),
             ("um", {"epochs_list": [0]}, r"epochs_list: epochs must be an integer >= 1, got 0"),
             ("um", {"loss_constraint_list": [0.1, 0.1]}, r"repeats a value"),
             ("um", {"loss_constraint_list": []}, r"must be a non-empty list"),
             ("um", {"temperature": [1]}, r"unknown keys \['temperature'\]; valid keys are "
              r"\['loss_constraint_list', 'keep_ratio_list', 'epochs_list'\]")]
    for i, (mode, sweep, pattern) in enumerate(cases):
        root = _config_root(checkout, tmp_path / str(i), mode, sweep)
        with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_sweep.*" + pattern):
            get_postprocessor(root, f"{mode}_msp", "tinybench")
    assert parse_flag("loss_constraint_list=0.1,auto,2x") == {
        "loss_constraint_list": [0.1, "auto", "2x"]}
    assert parse_flag("epochs_list=5,10") == {"epochs_list": [5, 10]}
    with pytest.raises(ValueError, match=r"^--sweep 'epochs_list': use KEY=V1,V2"):
        parse_flag("epochs_list")


def test_chosen_column_over_runs(oo):
    from um_plugin.openood.evaluation.sweep_report import chosen_column
    a = {"temperature": 10, "loss_constraint": "2x", "xi": 0.5}
    b = {"temperature": 1, "loss_constraint": 0.3, "xi": 0.3}
    assert chosen_column([a, dict(a)]) == "temperature=10, loss_constraint=2x (xi 0.5)"
    assert chosen_column([a, b]) == ("run 1: temperature=10, loss_constraint=2x (xi 0.5); "
                                     "run 2: temperature=1, loss_constraint=0.3 (xi 0.3)")
    assert chosen_column([{}, {}]) == ""  # no sweep: no column


def test_eval_with_the_sweep_gives_the_evaluators_choice_and_row(oo, tiny_bench, checkout,
                                                                  tmp_path, capsys):
    """`um-openood eval` with the sweep from the YAML, or from --sweep over a plain YAML: the
    Evaluator's choice, metrics and search table; the leaderboard row names the choice."""
    import csv

    from um_plugin.cli import main
    from um_plugin.openood.evaluation.sweep_report import chosen_text
    xis = [0.5, "auto", "2x"]
    swept = _config_root(checkout, tmp_path / "swept", "um", {"loss_constraint_list": xis})
    plain = _config_root(checkout, tmp_path / "plain", "um")
    net = lenet()
    evaluator = _evaluator(oo, tiny_bench, swept, "um_msp", net=copy.deepcopy(net))
    with oo.enable_cpu_fallback():
        metrics = evaluator.eval_ood(progress=False)
    chosen = chosen_text(evaluator.postprocessor.chosen_values())
    assert chosen.startswith("loss_constraint=") and "(xi " in chosen
    common = ["eval", "--cpu", "--id-data", tiny_bench["name"], "--data-root",
              tiny_bench["data_root"], "--network", "lenet", "--postprocessor", "um_msp",
              "--batch-size", "8", "--num-workers", "0"]
    for how, extra in (("yaml", ["--config-root", swept]),
                       ("flag", ["--config-root", plain, "--sweep",
                                 "loss_constraint_list=0.5,auto,2x"])):
        checkpoint = tmp_path / how / "lenet.ckpt"
        checkpoint.parent.mkdir()
        torch.save(net.state_dict(), checkpoint)
        out = tmp_path / f"board_{how}"
        capsys.readouterr()
        assert main(common + extra + ["--root", str(checkpoint), "--out", str(out)]) == 0, how
        printed = capsys.readouterr().out
        assert printed.splitlines()[0].endswith("| chosen |") and chosen in printed
        with open(out / "leaderboard.csv") as f:
            (row,) = list(csv.DictReader(f))
        assert row["chosen"] == chosen, how
        assert float(row["near_AUROC"]) == pytest.approx(metrics.loc["nearood", "AUROC"], abs=1e-9)
        assert float(row["ID_ACC"]) == pytest.approx(metrics.loc["nearood", "ACC"], abs=1e-9)
        with open(out / f"{how}/lenet" / "ood" / "um_msp_search.csv") as f:
            table = list(csv.DictReader(f))
        assert [r["loss_constraint"] for r in table] == ["0.5", "auto", "2x"]
        expected = evaluator.postprocessor.search_table
        assert [float(r["val_AUROC"]) for r in table] == [r["val_AUROC"] for r in expected]
        assert [r["chosen"] for r in table] == [str(r["chosen"]) for r in expected]
    assert main(["gate", str(out / "leaderboard.csv"), "--baseline",
                 str(out / "leaderboard.csv")]) == 0  # the text column is not gated


def test_sweep_flag_is_checked_before_any_work(oo, tiny_bench, checkout, tmp_path, capsys):
    from um_plugin.cli import main
    checkpoint = tmp_path / "lenet.ckpt"
    torch.save(lenet().state_dict(), checkpoint)
    common = ["eval", "--cpu", "--id-data", tiny_bench["name"], "--data-root",
              tiny_bench["data_root"], "--network", "lenet", "--root", str(checkpoint),
              "--config-root", _config_root(checkout, tmp_path / "c", "um")]
    cases = [(["--postprocessor", "um_msp", "--sweep", "loss_constraint_list=huge"],
              "--sweep for um_msp: postprocessor.postprocessor_sweep.loss_constraint_list: 'huge'"),
             (["--postprocessor", "msp", "--sweep", "epochs_list=1,2"],
              "--sweep applies to um_*/umap_* postprocessors"),
             (["--postprocessor", "um_msp", "--sweep", "epochs_list"], "--sweep 'epochs_list': use")]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "postprocessors").exists()


def test_a_cache_made_without_the_sweep_is_not_used_with_it(oo, tiny_bench, checkout, tmp_path,
                                                            capsys):
    """The sweep is in the config hash: --save-score's cache of a plain run is recomputed under
    --sweep; the swept cache, reused, still names the choice and the search in the row."""
    import csv

    from um_plugin.cli import main
    checkpoint = tmp_path / "run" / "lenet.ckpt"
    checkpoint.parent.mkdir()
    torch.save(lenet().state_dict(), checkpoint)
    argv = ["eval", "--cpu", "--id-data", tiny_bench["name"], "--data-root",
            tiny_bench["data_root"], "--network", "lenet", "--postprocessor", "um_msp",
            "--batch-size", "8", "--num-workers", "0", "--root", str(checkpoint), "--save-score",
            "--config-root", _config_root(checkout, tmp_path / "c", "um")]
    runs = []
    for extra in ([], ["--sweep", "loss_constraint_list=0.5,2.0"]):
        for _ in range(1 + bool(extra)):
            out = tmp_path / f"board{len(runs)}"
            assert main(argv + extra + ["--out", str(out)]) == 0
            with open(out / "leaderboard.csv") as f:
                runs.append((next(csv.DictReader(f)), capsys.readouterr().err))
    (plain, _), (swept, said), (again, reused) = runs
    pkl = tmp_path / "run" / "scores" / "um_msp.pkl"
    assert f"recomputing {pkl}: made from other postprocessor config" in said, said
    assert (tmp_path / "run" / "postprocessors" / "um_msp.pkl").is_file()  # searched: kept
    assert "recomputing" not in reused, reused
    assert plain["config_sha256"] != swept["config_sha256"] == again["config_sha256"]
    assert "chosen" not in plain and swept["chosen"] == again["chosen"] != ""
    assert swept["settings"].endswith("; OpenOOD's search over loss_constraint_list=0.5,2.0")
    assert again["near_AUROC"] == swept["near_AUROC"]


def test_fine_tuned_settings_on_disk(oo, tiny_bench, checkout, tmp_path):
    folder = tmp_path / "states"
    root = _config_root(checkout, tmp_path / "c", "um", {"loss_constraint_list": [2.0, 0.4]})
    text = open(f"{root}/postprocessors/um.yml").read()
    open(f"{root}/postprocessors/um.yml", "w").write(text.replace(
        "postprocessor:\n", f"postprocessor:\n  sweep_dir: {folder}\n", 1))
    evaluator = _evaluator(oo, tiny_bench, root, "um_msp")
    search = evaluator.postprocessor.search
    files = [o.state for o in search.outcomes.values()]
    assert files == [str(folder / f"um_msp_setting{i}.pt") for i in range(2)]
    best = next(i for i, r in enumerate(search.table_rows()) if r["chosen"])
    assert _equal(torch.load(files[best], weights_only=True), _state(evaluator.net))
    assert not _equal(*(torch.load(f, weights_only=True) for f in files))
    with open(folder / "um_msp_search.csv") as f:
        assert f.read().splitlines()[0] == ("loss_constraint,xi,val_AUROC,val_ID_ACC,status,"
                                            "chosen")


def test_sweep_needs_openoods_search(oo, tiny_bench, checkout, tmp_path, capsys):
    """Scoring before the search ran is refused (main.py reads APS_mode from the config, so
    null there means no search); APS_mode false runs postprocessor_args and says so."""
    from openood.evaluation_api.postprocessor import get_postprocessor
    from torch.utils.data import DataLoader
    x, y = torch.randn(6, 3, 28, 28), torch.arange(6) % 3
    loader = DataLoader([{"data": a, "label": b} for a, b in zip(x, y)], batch_size=6)
    root = _config_root(checkout, tmp_path / "a", "um", {"loss_constraint_list": [0.5, 1.0]},
                        epochs=1)
    pp = get_postprocessor(root, "um_msp", "tinybench")
    pp.config.output_dir = str(tmp_path / "out")  # as main.py's pipeline config has it
    net = lenet()
    before = _state(net)
    ood = DataLoader([{"data": a, "label": -1} for a in torch.rand(4, 3, 28, 28)], batch_size=4)
    with oo.enable_cpu_fallback():
        pp.setup(net, {"train": loader, "val": loader}, {"val": ood})
        assert _equal(_state(net), before)  # nothing fine-tuned before set_hyperparam
        with pytest.raises(RuntimeError, match=r"has not run; set postprocessor.APS_mode: true"):
            pp.inference(net, loader, progress=False)
        # main.py's own search (its evaluator sets every tied best in turn; the last stays)
        from openood.evaluators.ood_evaluator import OODEvaluator
        OODEvaluator(pp.config).hyperparam_search(net, loader, ood, pp)
    rows = pp.search.table_rows()
    best = max(r["val_AUROC"] for r in rows)
    assert [r["chosen"] for r in rows] == [r is [q for q in rows if q["val_AUROC"] == best][-1]
                                           for r in rows]
    chosen = next(o for s, o in pp.search.outcomes.items() if s == pp.search.current)
    assert _equal(_state(net), chosen.state) and pp.xi == chosen.xi
    with open(tmp_path / "out" / "um_msp_search.csv") as f:
        assert [line.rsplit(",", 1)[1] for line in f.read().splitlines()] == \
            ["chosen"] + [str(r["chosen"]) for r in rows]
    text = open(f"{root}/postprocessors/um.yml").read()
    open(f"{root}/postprocessors/um.yml", "w").write(text.replace("APS_mode: true",
                                                                  "APS_mode: false"))
    pp = get_postprocessor(root, "um_msp", "tinybench")
    assert pp.APS_mode is False
    net = lenet()
    with oo.enable_cpu_fallback():
        pp.setup(net, {"train": loader, "val": loader}, {"val": loader})
    assert "APS_mode is false, so postprocessor_sweep's ['loss_constraint_list'] are not " \
        "searched" in capsys.readouterr().out
    assert not _equal(_state(net), before) and pp.search is None and pp.xi > 0  # 'auto'
