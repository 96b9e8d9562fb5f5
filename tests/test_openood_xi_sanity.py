"""Issue 9.4: ξ estimated on augmented images the model does not fit is said loudly, with a fix.

The 'halves' benchmark tells its two classes apart by which half of the image is bright, so
OpenOOD's own train preprocessor (random horizontal flip) turns one class into the other for
half the images: a base that fits the un-augmented images (here built to, as one trained
without augmentation would) scores ~50% there and 100% on ID validation data. The loaders
are OpenOOD's own, built by ``get_dataloader`` from the dataset YAML this project writes.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from openood_fixtures import make_halves_benchmark


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

    from um_plugin.openood.benchmarks import dataset_config
    bench = make_halves_benchmark(str(tmp_path))
    config = Config({**dataset_config(**bench, batch_size=8, eval_batch_size=8),
                     "preprocessor": {"name": "base"}, "num_workers": 0, "num_gpus": 1,
                     "num_machines": 1,
                     "trainer": {"name": "um", "trainer_args": trainer_args},
                     "optimizer": {"name": "sgd", "num_epochs": 1, "lr": 0.01, "momentum": 0.9,
                                   "weight_decay": 0.0}})
    config.parse_refs()
    return config, get_dataloader(config)


def test_xi_on_augmented_images_warns_with_both_accuracies_and_the_fix(oo, tmp_path, capsys):
    from openood.trainers import get_trainer
    config, loaders = _openood(tmp_path)
    torch.manual_seed(0)  # the flips
    with pytest.warns(UserWarning, match=r"xi_preprocessing: test") as record:
        trainer = get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)
    [warning] = [w for w in record if "xi_preprocessing" in str(w.message)]
    assert issubclass(warning.category, oo.XiSanityWarning)
    message = str(warning.message)
    assert "on ID validation data" in message and "100.0%" in message
    out = capsys.readouterr().out
    assert "WARNING" in out and "unmasked accuracy" in out  # printed too, not only warned
    assert trainer.xi > 1.0  # a loss the base never had on its own images


def test_xi_preprocessing_test_estimates_on_the_training_images_as_at_test_time(oo, tmp_path):
    from openood.datasets.imglist_dataset import ImglistDataset
    from openood.preprocessors.test_preprocessor import TestStandardPreProcessor
    from openood.trainers import get_trainer

    from um_plugin.core.xi import estimate_xi
    config, loaders = _openood(tmp_path, xi_preprocessing="test")
    model = HalvesNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error", oo.XiSanityWarning)
        trainer = get_trainer(model, loaders["train"], loaders["val"], config)
    split = config.dataset.train
    plain = ImglistDataset("halves_train", split.imglist_pth, split.data_dir, 2,
                           TestStandardPreProcessor(config), TestStandardPreProcessor(config))
    expected = estimate_xi(HalvesNet(), DataLoader(plain, batch_size=8), progress=False)
    assert trainer.xi == expected.xi < 0.01


def test_margin_one_switches_the_check_off_and_bad_values_are_named(oo, tmp_path):
    from openood.trainers import get_trainer
    config, loaders = _openood(tmp_path, xi_accuracy_margin=1)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", oo.XiSanityWarning)
        get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)
    config.trainer.trainer_args = {"xi_accuracy_margin": 2}
    with pytest.raises(ValueError, match=r"^trainer.trainer_args.xi_accuracy_margin must be .*2"):
        get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)
    config.trainer.trainer_args = {"xi_preprocessing": "eval"}
    with pytest.raises(ValueError, match=r"xi_preprocessing must be one of \('train', 'test'\)"):
        get_trainer(HalvesNet(), loaders["train"], loaders["val"], config)
