"""`um-openood run` drives OpenOOD's own main.py and scripts/eval_ood.py, unchanged, on CPU."""
import glob
import os
import shutil

import pytest
import torch

from bench_helpers import one_line
from openood_fixtures import (lenet, main_py_argv, make_openood_layout, make_tiny_benchmark,
                              run_cli, run_main_py)


def test_configs_listing_and_install(oo, tmp_path):
    from um_plugin.cli import main
    from um_plugin.shipped import install_configs, shipped_configs
    assert shipped_configs() == ["networks/densenet_bc100.yml",
                                 "postprocessors/um.yml", "postprocessors/umap.yml",
                                 "train_um.yml", "train_um_oe.yml", "train_umap.yml",
                                 "train_umap_oe.yml"]
    written = install_configs(str(tmp_path))
    assert sorted(os.path.relpath(p, tmp_path) for p in written) == [
        "networks/densenet_bc100.yml", "pipelines/train/train_um.yml", "pipelines/train/train_um_oe.yml",
        "pipelines/train/train_umap.yml", "pipelines/train/train_umap_oe.yml",
        "postprocessors/um.yml", "postprocessors/umap.yml"]
    assert install_configs(str(tmp_path)) == []  # same content: no-op
    (tmp_path / "postprocessors" / "um.yml").write_text("edited")
    with pytest.raises(FileExistsError, match="pass --force"):
        install_configs(str(tmp_path))
    assert main(["install-configs", str(tmp_path), "--force"]) == 0
    with pytest.raises(FileNotFoundError, match="not a folder"):
        install_configs(str(tmp_path / "nope"))
    fresh = tmp_path / "fresh"
    (fresh / "pipelines" / "train").mkdir(parents=True)
    (fresh / "pipelines" / "train" / "train_umap.yml").write_text("mine")
    with pytest.raises(FileExistsError, match="train_umap.yml"):
        install_configs(str(fresh))
    assert not (fresh / "postprocessors").exists()  # checked before anything was written


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["um"])  # umap: see the end-to-end test below
def test_main_py_on_a_registered_offline_benchmark_with_the_written_dataset_yaml(
        oo, checkout, tmp_path, capsys, trainer):
    """Route 1 on an offline benchmark: `um-openood dataset-config` writes the dataset YAML
    (no rebuilding it by hand from per-split overrides), and main.py runs on it."""
    from um_plugin.cli import main
    from um_plugin.shipped import configs_root

    data = tmp_path / "data"
    make_tiny_benchmark(str(data), name="tinymnist", num_classes=10, size=28, per_split=20)
    yml = tmp_path / "tinymnist.yml"
    assert main(["dataset-config", "tinymnist", "--data-root", str(data), "--num-classes", "10",
                 "--image-size", "28", "--batch-size", "8", "--out", str(yml)]) == 0
    assert capsys.readouterr().out.strip() == str(yml)
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save(lenet(10).state_dict(), ckpt)
    out = run_main_py(checkout, yml, "lenet", os.path.join(configs_root(), f"train_{trainer}.yml"),
                      "--network.checkpoint", ckpt, "--num_workers", "0",
                      "--optimizer.num_epochs", "2", "--output_dir", tmp_path / "results",
                      cwd=tmp_path).stdout
    assert "loss constraint estimated" in out and "Completed!" in out
    run_dirs = glob.glob(str(tmp_path / "results" / f"tinymnist_lenet_{trainer}_xiauto*" / "s0"))
    assert len(run_dirs) == 1, os.listdir(tmp_path / "results")
    for pattern in ("best.ckpt", "last_epoch2_acc*.ckpt"):
        [path] = glob.glob(os.path.join(run_dirs[0], pattern))
        fresh = lenet(10)
        fresh.load_state_dict(torch.load(path, map_location="cpu"), strict=True)


def test_register_benchmark_writes_the_same_dataset_yaml(oo, tmp_path):
    import yaml

    from um_plugin.cli import main
    kwargs = make_tiny_benchmark(str(tmp_path / "data"), name="yamlbench")
    registered = tmp_path / "registered.yml"
    oo.register_benchmark(**kwargs, dataset_yaml=str(registered))
    try:
        assert main(["dataset-config", "yamlbench", "--data-root", kwargs["data_root"],
                     "--num-classes", "3", "--image-size", "28",
                     "--out", str(tmp_path / "cli.yml")]) == 0
        section = yaml.safe_load(registered.read_text())["dataset"]
        assert section == yaml.safe_load((tmp_path / "cli.yml").read_text())["dataset"]
        assert section["train"]["imglist_pth"] == os.path.join(kwargs["data_root"], kwargs["id_train"])
        assert section["train"]["shuffle"] is True and section["num_classes"] == 3
        assert section["normalization_type"] == "default"  # not in OpenOOD's dict: mean = std = 0.5
    finally:
        oo.unregister_benchmark("yamlbench")


