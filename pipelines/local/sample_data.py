"""Build class-per-subfolder PNG folders from Fashion-MNIST's IDX files.

The embedded sample (`data/fashion-mnist-sample`) was produced by this module from Debian's
`dataset-fashion-mnist` package, so anyone can regenerate it, or build the full 70,000-image folder
that the benchmarks and the dirty-data tests use. Images are written one at a time: memory stays flat.
"""
from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_IDX_DIR = "/usr/share/datasets/fashion-mnist"
# Folder-safe versions of the official class names (zalandoresearch/fashion-mnist README).
CLASS_NAMES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)
SUBSETS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
           "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_labels(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        if magic != 2049:
            raise ValueError(f"{path}: not an IDX label file (magic {magic})")
        return np.frombuffer(f.read(n), dtype=np.uint8)


def _iter_images(path: Path) -> Iterator[np.ndarray]:
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise ValueError(f"{path}: not an IDX image file (magic {magic})")
        for _ in range(n):
            yield np.frombuffer(f.read(rows * cols), dtype=np.uint8).reshape(rows, cols)


def build_folder(out_dir: str, per_class: int = 0, seed: int = 0,
                 idx_dir: str = DEBIAN_IDX_DIR, image_size: int = 0, image_format: str = "png") -> dict[str, int]:
    """Write `<out_dir>/<class>/<subset>-<index>.png`; `per_class=0` writes all 70,000 images.

    The subset is a seeded stratified sample drawn from both of the official splits together.
    `image_size` > 0 upscales (bicubic) and `image_format="jpeg"` writes RGB JPEGs (quality 90): the
    benchmarks use that to imitate the camera-sized JPEG folders users' notebooks start from.
    """
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    idx = Path(idx_dir)
    if not (idx / SUBSETS["train"][0]).exists():
        raise FileNotFoundError(
            f"{idx}: Fashion-MNIST IDX files not found; install them with "
            "`apt-get install dataset-fashion-mnist` or pass --idx-dir")
    labels = {name: _read_labels(idx / files[1]) for name, files in SUBSETS.items()}
    keep: dict[str, np.ndarray] = {}
    if per_class:
        rng = np.random.default_rng(seed)
        all_keys = [(name, i) for name in SUBSETS for i in range(len(labels[name]))]
        all_labels = np.concatenate([labels[name] for name in SUBSETS])
        chosen = np.concatenate([rng.choice(np.flatnonzero(all_labels == c), per_class, replace=False)
                                 for c in range(len(CLASS_NAMES))])
        for name in SUBSETS:
            keep[name] = np.zeros(len(labels[name]), dtype=bool)
        for k in chosen:
            name, i = all_keys[k]
            keep[name][i] = True
    out = Path(out_dir)
    for c in CLASS_NAMES:
        (out / c).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for name, files in SUBSETS.items():
        for i, pixels in enumerate(_iter_images(idx / files[0])):
            if per_class and not keep[name][i]:
                continue
            cls = CLASS_NAMES[labels[name][i]]
            img = Image.fromarray(pixels)
            if image_size:
                img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            if image_format == "jpeg":
                img.convert("RGB").save(out / cls / f"{name}-{i:05d}.jpg", quality=90)
            else:
                img.save(out / cls / f"{name}-{i:05d}.png", optimize=True)
            counts[cls] += 1
    return counts
