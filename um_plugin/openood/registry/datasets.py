"""Register an offline benchmark so OpenOOD's ``Evaluator(net, id_name=...)`` can use it.

``Evaluator`` looks an ID name up in three module dicts (``datasets.DATA_INFO``,
``datasets.benchmarks_dict`` and ``preprocessor.default_preprocessing_dict``) and calls
``data_setup``, which downloads from Google Drive when ``<data_root>/benchmark_imglist`` is
missing or a listed dataset folder is empty. :func:`register_benchmark` fills the three dicts
for data already on disk and checks every file first, so the downloader never runs.

``main.py`` (Route 1: training) reads a dataset YAML instead; :func:`write_dataset_config`
writes it for a registered benchmark (``register_benchmark(..., dataset_yaml=path)`` does it
in the same call; ``um-openood dataset-config`` from the command line), so nothing has to be
reconstructed by hand.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

import yaml
from openood.evaluation_api import datasets as oo_datasets
from openood.evaluation_api import preprocessor as oo_pre
from openood.preprocessors.transform import normalization_dict

from um_plugin.core.config import check_integer

_OURS: dict = {}  # benchmark name -> the dataset_config() arguments it was registered with

DEFAULT_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# main.py's preprocessors use mean = std = 0.5 for a normalization_type not in their dict
_DEFAULT_NORMALIZATION_TYPE = "default"
TRAIN_BATCH_SIZE, EVAL_BATCH_SIZE = 128, 200  # OpenOOD's dataset YAMLs use these


def _label_problem(extra: str, num_classes: int, ood: bool) -> Optional[str]:
    """What is wrong with a list line's label text (OpenOOD's ``ImglistDataset`` reads an
    integer, or a dict literal of extras), or None."""
    if extra.lstrip().startswith("{"):
        return None
    try:
        label = int(extra)
    except ValueError:
        return f"label {extra.strip()!r} is not an integer"
    if label >= num_classes or (label < 0 and not ood):
        return f"label {label} is not a class of this benchmark (num_classes={num_classes})"
    return None


def _check_lines(list_path: str, image_root: str, what: str, num_classes: Optional[int],
                 ood: bool) -> None:
    """Every image of a list exists and, with ``num_classes``, carries a label OpenOOD can use."""
    valid = (f"an integer label < {num_classes} (-1 for OOD images)" if ood else
             f"an integer label in [0, {num_classes})")
    found = False
    with open(list_path) as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            found = True
            name, _, extra = line.partition(" ")
            if not os.path.isfile(os.path.join(image_root, name)):
                raise FileNotFoundError(
                    f"{what}: {list_path!r} names {name!r}, but "
                    f"{os.path.join(image_root, name)!r} does not exist")
            if num_classes is None:
                continue
            problem = ("no label" if not extra.strip() else
                       _label_problem(extra, num_classes, ood))
            if problem:
                raise ValueError(f"{what}: {list_path!r} line {number} {line!r}: {problem}; each "
                                 f"line is '<image> <label>' with {valid}")
    if not found:
        raise ValueError(f"{what}: image list {list_path!r} is empty")


def _split(data_root: str, imglist: str, data_dir: str, what: str, check_images: bool,
           num_classes: Optional[int] = None, ood: bool = False) -> dict:
    """One DATA_INFO leaf; raises FileNotFoundError naming the missing list or image, and
    ValueError naming a line without a usable label (with ``num_classes``)."""
    if not isinstance(imglist, (str, os.PathLike)) or not str(imglist):
        raise ValueError(f"{what}: imglist path must be a non-empty path, got {imglist!r}")
    imglist = os.fspath(imglist)
    list_path = os.path.join(data_root, imglist)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"{what}: image list {list_path!r} does not exist")
    if check_images:
        _check_lines(list_path, os.path.join(data_root, data_dir), what, num_classes, ood)
    return {"data_dir": data_dir, "imglist_path": imglist}


def _ood_group(data_root, sets, data_dir, what, check_images, num_classes, ood=True) -> dict:
    if not isinstance(sets, Mapping) or not sets:
        raise ValueError(f"{what} must be a non-empty mapping name -> imglist path, got {sets!r}")
    group = {"datasets": list(sets)}
    for name, imglist in sets.items():
        group[name] = _split(data_root, imglist, data_dir, f"{what}[{name!r}]", check_images,
                             num_classes, ood)
    return group


def register_benchmark(name: str, data_root: str, *, num_classes: int,
                       id_train: str, id_val: str, id_test: str,
                       ood_val: str, near_ood: Mapping[str, str], far_ood: Mapping[str, str],
                       csid: Optional[Mapping[str, str]] = None,
                       data_dir: str = "",
                       image_size: int = 32, pre_size: Optional[int] = None,
                       normalization: Sequence[Sequence[float]] = DEFAULT_NORMALIZATION,
                       check_images: bool = True, dataset_yaml=None) -> dict:
    """Make ``name`` a valid ``Evaluator`` ``id_name`` for data under ``data_root``; return its DATA_INFO.

    Imglist paths are relative to ``data_root`` (as in OpenOOD: ``benchmark_imglist/...``) and
    name images relative to ``data_root/data_dir``, one ``<image> <label>`` per line; with
    ``check_images`` every image must exist and every label be a class (``[0, num_classes)``;
    OOD lists may also use negative labels such as -1), else OpenOOD fails much later.
    ``near_ood`` / ``far_ood`` / ``csid`` map a dataset name to its imglist. ``image_size`` /
    ``pre_size`` / ``normalization`` build OpenOOD's default test preprocessor (resize to
    ``pre_size``, centre-crop ``image_size``). Pass the same ``data_root`` to ``Evaluator``.
    Names OpenOOD ships (cifar10, imagenet, ...) are refused; our own may be re-registered.
    ``dataset_yaml``: also write the dataset YAML ``main.py`` needs there
    (:func:`write_dataset_config` with its defaults).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"benchmark name must be a non-empty string, got {name!r}")
    if name in oo_datasets.DATA_INFO and name not in _OURS:
        raise ValueError(f"benchmark name {name!r} is already an OpenOOD benchmark; "
                         f"choose a name not in {sorted(oo_datasets.DATA_INFO)}")
    check_integer("num_classes", num_classes, 1)
    for label, size in (("image_size", image_size), ("pre_size", pre_size)):
        if size is not None:
            check_integer(label, size, 1)
    normalization_type(normalization)  # checks the shape; a YAML-inexpressible one fails later
    data_root = os.fspath(data_root)
    if not os.path.isdir(os.path.join(data_root, "benchmark_imglist")):
        raise FileNotFoundError(
            f"{os.path.join(data_root, 'benchmark_imglist')!r} does not exist; OpenOOD's "
            "data_setup would try to download it. Put the imglist files there.")

    def split(imglist, what, ood=False):
        return _split(data_root, imglist, data_dir, what, check_images, num_classes, ood)

    def group(sets, what, ood=True):
        return _ood_group(data_root, sets, data_dir, what, check_images, num_classes, ood)

    info = {
        "num_classes": num_classes,
        "id": {"train": split(id_train, "id_train"), "val": split(id_val, "id_val"),
               "test": split(id_test, "id_test")},
        "csid": {"datasets": []},
        "ood": {"val": split(ood_val, "ood_val", ood=True),
                "near": group(near_ood, "near_ood"), "far": group(far_ood, "far_ood")},
    }
    if csid:
        info["csid"] = group(csid, "csid", ood=False)

    oo_datasets.DATA_INFO[name] = info
    # data_setup walks this list and downloads any listed set whose folder is empty; the
    # files were checked above, so nothing needs to be listed.
    oo_datasets.benchmarks_dict[name] = []
    oo_pre.default_preprocessing_dict[name] = {
        "pre_size": pre_size or image_size,
        "img_size": image_size,
        "normalization": [list(map(float, v)) for v in normalization],
    }
    _OURS[name] = dict(data_root=os.path.abspath(data_root), num_classes=num_classes,
                       id_train=id_train, id_val=id_val, id_test=id_test, data_dir=data_dir,
                       image_size=image_size, pre_size=pre_size, normalization=normalization)
    if dataset_yaml is not None:
        write_dataset_config(name, dataset_yaml)
    return info