@pytest.mark.parametrize("args, says", [
    (["run", "nosuch.py"], "script 'nosuch.py' not found"),
    (["install-configs", "no/such/folder"], "'no/such/folder' is not a folder"),
    (["dataset-config", "x", "--data-root", "nowhere", "--num-classes", "3", "--image-size", "8",
      "--out", "x.yml"], "--data-root 'nowhere' has no benchmark_imglist/"),
])
def test_bad_arguments_end_in_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, args, says)


@pytest.mark.slow
def test_umap_train_then_stock_eval_ood_script(oo, checkout, tmp_path):
    """Route 1 end to end on a miniature offline CIFAR-10 tree: main.py trains UMAP from a
    ResNet18_32x32 checkpoint, then the stock scripts/eval_ood.py (symlinked, so its ROOT_DIR
    is our temp tree) evaluates the saved best.ckpt with --postprocessor umap_ebo."""
    from openood.networks import ResNet18_32x32
    from um_plugin.shipped import install_configs

    tree = tmp_path / "OpenOOD"
    (tree / "scripts").mkdir(parents=True)
    os.symlink(os.path.join(checkout, "scripts", "eval_ood.py"), tree / "scripts" / "eval_ood.py")
    (tree / "configs" / "postprocessors").mkdir(parents=True)
    shutil.copy(os.path.join(checkout, "configs", "postprocessors", "ebo.yml"),
                tree / "configs" / "postprocessors")
    install_configs(str(tree / "configs"))
    umap_yml = tree / "configs" / "postprocessors" / "umap.yml"
    umap_yml.write_text(umap_yml.read_text().replace("epochs: 100", "epochs: 1"))
    make_openood_layout(str(tree / "data"), "cifar10", size=32, per_list=8)
    torch.manual_seed(0)
    torch.save(ResNet18_32x32(num_classes=10).state_dict(), tmp_path / "pretrained.ckpt")

    # cifar10.yml reads ./data/..., so running in the tree needs no data overrides
    run_main_py(checkout, os.path.join(checkout, "configs/datasets/cifar10/cifar10.yml"),
                "resnet18_32x32", tree / "configs/pipelines/train/train_umap.yml",
                "--network.checkpoint", tmp_path / "pretrained.ckpt", "--num_workers", "0",
                "--optimizer.num_epochs", "1", "--dataset.train.batch_size", "8", cwd=tree)
    [run] = glob.glob(str(tree / "results" / "cifar10_resnet18_32x32_umap_xiauto_keep0.8_*"))
    fresh = ResNet18_32x32(num_classes=10)
    fresh.load_state_dict(torch.load(os.path.join(run, "s0", "best.ckpt")), strict=True)

    out = run_cli("run", "--cpu", str(tree / "scripts" / "eval_ood.py"), "--root", run,
                  "--postprocessor", "umap_ebo", "--id-data", "cifar10", "--batch-size", "16",
                  cwd=tmp_path).stdout
    assert "loss constraint estimated" in out
    table = out[out.rindex("FPR@95"):]
    for row in ("cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"):
        assert row in table
    assert "nan" not in table.lower()
    assert os.path.isfile(os.path.join(run, "s0", "postprocessors", "umap_ebo.pkl"))  # APS done


def test_run_registers_and_cpu_only_on_request(oo, tmp_path):
    from um_plugin.cli import main
    from um_plugin.openood.cpu import cpu_fallback_enabled, disable_cpu_fallback
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, torch, openood.trainers.utils as u\n"
        "assert hasattr(u.get_trainer, '__um_plugin_wraps__')\n"
        "print('argv', sys.argv[1:], 'cpu', torch.Tensor.cuda.__name__ == '_stay')\n")
    with pytest.MonkeyPatch.context() as mp:  # as on a GPU machine, where --cpu is not needed
        mp.setattr(torch.cuda, "is_available", lambda: True)
        assert main(["run", str(script), "--x", "1"]) == 0
    assert not cpu_fallback_enabled()  # GPU code paths untouched without --cpu
    try:
        main(["run", "--cpu", str(script)])
        assert cpu_fallback_enabled()
    finally:
        disable_cpu_fallback()
    assert main(["run", "nope.py"]) == 2


def _one_line_error(capsys, argv, says):
    """``um-openood argv`` in this process: exit 2 and one ``um-openood: error:`` line saying
    ``says``, no traceback; what it printed on stdout."""
    from um_plugin.cli import main
    assert main(argv) == 2
    out, err = capsys.readouterr()
    one_line(err, says, prefix="um-openood: error: ")
    return out


