"""The one writer of OpenOOD's on-disk image-list layout, for every benchmark and test made here.

OpenOOD reads ``<data_root>/<imglist>.txt`` files whose lines are ``<image> <label>``, the image
named relative to ``<data_root>/<data_dir>`` and opened as RGB; OOD lists label every image -1.
The tiny CI benchmark (``benchmarks/tiny.py``), the embedded benchmark's layout and the tests'
miniature benchmarks all write their PNGs and lists through :func:`write_image_list`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image  # a dependency of torchvision

OOD_LABEL = -1


def write_image_list(data_root: str, data_dir: str, folder: str, list_path: str, images,
                     labels=None) -> str:
    """Save ``images`` (H x W x 3 uint8 arrays) as ``<data_root>/<data_dir>/<folder>/<i>.png``
    and write ``<data_root>/<list_path>``, one ``<folder>/<i>.png <label>`` line each (label -1
    for all when ``labels`` is None: an OOD set); return ``list_path``."""
    os.makedirs(os.path.join(data_root, data_dir, folder), exist_ok=True)
    lines = []
    for i, pixels in enumerate(images):
        name = f"{folder}/{i:05d}.png"
        Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
            os.path.join(data_root, data_dir, name))
        lines.append(f"{name} {OOD_LABEL if labels is None else int(labels[i])}\n")
    os.makedirs(os.path.dirname(os.path.join(data_root, list_path)), exist_ok=True)
    with open(os.path.join(data_root, list_path), "w") as f:
        f.writelines(lines)
    return list_path
