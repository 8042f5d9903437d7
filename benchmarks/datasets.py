"""The image folders and prepared datasets the benchmarks measure on, all from Debian's Fashion-MNIST.

Fashion-MNIST is 28x28 grey; upscaled to 160 px and written as RGB JPEG it costs what a folder of user
photos costs to decode and resize, while staying reproducible by anyone with the Debian package.
"""
from __future__ import annotations

import time
from pathlib import Path

from imgclf.pipelines.local.sample_data import build_folder

CLASSES = 10


def jpeg_folder(path: Path, images: int, size: int = 160, seed: int = 7) -> Path:
    """`images` (rounded down to a multiple of 10, stratified) RGB JPEGs of `size` px, class per folder."""
    build_folder(str(path), per_class=max(1, images // CLASSES), seed=seed, image_size=size, image_format="jpeg")
    return path


def warm_page_cache(folder: Path) -> int:
    """Read every file once, so the first contender does not pay the disk for the ones after it."""
    return sum(len(f.read_bytes()) for f in folder.rglob("*") if f.is_file())


def prepare(folder: Path, work: Path, image_size: int, color_mode: str = "rgb", val_fraction: float = 0.1,
            test_fraction: float = 0.1) -> dict:
    """Our one-off cost: ingest + preprocess the folder. Returns the TFRecord folder and the seconds of each."""
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess

    t = time.perf_counter()
    ingest(str(folder), str(work / "ingested"))
    t_ingest = time.perf_counter() - t
    t = time.perf_counter()
    s = preprocess(str(work / "ingested"), str(work / "preprocessed"), image_size=image_size, color_mode=color_mode,
                   val_fraction=val_fraction, test_fraction=test_fraction)
    return {"dataset_dir": str(work / "preprocessed"), "images": sum(s.counts.values()), "train_images": s.counts["train"],
            "ingest_seconds": round(t_ingest, 2), "preprocess_seconds": round(time.perf_counter() - t, 2)}


def export_npz(dataset_dir: str, path: Path, limit: int) -> dict:
    """Up to `limit` training images of a preprocessed dataset as uint8 pixels + int labels in one .npz:
    real input for the GPU benchmark, which runs where there is no TensorFlow to read TFRecords."""
    import numpy as np

    from imgclf.components.contracts import RecordsMetadata
    from imgclf.components.lib import records

    meta = RecordsMetadata.load(dataset_dir)
    xs, ys, n = [], [], 0
    for x, y in records.make_dataset(dataset_dir, meta, "train", 256):
        xs.append(x.numpy())
        ys.append(y.numpy())
        n += len(y)
        if n >= limit:
            break
    x, y = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit].astype("int32")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, pixels=x, labels=y, classes=np.array(meta.classes))
    return {"path": str(path), "images": len(y), "shape": list(x.shape[1:]), "bytes": path.stat().st_size}