def unregister_benchmark(name: str) -> None:
    """Remove a benchmark this module registered (tests use it to leave OpenOOD as found)."""
    if name not in _OURS:
        raise ValueError(f"{name!r} was not registered by register_benchmark; "
                         f"registered: {sorted(_OURS)}")
    for d in (oo_datasets.DATA_INFO, oo_datasets.benchmarks_dict, oo_pre.default_preprocessing_dict):
        d.pop(name, None)
    _OURS.pop(name)


def normalization_type(normalization) -> Optional[str]:
    """The ``dataset.normalization_type`` main.py's preprocessors turn into ``normalization``,
    or None when no name does (they know OpenOOD's ``normalization_dict`` and mean = std = 0.5)."""
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalization)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"normalization must be ((mean r, g, b), (std r, g, b)), "
                         f"got {normalization!r}") from None

    def same(a, b):
        return all(math.isclose(x, y, rel_tol=0, abs_tol=1e-9) for x, y in zip(a, b))

    if same(mean, (0.5,) * 3) and same(std, (0.5,) * 3):
        return _DEFAULT_NORMALIZATION_TYPE  # not 'aircraft' etc., which also hold 0.5
    for key, (m, s) in normalization_dict.items():
        if same(mean, m) and same(std, s):
            return key
    return None


