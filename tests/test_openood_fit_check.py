"""A model that does not fit the images it would be fine-tuned on stops the run before any
step (``fit_check: stop``), or is said loudly (``warn``); ``preprocessing`` picks those images
for ξ and fine-tuning alike.

The 'halves' benchmark tells its two classes apart by which half of the image is bright, so
OpenOOD's own train preprocessor (random horizontal flip) turns one class into the other for
half the images: a base that fits the un-augmented images (here built to, as one trained
without augmentation would) scores ~50% there and 100% on ID validation data. The loaders
are OpenOOD's own, built by ``get_dataloader`` from the dataset YAML this project writes.
"""
import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench_helpers import one_line
from openood_fixtures import make_halves_benchmark, write_config_root


class HalvesNet(nn.Module):
    """Class 0 if the left half is brighter, class 1 if the right half is."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(10 * torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x):
        gray = x.mean(1)
        half = gray.shape[-1] // 2
        return self.fc(torch.stack([gray[..., :half].mean((1, 2)), gray[..., half:].mean((1, 2))], 1))


def _openood(tmp_path, **trainer_args):
    """OpenOOD's config and loaders for the halves benchmark, as main.py builds them."""
    from openood.datasets import get_dataloader
    from openood.utils import Config

    from um_plugin.openood.registry.datasets import dataset_config
    bench = make_halves_benchmark(str(tmp_path))
    config = Config({**dataset_config(**bench, batch_size=8, eval_batch_size=8),
                     "preprocessor": {"name": "base"}, "num_workers": 0, "num_gpus": 1,
                     "num_machines": 1,
                     "trainer": {"name": "um", "trainer_args": trainer_args},
                     "optimizer": {"name": "sgd", "num_epochs": 1, "lr": 0.01, "momentum": 0.9,
                                   "weight_decay": 0.0}})
    config.parse_refs()
    return config, get_dataloader(config)


def _images_seen(model):
    """Every image the model is fed, split by train/eval mode (a forward pre-hook)."""
    seen = {"train": [], "eval": []}
    model.register_forward_pre_hook(
        lambda module, args: seen["train" if module.training else "eval"].extend(args[0].clone()))
    return seen


def _test_time_images(config):
    from openood.datasets.imglist_dataset import ImglistDataset
    from openood.preprocessors.test_preprocessor import TestStandardPreProcessor
    split = config.dataset.train
    plain = ImglistDataset("halves_train", split.imglist_pth, split.data_dir, 2,
                           TestStandardPreProcessor(config), TestStandardPreProcessor(config))
    return plain, {tuple(plain[i]["data"].flatten().tolist()) for i in range(len(plain))}


@pytest.mark.parametrize("xi", ["auto", 0.2])
def test_a_model_that_does_not_fit_the_augmented_images_stops_before_any_step(oo, tmp_path, xi):
    from openood.trainers import get_trainer
    config, loaders = _openood(tmp_path, loss_constraint=xi)  # preprocessing: train, the default
    model = HalvesNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _images_seen(model)
    torch.manual_seed(0)  # the flips
    with pytest.raises(oo.FitCheckError) as info:
        get_trainer(model, loaders["train"], loaders["val"], config)
    message = one_line(str(info.value), "100.0% on ID validation data")
    assert "trainer.trainer_args.preprocessing: train) is 5" in message  # ~50% on flipped images
    assert "Fix: set trainer.trainer_args.preprocessing: test" in message
    assert "fit_check: warn" in message
    assert seen["train"] == []  # not one training step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_check_warn_goes_on_and_says_so(oo, tmp_path, capsys):
    from openood.trainers import get_trainer
    config, loaders = _openood(tmp_path, fit_check="warn")
    torch.manual_seed(0)
    with pytest.warns(oo.FitCheckWarning, match=r"preprocessing: test"):
        trainer = get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)
    assert "WARNING (fit_check: warn, going on)" in capsys.readouterr().out
    assert trainer.xi > 1.0  # a loss the base never had on its own images


