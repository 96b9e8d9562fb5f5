"""The um_oe / umap_oe trainers: OpenOOD's oe trainer contract through the one engine, and a
tiny benchmark with an OE split trained by OpenOOD's real main.py with train_um_oe.yml."""
import glob
import os

import pytest
import torch
from torch.utils.data import DataLoader

from core_helpers import CountingLoader
from openood_fixtures import lenet, make_tiny_benchmark, run_cli, write_images
from test_openood_trainers import _Dicts


def _oe_config(name, epochs=2, outlier_loss="oe", lambda_oe=0.5, pipeline="train_oe",
               splits=("train", "oe"), **trainer_args):
    from openood.utils import Config
    args = {"loss_constraint": 0.3, "outlier_loss": outlier_loss, **trainer_args}
    return Config({"trainer": {"name": name, "lambda_oe": lambda_oe, "trainer_args": args},
                   "pipeline": {"name": pipeline}, "dataset": {"split_names": list(splits)},
                   "optimizer": {"name": "sgd", "num_epochs": epochs, "lr": 0.01,
                                 "momentum": 0.9, "weight_decay": 0.0001}})


def _loaders():
    train = DataLoader(_Dicts(32), batch_size=8, shuffle=True)
    outliers = CountingLoader(DataLoader(_Dicts(16, seed=5), batch_size=8, shuffle=True))
    return train, outliers


@pytest.mark.parametrize("name, loss", [("um_oe", "oe"), ("umap_oe", "energy")])
def test_oe_trainers_draw_outliers_through_the_engine(oo, name, loss, capsys):
    from openood.trainers import get_trainer
    train, outliers = _loaders()
    trainer = get_trainer(lenet(), [train, outliers], None, _oe_config(name, outlier_loss=loss))
    assert type(trainer).__name__ == {"um_oe": "UMOETrainer", "umap_oe": "UMAPOETrainer"}[name]
    assert trainer.tuner.config.outlier_loss == loss
    for epoch in (1, 2):
        _, metrics = trainer.train_epoch(epoch)
        assert metrics["epoch_idx"] == epoch and metrics["loss"] > 0
    assert outliers.seen == 2 * len(train)  # one outlier batch per step, the 2 batches cycled
    log = capsys.readouterr().out
    assert f"the {name} trainer differs from the authors' setting in: epochs 2 (authors: 10)" in log
    assert "OE batch_size 8 (authors: 256" in log and "loss_constraint 0.3" in log


def test_oe_trainer_settings_are_checked_in_one_line(oo):
    from openood.trainers import get_trainer
    train, outliers = _loaders()
    with pytest.raises(ValueError, match=r"^pipeline.name: the um_oe trainer needs 'train_oe'"):
        get_trainer(lenet(), [train, outliers], None, _oe_config("um_oe", pipeline="train"))
    with pytest.raises(ValueError, match=r"^dataset.split_names: the um_oe trainer .* 'oe' split"):
        get_trainer(lenet(), [train, outliers], None,
                    _oe_config("um_oe", splits=("train", "val", "test")))
    with pytest.raises(ValueError, match=r"^trainer.trainer_args.outlier_loss: .*'none'"):
        get_trainer(lenet(), [train, outliers], None, _oe_config("um_oe", outlier_loss="none"))
    with pytest.raises(ValueError, match=r"^trainer.lambda_oe: lambda_oe must be .*>= 0.*-1"):
        get_trainer(lenet(), [train, outliers], None, _oe_config("um_oe", lambda_oe=-1))
    with pytest.raises(ValueError, match=r"unknown keys \['m_inn'\]"):
        get_trainer(lenet(), [train, outliers], None, _oe_config("umap_oe", m_inn=-3))
    from um_plugin.openood.training.script_config import check_methods  # `um-openood run`, before main.py
    with pytest.raises(ValueError, match=r"^dataset.split_names: the umap_oe trainer"):
        check_methods(_oe_config("umap_oe", splits=("train", "val")))
    config = _oe_config("um_oe")
    config.trainer.name = "um"
    with pytest.raises(ValueError, match=r"^trainer 'um' takes one training loader, but pipeline "
                                         r"train_oe gave 2; use trainer um_oe"):
        get_trainer(lenet(), [train, outliers], None, config)
    del config.trainer.trainer_args["outlier_loss"]
    with pytest.raises(ValueError, match=r"^pipeline.name: the um trainer takes no OE loader"):
        get_trainer(lenet(), train, None, config)


