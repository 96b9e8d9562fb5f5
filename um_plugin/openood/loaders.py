"""Loaders the routes derive from the ones OpenOOD hands them, keeping batch size and workers.

* :func:`shuffled_loader` -- the postprocessors fine-tune on it: OpenOOD's Evaluator builds
  ``id_loader_dict['train']`` with ``shuffle=False`` and image lists are often sorted by class,
  so training on it as given would see single-class batches. It is seeded, so a run is
  reproducible and equals the core's ``run_um`` / ``run_umap`` on an identically seeded loader.
* :func:`test_time_loader` -- the trainers estimate ξ on it when ``xi_preprocessing: test``:
  the training images with OpenOOD's test-time preprocessing (no flips, no random crops).
"""
from __future__ import annotations

import copy

import torch
from openood.preprocessors.test_preprocessor import TestStandardPreProcessor
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler


def _common(loader: DataLoader, what: str) -> dict:
    if loader.batch_size is None:
        raise ValueError(f"{what}: the given loader batches with a custom batch_sampler "
                         f"({type(loader.batch_sampler).__name__}); pass a loader built with "
                         "batch_size=...")
    return dict(batch_size=loader.batch_size, num_workers=loader.num_workers,
                collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                drop_last=loader.drop_last, timeout=loader.timeout,
                worker_init_fn=loader.worker_init_fn)


def shuffled_loader(loader: DataLoader, seed: int, what: str = "fine-tuning loader") -> DataLoader:
    """``loader``'s dataset, shuffled every epoch by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(loader.dataset, shuffle=True, generator=generator, **_common(loader, what))


def test_time_loader(loader: DataLoader, config,
                     what: str = "trainer.trainer_args.xi_preprocessing: test") -> DataLoader:
    """``loader``'s image list, in order, through OpenOOD's test preprocessor for ``config``
    (under torch.distributed each rank reads its own shard, as the training loader does)."""
    dataset = loader.dataset
    if not hasattr(dataset, "transform_image"):
        raise ValueError(f"{what} needs an OpenOOD image-list dataset (one with "
                         f"transform_image, e.g. ImglistDataset); the training loader holds a "
                         f"{type(dataset).__name__}. Use xi_preprocessing: train or give "
                         "loss_constraint a number")
    dataset = copy.copy(dataset)  # shares the image list; only the transform differs
    dataset.transform_image = dataset.preprocessor = TestStandardPreProcessor(config)
    sampler = None
    if isinstance(loader.sampler, DistributedSampler):
        sampler = DistributedSampler(dataset, num_replicas=loader.sampler.num_replicas,
                                     rank=loader.sampler.rank, shuffle=False)
    return DataLoader(dataset, shuffle=False, sampler=sampler, **_common(loader, what))
