"""Route 1 through OpenOOD's real ``main.py``: the checkpoint OpenOOD's tools read is UM's final
model, and a base that does not fit the images it would be fine-tuned on stops the run.

The 'halves' benchmark (two classes: which half of the image is bright) is class-balanced; a
LeNet trained here on its un-augmented images fits them, but OpenOOD's train preprocessor flips
half of them into the other class.
"""
import glob
import os

import pytest
import torch

from bench_helpers import one_line_error
from openood_fixtures import lenet, make_halves_benchmark, run_main_py, run_python


@pytest.fixture(scope="module")
def halves(oo, checkout, tmp_path_factory):
    """The halves benchmark's dataset YAML and a LeNet checkpoint that fits its plain images."""
    from openood.datasets import get_dataloader
    from openood.preprocessors.test_preprocessor import TestStandardPreProcessor
    from openood.utils import Config

    from um_plugin.openood.registry.datasets import dataset_config, save_yaml
    from um_plugin.openood.settings.loaders import like, test_time_dataset
    root = tmp_path_factory.mktemp("halves")
    bench = make_halves_benchmark(str(root / "data"))
    config = dataset_config(**bench, batch_size=8)
    yml = save_yaml(config, str(root / "halves.yml"), "halves")
    cfg = Config({**config, "preprocessor": {"name": "base"}, "num_workers": 0, "num_gpus": 1,
                  "num_machines": 1})
    cfg.parse_refs()
    train = get_dataloader(cfg)["train"]
    plain = like(train, test_time_dataset(train, cfg, "test"), "test", shuffle=True)
    assert isinstance(plain.dataset.transform_image, TestStandardPreProcessor)
    net = lenet(2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        for batch in plain:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(batch["data"]), batch["label"]).backward()
            opt.step()
    with torch.no_grad():  # softer logits, same predictions: a loss of 0.3, not saturated at 0
        net.eval()
        batches = list(plain)
        logits = torch.cat([net(b["data"]) for b in batches])
        labels = torch.cat([b["label"] for b in batches])
        assert (logits.argmax(1) == labels).all()
        lo, hi = 0.0, 1.0
        for _ in range(50):  # the cross-entropy falls as the logits grow
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if torch.nn.functional.cross_entropy(mid * logits, labels) > 0.3 \
                else (lo, mid)
        net.classifier1.weight.mul_(hi)
        net.classifier1.bias.mul_(hi)
    ckpt = root / "base.ckpt"
    torch.save(net.state_dict(), ckpt)
    return {"yml": yml, "ckpt": str(ckpt), "root": root, "bench": bench}


def _main_py(checkout, halves, trainer, out, *extra, expect=0):
    from um_plugin.shipped import configs_root
    return run_main_py(checkout, halves["yml"], "lenet",
                       os.path.join(configs_root(), f"train_{trainer}.yml"),
                       "--network.checkpoint", halves["ckpt"], "--num_workers", "0",
                       "--output_dir", out, *extra, cwd=halves["root"], expect=expect)


@pytest.mark.slow
def test_a_base_that_does_not_fit_the_augmented_images_stops_main_py_in_one_line(
        oo, checkout, halves, tmp_path):
    proc = _main_py(checkout, halves, "um", tmp_path / "results", expect=2)
    lines = [line for line in proc.stderr.splitlines() if "error" in line]  # no traceback
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    assert lines[0].startswith("um-openood: error: the model's accuracy on the training images "
                               "with train-time preprocessing")
    assert "100.0% on ID validation data" in lines[0]
    assert "Fix: set trainer.trainer_args.preprocessing: test" in lines[0]
    assert "um epoch" not in proc.stderr and not glob.glob(str(tmp_path / "results/**/*.ckpt"),
                                                           recursive=True)
    [marker] = glob.glob(str(tmp_path / "results" / "*" / "s0" / "um-plugin-stopped.txt"))
    with open(marker) as f:
        assert f.read().startswith("fit check: the model's accuracy on the training images")
    from um_plugin.leaderboard.runs import model_from_root
    with pytest.raises(ValueError, match=r"every run folder was stopped \(--root .*: s0/ "
                                         r"skipped, its run was stopped: fit check: "):
        model_from_root(os.path.dirname(os.path.dirname(marker)))