def normalization_by_name(name: str):
    """``((mean), (std))`` of OpenOOD's ``normalization_dict[name]``, or a ValueError naming the
    valid names."""
    if name not in normalization_dict:
        raise ValueError(f"normalization {name!r} is not in OpenOOD's normalization_dict; use "
                         f"'default' (mean = std = 0.5) or one of {sorted(normalization_dict)}")
    mean, std = normalization_dict[name]
    return tuple(mean), tuple(std)


def dataset_config(name: str, data_root: str, *, num_classes: int, id_train: str, id_val: str,
                   id_test: str, data_dir: str = "", image_size: int = 32,
                   pre_size: Optional[int] = None,
                   normalization: Sequence[Sequence[float]] = DEFAULT_NORMALIZATION,
                   batch_size: int = TRAIN_BATCH_SIZE, eval_batch_size: int = EVAL_BATCH_SIZE,
                   check_images: bool = True, oe: Optional[str] = None) -> dict:
    """The ``dataset:`` section main.py reads for these ID splits (absolute paths; the images
    preprocessed as the Evaluator does: resize to ``pre_size``, centre-crop ``image_size``).
    With ``oe`` (an image list of auxiliary outliers, relative to ``data_root``), an ``oe``
    split as OpenOOD's ``cifar10_oe.yml`` has it, for pipeline ``train_oe`` (the um_oe /
    umap_oe trainers); its labels (e.g. -1) are never read."""
    norm_type = normalization_type(normalization)
    if norm_type is None:
        raise ValueError(
            f"normalization {normalization!r} cannot be written into a dataset YAML: main.py's "
            f"preprocessors know only normalization_type in {sorted(normalization_dict)} or "
            "mean = std = 0.5; register the benchmark with one of those")
    for label, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        check_integer(label, size, 1)
    data_root = os.path.abspath(os.fspath(data_root))
    section = {"name": name, "num_classes": num_classes, "image_size": image_size,
               "pre_size": pre_size or image_size, "interpolation": "bilinear",
               "normalization_type": norm_type, "num_workers": "@{num_workers}",
               "num_gpus": "@{num_gpus}", "num_machines": "@{num_machines}",
               "split_names": ["train", "val", "test"]}
    for split, imglist in (("train", id_train), ("val", id_val), ("test", id_test)):
        leaf = _split(data_root, imglist, data_dir, f"id_{split}", check_images, num_classes)
        section[split] = {"dataset_class": "ImglistDataset",
                          "data_dir": os.path.join(data_root, leaf["data_dir"]),
                          "imglist_pth": os.path.join(data_root, leaf["imglist_path"]),
                          "batch_size": batch_size if split == "train" else eval_batch_size,
                          "shuffle": split == "train"}
    if oe is not None:
        leaf = _split(data_root, oe, data_dir, "oe", check_images, num_classes, ood=True)
        section["split_names"] = ["train", "oe", "val", "test"]
        section["oe"] = {"dataset_class": "ImglistDataset",
                         "data_dir": os.path.join(data_root, leaf["data_dir"]),
                         "imglist_pth": os.path.join(data_root, leaf["imglist_path"]),
                         "batch_size": batch_size, "shuffle": True, "interpolation": "bilinear"}
    return {"dataset": section}


def write_dataset_config(name: str, path, *, batch_size: int = TRAIN_BATCH_SIZE,
                         eval_batch_size: int = EVAL_BATCH_SIZE) -> str:
    """Write the dataset YAML main.py needs for benchmark ``name`` (registered with
    :func:`register_benchmark`) to ``path``; return the path."""
    if name not in _OURS:
        raise ValueError(f"{name!r} was not registered by register_benchmark; "
                         f"registered: {sorted(_OURS)}")
    config = dataset_config(name, **_OURS[name], batch_size=batch_size,
                            eval_batch_size=eval_batch_size, check_images=False)
    return save_yaml(config, path, f"benchmark {name!r} under {_OURS[name]['data_root']}")


def save_yaml(config: dict, path, what: str) -> str:
    """Write ``config`` as YAML to ``path`` (folders created), with a header naming ``what``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# OpenOOD dataset config for main.py, written by um-plugin: {what}.\n")
        if config.get("dataset", {}).get("normalization_type") == _DEFAULT_NORMALIZATION_TYPE:
            f.write(f"# normalization_type '{_DEFAULT_NORMALIZATION_TYPE}' is not in OpenOOD's "
                    "normalization_dict, so its preprocessors use mean = std = 0.5.\n")
        yaml.safe_dump(config, f, sort_keys=False)
    return path
