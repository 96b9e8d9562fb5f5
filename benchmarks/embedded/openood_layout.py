"""Write the embedded benchmark in OpenOOD's on-disk layout (PNG images + imglist files).

Layout under ``root`` (what OpenOOD's ``DATA_INFO`` entries point at)::

    images_classic/<id_name>/<split>/<index>.png
    benchmark_imglist/<id_name>/{train,val,test}_<id_name>.txt, val_oodval.txt, test_<set>.txt

Every line is ``<id_name>/<split>/<index>.png <label>`` with label -1 for OOD images.
A finished layout is marked with a stamp file so later runs reuse it.
"""
from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

from ..imglist import write_image_list
from .datasets import ID_NAME, NORMALIZATION, SIZE, EmbeddedData

DATA_DIR = "images_classic/"


def _write_split(root: str, id_name: str, split: str, x: np.ndarray, y) -> str:
    return write_image_list(root, DATA_DIR, f"{id_name}/{split}",
                            os.path.join("benchmark_imglist", id_name, f"{split}.txt"), x, y)


def write_openood_layout(data: EmbeddedData, root: str, id_name: str = ID_NAME) -> Dict:
    """Write (or reuse) the images and imglists; return ``register_benchmark`` keyword args."""
    stamp_path = os.path.join(root, "benchmark_imglist", id_name, "layout.json")
    want = {"meta": data.meta, "near": list(data.near), "far": list(data.far)}
    os.makedirs(os.path.join(root, "benchmark_imglist", id_name), exist_ok=True)
    lists = {}
    if os.path.exists(stamp_path):
        with open(stamp_path) as fh:
            stamp = json.load(fh)
        if stamp.get("want") == want:
            return {**stamp["kwargs"], "data_root": root}
        os.remove(stamp_path)
    for split, (x, y) in data.id.items():
        lists[f"{split}_{id_name}"] = _write_split(root, id_name, f"{split}_{id_name}", x, y)
    lists["val_oodval"] = _write_split(root, id_name, "val_oodval", data.ood_val, None)
    for name, x in data.ood_sets().items():
        lists[f"test_{name}"] = _write_split(root, id_name, f"test_{name}", x, None)
    kwargs = {
        "name": id_name, "data_root": root, "num_classes": 10,
        "id_train": lists[f"train_{id_name}"], "id_val": lists[f"val_{id_name}"],
        "id_test": lists[f"test_{id_name}"], "ood_val": lists["val_oodval"],
        "near_ood": {n: lists[f"test_{n}"] for n in data.near},
        "far_ood": {n: lists[f"test_{n}"] for n in data.far},
        "data_dir": DATA_DIR, "image_size": SIZE, "pre_size": SIZE,
        "normalization": NORMALIZATION,
    }
    with open(stamp_path, "w") as fh:  # written last: a half-written layout has no stamp
        json.dump({"want": want, "kwargs": kwargs}, fh)
    return kwargs


def register_embedded(data: EmbeddedData, root: str, id_name: str = ID_NAME) -> Dict:
    """Write the layout and register it with OpenOOD; returns the DATA_INFO entry."""
    from um_plugin.openood.registry.datasets import register_benchmark  # imports OpenOOD (optional)
    kwargs = write_openood_layout(data, root, id_name)
    return register_benchmark(**{**kwargs, "data_root": root})