@pytest.fixture(scope="module")
def oe_bench(oo, tmp_path_factory):
    """A tiny benchmark, its OE list of noise images, and a dataset YAML written by the CLI."""
    root = tmp_path_factory.mktemp("oe_bench")
    data = str(root / "data")
    bench = make_tiny_benchmark(data, per_split=24)
    oe_list = write_images(data, bench["data_dir"], "oe/train",
                           "benchmark_imglist/tinybench/train_oe.txt", 16, 28, 3, 40, ood=True)
    yml = str(root / "tinybench_oe.yml")
    from um_plugin.cli import main
    assert main(["dataset-config", "tinybench", "--data-root", data, "--num-classes", "3",
                 "--image-size", "28", "--oe", oe_list, "--batch-size", "8", "--out", yml]) == 0
    ckpt = str(root / "base.ckpt")
    torch.save(lenet().state_dict(), ckpt)
    return {"root": root, "yml": yml, "ckpt": ckpt}


def test_dataset_config_writes_the_oe_split(oe_bench):
    import yaml
    with open(oe_bench["yml"]) as f:
        dataset = yaml.safe_load(f)["dataset"]
    assert dataset["split_names"] == ["train", "oe", "val", "test"]
    assert dataset["oe"]["imglist_pth"].endswith("benchmark_imglist/tinybench/train_oe.txt")
    assert dataset["oe"]["shuffle"] is True and dataset["oe"]["batch_size"] == 8


@pytest.mark.slow
def test_main_py_trains_um_oe_on_a_benchmark_with_an_oe_split(oe_bench, checkout, tmp_path):
    from um_plugin.shipped import configs_root
    out = tmp_path / "results"
    proc = run_cli("run", "--cpu", os.path.join(checkout, "main.py"), "--config", oe_bench["yml"],
                   os.path.join(checkout, "configs/networks/lenet.yml"),
                   os.path.join(configs_root(), "train_um_oe.yml"),
                   os.path.join(checkout, "configs/preprocessors/base_preprocessor.yml"),
                   "--network.checkpoint", oe_bench["ckpt"], "--num_workers", "0",
                   "--optimizer.num_epochs", "2", "--dataset.train.batch_size", "8",
                   "--dataset.oe.batch_size", "8", "--trainer.trainer_args.fit_check", "warn",
                   "--output_dir", str(out), cwd=oe_bench["root"])
    assert ("the um_oe trainer differs from the authors' setting in: epochs 2 (authors: 10); "
            "batch_size 8 (authors: 256); OE batch_size 8") in proc.stdout, proc.stdout[-3000:]
    assert "fit_check 'warn'" in proc.stdout
    assert "on ID validation data" in proc.stdout  # train_oe passes none: the trainer builds it
    [run] = glob.glob(str(out / "*um_oe_oe_lam0.5*" / "s0"))
    [last] = glob.glob(os.path.join(run, "last_epoch2_acc*.ckpt"))
    best = torch.load(os.path.join(run, "best.ckpt"), weights_only=True)
    final = torch.load(last, weights_only=True)
    assert all(torch.equal(best[k], final[k]) for k in final)  # the final model, as for um
    base = torch.load(oe_bench["ckpt"], weights_only=True)
    assert any(not torch.equal(base[k], final[k]) for k in base)


@pytest.mark.parametrize("name", ["um_oe", "umap_oe"])
def test_the_shipped_oe_yamls_are_the_authors_oe_setting(oo, name):
    from openood.utils import Config

    from um_plugin.openood.settings.options import trainer_options
    from um_plugin.openood.settings.presets import differences
    from um_plugin.shipped import configs_root
    config = Config(os.path.join(configs_root(), f"train_{name}.yml"))
    config.dataset.split_names = ["train", "oe", "val", "test"]
    options = trainer_options(config, name)
    fc = options.finetune
    assert (fc.epochs, fc.lr, fc.outlier_loss, fc.lambda_oe, fc.nesterov) == (10, 0.01, "oe", 0.5, False)
    assert differences(options, config.dataset.train.batch_size,
                       config.dataset.oe.batch_size) == []
    config.trainer.trainer_args.outlier_loss = "energy"
    fc = trainer_options(config, name).finetune
    assert (fc.outlier_loss, fc.m_in, fc.m_out, fc.energy_beta) == ("energy", -25.0, -7.0, 0.1)