def _route1_argv(checkout, halves, out, *extra, trainer="um", checkpoint=True):
    from um_plugin.shipped import configs_root
    return ["run", "--cpu", os.path.join(checkout, "main.py"), "--config", halves["yml"],
            os.path.join(checkout, "configs/networks/lenet.yml"),
            os.path.join(configs_root(), f"train_{trainer}.yml"),
            os.path.join(checkout, "configs/preprocessors/base_preprocessor.yml"),
            *(["--network.checkpoint", halves["ckpt"]] if checkpoint else []),
            "--num_workers", "0", "--output_dir", str(out), *extra]


@pytest.mark.parametrize("extra, says", [
    (["--trainer.name", "umm"], "--trainer.name 'umm' is not a trainer OpenOOD or um-plugin knows"),
    (["--network.checkpoint", "MISSING"], "--network.checkpoint 'MISSING' does not exist"),
    (["--network.checkpoint", "TRUNCATED"], "cannot be read"),
    (["--network.checkpoint", "none"], "the um trainer fine-tunes a trained network; pass "
                                       "--network.checkpoint PATH"),
    (["--network.checkpoint", "FIVE", "--network.num_classes", "5"],
     "--network.num_classes 5 differs from dataset.num_classes 2"),
    (["--network.checkpoint", "FIVE"], "--network.checkpoint: checkpoint 'FIVE' does not fit "
                                       "--network LeNet: shape of 'fc.weight' (5, 84)"),
    (["--dataset.train.batch_size", "0"], "--dataset.train.batch_size must be an integer >= 1, "
                                          "got 0"),
    (["--trainer.trainer_args.xi_draws", "0"], "trainer.trainer_args.xi_draws: draws must be an "
                                               "integer >= 1, got 0 (random masks averaged"),
    (["--dataset.train.data_dir", "NOWHERE"], "--dataset.train.data_dir: 'NOWHERE' does not exist"),
])
def test_route1_fields_that_would_end_in_a_traceback_stop_in_one_line(
        oo, checkout, halves, tmp_path, capsys, extra, says):
    from um_plugin.cli import main
    names = {"MISSING": str(tmp_path / "missing.ckpt"), "TRUNCATED": str(tmp_path / "cut.ckpt"),
             "FIVE": str(tmp_path / "five.ckpt"), "NOWHERE": str(tmp_path / "nowhere")}
    with open(halves["ckpt"], "rb") as f:
        (tmp_path / "cut.ckpt").write_bytes(f.read()[:300])
    torch.save(lenet(5).state_dict(), tmp_path / "five.ckpt")
    extra = [names.get(e, e) for e in extra]
    says = says.replace("'MISSING'", repr(names["MISSING"])).replace(
        "'FIVE'", repr(names["FIVE"])).replace("'NOWHERE'", repr(names["NOWHERE"]))
    cwd = os.getcwd()
    os.chdir(halves["root"])
    try:
        code = main(_route1_argv(checkout, halves, tmp_path / "results", *extra))
    finally:
        os.chdir(cwd)
    assert code == 2
    one_line_error(capsys, "um-openood", says)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["um", "umap"])