def test_test_preprocessing_gives_xi_and_every_fine_tuning_batch_test_time_images(oo, tmp_path):
    from openood.trainers import get_trainer

    from um_plugin.core.xi import estimate_xi
    config, loaders = _openood(tmp_path, preprocessing="test")
    model = HalvesNet()
    seen = _images_seen(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", oo.FitCheckWarning)
        trainer = get_trainer(model, loaders["train"], loaders["val"], config)
        _, metrics = trainer.train_epoch(1)
    plain, test_time = _test_time_images(config)
    expected = estimate_xi(HalvesNet(), DataLoader(plain, batch_size=8), progress=False)
    assert trainer.xi == expected.xi < 0.01
    assert metrics["train_acc"] == 1.0
    trained = [tuple(x.flatten().tolist()) for x in seen["train"]]
    assert len(trained) == len(plain) and set(trained) == test_time  # each image once, as at test
    order = [tuple(plain[i]["data"].flatten().tolist()) for i in range(len(plain))]
    assert trained != order  # shuffled, as OpenOOD's training loader is


def test_bad_values_and_unknown_keys_are_named(oo, tmp_path):
    from openood.trainers import get_trainer
    config, loaders = _openood(tmp_path)
    cases = [({"fit_margin": 2}, r"^trainer.trainer_args.fit_margin must be a number in \[0, 1\].*2"),
             ({"preprocessing": "eval"},
              r"^trainer.trainer_args.preprocessing must be one of \('train', 'test'\), got 'eval'"),
             ({"fit_check": "off"}, r"^trainer.trainer_args.fit_check must be one of \('stop', 'warn'\)"),
             ({"xi_preprocessing": "test"},
              r"^trainer.trainer_args has unknown keys \['xi_preprocessing'\]; valid keys are ")]
    for args, pattern in cases:
        config.trainer.trainer_args = args
        with pytest.raises(ValueError, match=pattern):
            get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)


@pytest.fixture
def halves_bench(oo, tmp_path):
    from openood_fixtures import make_halves_benchmark
    kwargs = make_halves_benchmark(str(tmp_path / "data"), name="halvesbench")
    ood = kwargs["id_test"]  # the fit check runs before any OOD set is read
    oo.register_benchmark(**kwargs, ood_val=ood, near_ood={"near": ood}, far_ood={"far": ood})
    yield kwargs
    oo.unregister_benchmark("halvesbench")


@pytest.mark.parametrize("mode", ["um", "umap"])
def test_route2_default_fine_tunes_on_augmented_images_and_stops_a_model_that_does_not_fit_them(
        oo, halves_bench, checkout, tmp_path, mode):
    from openood.evaluation_api import Evaluator
    model = HalvesNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _images_seen(model)
    torch.manual_seed(0)
    with oo.enable_cpu_fallback(), pytest.raises(oo.FitCheckError) as info:
        Evaluator(model, id_name="halvesbench", data_root=halves_bench["data_root"],
                  config_root=os.path.join(checkout, "configs"), postprocessor_name=f"{mode}_msp",
                  batch_size=8, num_workers=0)
    one_line(str(info.value), "100.0% on ID validation data",
             prefix="the model's accuracy on the training images with train-time preprocessing "
                    "(postprocessor.postprocessor_args.preprocessing: train)")
    assert seen["train"] == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_route2_train_preprocessing_feeds_augmented_images_and_test_feeds_the_evaluators(
        oo, halves_bench, checkout, tmp_path):
    from openood.evaluation_api import Evaluator
    kwargs = dict(id_name="halvesbench", data_root=halves_bench["data_root"],
                  postprocessor_name="um_msp", batch_size=8, num_workers=0)
    runs = {}
    for preprocessing in ("train", "test"):
        root = write_config_root(checkout, tmp_path / preprocessing / "configs", {"um": dict(
            epochs=1, lr=0.01, preprocessing=preprocessing, fit_check="warn")})
        model = HalvesNet()
        seen = _images_seen(model)
        with oo.enable_cpu_fallback(), warnings.catch_warnings():
            warnings.simplefilter("ignore", oo.FitCheckWarning)
            evaluator = Evaluator(model, config_root=root, **kwargs)
        dataset = evaluator.dataloader_dict["id"]["train"].dataset
        as_read = {tuple(dataset[i]["data"].flatten().tolist()) for i in range(len(dataset))}
        trained = [tuple(x.flatten().tolist()) for x in seen["train"]]
        runs[preprocessing] = (evaluator.postprocessor.xi, trained, as_read)
    xi_train, trained, as_read = runs["train"]
    assert len(trained) == len(as_read) and not set(trained) <= as_read  # flips and crops
    xi_test, trained, as_read = runs["test"]
    assert set(trained) == as_read and xi_test < 0.01 < xi_train