def test_run_without_a_gpu_and_without_cpu_names_the_flag(oo, tmp_path, monkeypatch, capsys):
    """Without a GPU, a script that needs one stops in one line that names --cpu (not the
    script's CUDA traceback)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script = tmp_path / "needs_gpu.py"
    script.write_text("import torch\ntorch.zeros(1).cuda()\nprint('ran')\n")
    out = _one_line_error(capsys, ["run", str(script)], "add --cpu")
    assert "ran" not in out


def _route1(checkout, tmp_path, *pipeline, extra=()):
    """``run --cpu main.py --config`` CIFAR-10, ResNet-18, ``pipeline`` YAMLs, preprocessor."""
    return main_py_argv(checkout, os.path.join(checkout, "configs/datasets/cifar10/cifar10.yml"),
                        "resnet18_32x32", pipeline, "--output_dir", tmp_path / "results", *extra)


@pytest.mark.parametrize("pipeline, extra, says", [
    ("train_umap.yml", ["--trainer.trainer_args.keep_ratio", "0"],
     "trainer.trainer_args.keep_ratio: keep_ratio must be in (0, 1]"),
    ("train_um.yml", ["--trainer.trainer_args.loss_constraint", "abc"],
     "trainer.trainer_args.loss_constraint: "),
    ("train_um.yml", ["--optimizer.name", "adam"], "optimizer.name: the um trainer optimises with SGD"),
    ("train_umap.yml", ["--trainer.trainer_args.keep_ration", "0.5"],
     "--trainer.trainer_args.keep_ration: no such key in the config merged from"),
    ("train_um.yml", ["--trainer.trainer_args.keep_ratio", "0.5"],
     "'trainer.trainer_args' has ['beta', 'fit_check', 'fit_margin', 'loss_constraint', "),
    ("train_um.yml", ["--optimizer.lr", "fast"], "--optimizer.lr: 'fast' is not a float"),
    ("train_umap.yml", ["--trainer.trainer_args.freeze_weights", "maybe"],
     "--trainer.trainer_args.freeze_weights: 'maybe' is not a boolean"),
    ("nosuch.yml", [], "nosuch.yml' not found"),
])
def test_route1_config_errors_stop_in_one_line_before_any_work(
        oo, checkout, tmp_path, monkeypatch, capsys, pipeline, extra, says):
    """OpenOOD's own config reader and our option checks run before main.py: a bad value or
    key is one line and exit 2, and no output folder is made."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    from um_plugin.shipped import configs_root
    path = os.path.join(tmp_path if pipeline == "nosuch.yml" else configs_root(), pipeline)
    out = _one_line_error(capsys, _route1(checkout, tmp_path, path, extra=extra), says)
    assert not (tmp_path / "results").exists() and out == ""


def test_route1_bad_yaml_values_stop_in_one_line(oo, checkout, tmp_path, monkeypatch, capsys):
    """A bad value inside the YAML (trainer, or a um/umap postprocessor a test pipeline uses)."""
    from um_plugin.shipped import configs_root
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "train_um.yml"
    mine.write_text(open(os.path.join(configs_root(), "train_um.yml")).read()
                    .replace("xi_draws: 1", "xi_draws: many"))
    _one_line_error(capsys, _route1(checkout, tmp_path, str(mine)),
                    "trainer.trainer_args.xi_draws: draws must be an integer >= 1, got 'many'")
    argv = _route1(checkout, tmp_path, os.path.join(checkout, "configs/pipelines/test/test_ood.yml"),
                   os.path.join(configs_root(), "postprocessors", "umap.yml"),
                   extra=["--postprocessor.postprocessor_args.epochs", "0"])
    _one_line_error(capsys, argv, "postprocessor.postprocessor_args.epochs")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["install-configs"], ["configs"], ["dataset-config"]])
def test_help_is_plain_text(capsys, command):
    """`um-openood --help` is plain text, without the module docstring's reST markup."""
    from um_plugin.cli import main
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "usage: um-openood" in out
    assert "``" not in out and ":func:" not in out


def test_ctrl_c_ends_in_one_line_and_exit_130(monkeypatch, capsys):
    from um_plugin import cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli.configs, "run", interrupted)
    assert cli.main(["configs"]) == 130
    one_line(capsys.readouterr().err, prefix="um-openood: interrupted (Ctrl-C)")


def test_help_and_argument_errors_import_neither_torch_nor_openood(tmp_path):
    """`python -m um_plugin.cli` is the console script; --help and an eval argument error stop
    before torch or OpenOOD is imported."""
    from openood_fixtures import run_python
    proc = run_python(f"""
        import sys
        from um_plugin.cli import main
        assert main(['eval', '--root', {str(tmp_path / 'nowhere')!r}, '--id-data', 'x']) == 2
        assert main(['gate', 'x.csv']) == 2
        try:
            main(['eval', '--help'])
        except SystemExit as exc:
            assert exc.code == 0
        print(sorted({{'torch', 'openood'}} & set(sys.modules)))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "is neither a run folder nor a checkpoint file" in proc.stderr
    assert "gate needs --baseline CSV or --versus MODEL" in proc.stderr
    import subprocess
    import sys
    from openood_fixtures import checkout_env
    module = subprocess.run([sys.executable, "-m", "um_plugin.cli", "gate", "x.csv"],
                            env=checkout_env(), capture_output=True, text=True, timeout=120)
    assert module.returncode == 2 and module.stderr.startswith("um-openood: error: gate needs")
