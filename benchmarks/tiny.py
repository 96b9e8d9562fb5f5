"""A tiny synthetic benchmark in OpenOOD's on-disk layout, for CI jobs (seconds, no download).

    python -m benchmarks.tiny DIR [--name tiny] [--per-split 48] [--size 28]

ID: three classes, each image bright in one colour channel (red, green, blue) plus noise.
Near-OOD ``shifted``: two channels bright at once (a colour no class has). Far-OOD ``noise``:
grey noise (all channels alike). OOD validation: more grey noise. Files, deterministic for a seed::

    DIR/images_classic/NAME/<split>/<i>.png
    DIR/benchmark_imglist/NAME/{train,val,test}_NAME.txt, val_ood.txt, test_shifted.txt, test_noise.txt

which are ``um-openood dataset-config``'s default list names (``--near shifted --far noise``).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from .imglist import write_image_list

DATA_DIR = "images_classic"


def _image(kind: str, label: int, size: int, rng) -> np.ndarray:
    if kind == "noise":  # grey noise: every channel alike, unlike any class
        return 125.0 + rng.normal(0, 60, size=(size, size, 1)).repeat(3, axis=2)
    colour = np.full(3, 30.0)
    channels = [label] if kind == "id" else [label, (label + 1) % 3]
    colour[channels] = 220.0
    return colour + rng.normal(0, 25, size=(size, size, 3))


def write_split(root: str, name: str, split: str, kind: str, n: int, size: int, seed: int) -> str:
    """Write ``n`` PNGs and their image list; return the list's path relative to ``root``."""
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(n)]
    images = [np.clip(_image(kind, label, size, rng), 0, 255).astype(np.uint8) for label in labels]
    return write_image_list(root, DATA_DIR, f"{name}/{split}",
                            os.path.join("benchmark_imglist", name, f"{split}.txt"), images,
                            labels if kind == "id" else None)


def write_benchmark(root: str, name: str = "tiny", per_split: int = 48, size: int = 28,
                    seed: int = 0) -> None:
    """Write every split of the tiny benchmark under ``root``."""
    splits = [(f"train_{name}", "id"), (f"val_{name}", "id"), (f"test_{name}", "id"),
              ("val_ood", "noise"), ("test_shifted", "shifted"), ("test_noise", "noise")]
    for k, (split, kind) in enumerate(splits):
        write_split(root, name, split, kind, per_split, size, seed + k)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write the benchmark into")
    parser.add_argument("--name", default="tiny")
    parser.add_argument("--per-split", type=int, default=48, help="images per split (default 48)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_split < 3 or args.size < 8:
        parser.error("--per-split must be >= 3 and --size >= 8")
    write_benchmark(args.root, args.name, args.per_split, args.size, args.seed)
    print(os.path.join(args.root, "benchmark_imglist", args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
