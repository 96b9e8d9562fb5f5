"""The loaders UM / UMAP train on, derived from the ones OpenOOD hands a route.

ξ and fine-tuning see the same images, preprocessed one way (``preprocessing``):

* ``train`` -- OpenOOD's train-time preprocessor (flips, crops), as the authors fine-tune.
  Route 1 uses OpenOOD's training loader as it is; Route 2 gets the Evaluator's ID training
  images (built with the test-time preprocessor) through OpenOOD's ``BasePreprocessor``.
* ``test`` -- OpenOOD's test-time preprocessor (resize, centre crop), for a base trained
  without augmentation.

Route 2 trains on :func:`shuffled_loader`: OpenOOD's Evaluator builds
``id_loader_dict['train']`` with ``shuffle=False`` and image lists are often sorted by class.
"""
from __future__ import annotations

import copy

import torch
from openood.evaluation_api.preprocessor import default_preprocessing_dict
from openood.preprocessors import BasePreprocessor
from openood.preprocessors.test_preprocessor import TestStandardPreProcessor
from openood.utils import Config
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms


def _common(loader: DataLoader, what: str, batch_size=None) -> dict:
    if loader.batch_size is None:
        raise ValueError(f"{what}: the given loader batches with a custom batch_sampler "
                         f"({type(loader.batch_sampler).__name__}); pass a loader built with "
                         "batch_size=...")
    return dict(batch_size=batch_size or loader.batch_size, num_workers=loader.num_workers,
                collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                drop_last=loader.drop_last, timeout=loader.timeout,
                worker_init_fn=loader.worker_init_fn)


def retransformed(loader: DataLoader, preprocessor, what: str):
    """``loader``'s image list with ``preprocessor`` in place of its own (shares the list)."""
    dataset = loader.dataset
    if not hasattr(dataset, "transform_image"):
        raise ValueError(f"{what} needs an OpenOOD image-list dataset (one with "
                         f"transform_image, e.g. ImglistDataset); the loader holds a "
                         f"{type(dataset).__name__}. Set preprocessing to match the loader's "
                         "own images")
    dataset = copy.copy(dataset)
    dataset.transform_image = dataset.preprocessor = preprocessor
    return dataset


def shuffled_loader(loader: DataLoader, seed: int, what: str = "fine-tuning loader", *,
                    dataset=None, batch_size=None) -> DataLoader:
    """``dataset`` (default: ``loader``'s), shuffled every epoch by a generator seeded with
    ``seed``, batched as ``loader`` (or by ``batch_size``)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(loader.dataset if dataset is None else dataset, shuffle=True,
                      generator=generator, **_common(loader, what, batch_size))


def like(loader: DataLoader, dataset, what: str, *, shuffle: bool, batch_size=None) -> DataLoader:
    """A loader over ``dataset`` that samples as ``loader`` does: the same rank's shard under
    torch.distributed, shuffled from the same generator when ``shuffle`` and ``loader`` shuffles,
    in order otherwise; batched as ``loader`` (or by ``batch_size``)."""
    sampler = loader.sampler
    common = _common(loader, what, batch_size)
    if isinstance(sampler, DistributedSampler):
        dist_sampler = DistributedSampler(dataset, num_replicas=sampler.num_replicas,
                                          rank=sampler.rank, seed=sampler.seed,
                                          shuffle=shuffle and sampler.shuffle)
        return DataLoader(dataset, sampler=dist_sampler, **common)
    shuffled = shuffle and isinstance(sampler, RandomSampler)
    return DataLoader(dataset, shuffle=shuffled, generator=loader.generator if shuffled else None,
                      **common)


def test_time_dataset(loader: DataLoader, config, what: str):
    """``loader``'s images through OpenOOD's test preprocessor for pipeline ``config``."""
    return retransformed(loader, TestStandardPreProcessor(config), what)


def evaluator_train_preprocessor(id_name: str):
    """OpenOOD's train-time ``BasePreprocessor`` for an ID set the Evaluator knows, with the
    Evaluator's sizes and normalisation (``default_preprocessing_dict``)."""
    if id_name not in default_preprocessing_dict:
        raise ValueError(f"preprocessing: train needs the ID set's image sizes, but OpenOOD's "
                         f"Evaluator has none for {id_name!r} (known: "
                         f"{sorted(default_preprocessing_dict)}); register_benchmark it, or set "
                         "preprocessing: test")
    sizes = default_preprocessing_dict[id_name]
    preprocessor = BasePreprocessor(Config({"dataset": {
        "name": id_name, "pre_size": sizes["pre_size"], "image_size": sizes["img_size"],
        "interpolation": "bilinear", "normalization_type": "none"}}))
    steps = preprocessor.transform.transforms
    if not isinstance(steps[-1], transforms.Normalize):
        raise RuntimeError(f"OpenOOD's BasePreprocessor for {id_name!r} no longer ends with "
                           f"Normalize ({steps[-1]!r}); set preprocessing: test")
    steps[-1] = transforms.Normalize(*sizes["normalization"])  # the Evaluator's, not 0.5s
    return preprocessor