def test_best_ckpt_is_the_final_epochs_model(oo, checkout, halves, tmp_path, trainer):
    # xi = 2 drives the training loss up to 2 (above chance for 2 classes), so ID validation
    # accuracy falls epoch by epoch and OpenOOD's own choice would be an early epoch
    out = tmp_path / "results"
    lr = {"um": "0.001", "umap": "20"}[trainer]
    proc = _main_py(checkout, halves, trainer, out, "--trainer.trainer_args.preprocessing", "test",
                    "--trainer.trainer_args.loss_constraint", "2.0", "--optimizer.num_epochs", "4",
                    "--optimizer.lr", lr, "--dataset.train.batch_size", "8")
    [run] = glob.glob(str(out / "*" / "s0"))
    [last] = glob.glob(os.path.join(run, "last_epoch4_acc*.ckpt"))
    [best_acc] = glob.glob(os.path.join(run, "best_epoch*_acc*.ckpt"))
    assert not os.path.basename(best_acc).startswith("best_epoch4_"), proc.stdout[-3000:]
    best = torch.load(os.path.join(run, "best.ckpt"), weights_only=True)
    from um_plugin.leaderboard.provenance import sha256_file
    with open(os.path.join(run, "best.ckpt.sha256")) as f:
        assert f.read() == f"{sha256_file(os.path.join(run, 'best.ckpt'))}  best.ckpt\n"
    final = torch.load(last, weights_only=True)
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    early = torch.load(best_acc, weights_only=True)
    assert any(not torch.equal(early[k], final[k]) for k in early)
    assert "best.ckpt holds the final epoch's model (epoch 4" in proc.stdout
    assert "differs from the authors' setting in: epochs 4" in proc.stdout


@pytest.mark.slow
def test_spawned_workers_get_the_final_model_recorder_too(oo):
    """num_gpus > 1: OpenOOD's launch spawns fresh interpreters, which unpickle our worker
    (importing um_plugin.openood.registry.spawn, hence registering); the recorder the train pipeline
    builds there is ours. Checked in a fresh interpreter doing just that import."""
    proc = run_python("""
        import pickle, um_plugin.openood.registry.spawn as s
        worker = pickle.loads(pickle.dumps(s.registered_worker))
        import openood.pipelines.train_pipeline as tp
        from openood.utils import Config
        from um_plugin.openood.training.recorder import FinalModelRecorder
        config = Config({'trainer': {'name': 'umap'}, 'recorder': {'name': 'base'},
                         'output_dir': '.'})
        assert isinstance(tp.get_recorder(config), FinalModelRecorder)
        config.trainer.name = 'base'
        assert type(tp.get_recorder(config)).__name__ == 'BaseRecorder'
        print('ok')
    """, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_another_recorder_for_um_is_refused_in_one_line(oo):
    from openood.recorders import get_recorder
    from openood.utils import Config

    from um_plugin.openood.settings.options import RouteStop
    config = Config({"trainer": {"name": "um"}, "recorder": {"name": "cider"}, "output_dir": "."})
    with pytest.raises(RouteStop, match=r"^recorder.name: the um trainer needs recorder 'base' .*"
                                        r"got 'cider'$"):
        get_recorder(config)


def test_eval_with_um_stops_in_one_line_when_the_base_does_not_fit_the_augmented_images(
        oo, halves, tmp_path, capsys):
    from um_plugin.cli import main
    from um_plugin.openood.registry.dataset_file import write_benchmark_file
    ood = halves["bench"]["id_test"]  # the fit check runs before any OOD set is read
    bench = write_benchmark_file({**halves["bench"], "name": "halvesfit", "ood_val": ood,
                                  "near_ood": {"near": ood}, "far_ood": {"far": ood}},
                                 str(tmp_path / "bench.yml"))
    try:
        code = main(["eval", "--cpu", "--benchmark", bench, "--network", "lenet",
                     "--num-classes", "2", "--root", halves["ckpt"], "--postprocessor", "um_msp",
                     "--num-workers", "0", "--out", str(tmp_path / "board")])
    finally:
        from um_plugin.openood.registry.datasets import _OURS
        if "halvesfit" in _OURS:
            oo.unregister_benchmark("halvesfit")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("um-openood: error: the model's accuracy on the "
                                            "training images with train-time preprocessing")
    assert "Traceback" not in "\n".join(err)
    assert "Fix: pass --set preprocessing=test, or pass --set fit_check=warn" in err[-1]
    try:  # the fix it names works
        code = main(["eval", "--cpu", "--benchmark", bench, "--network", "lenet",
                     "--root", halves["ckpt"], "--postprocessor", "um_msp", "--num-workers", "0",
                     "--set", "preprocessing=test", "--set", "epochs=1", "--set", "batch_size=8"])
    finally:
        oo.unregister_benchmark("halvesfit")
    out = capsys.readouterr().out
    assert code == 0 and "/base | um_msp | 1 |" in out, out
