"""Ingest: list a labelled image source, fully decode every file once, and write a manifest.

Sources (see `sources.py`): a folder or bucket prefix in either Keras layout, a zip archive, or a
CSV/Parquet table. Unusable files are never fatal and never silent: they go to `quarantine.csv` with a
reason. The user's source is only read.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components import images, storage
from components.progress import Progress
from components.sources import DEFAULT_MAX_DOWNLOAD, DatasetError, Item, resolve

__all__ = ["DatasetError", "IngestSummary", "ingest", "read_manifest", "read_quarantine", "location_uri"]

MANIFEST, CLASSES, QUARANTINE, SUMMARY = "manifest.csv", "classes.json", "quarantine.csv", "summary.json"
MANIFEST_FIELDS = ["location", "label", "split", "bytes", "sha256", "width", "height", "mode", "format"]
QUARANTINE_FIELDS = ["location", "label", "reason", "detail"]


@dataclass
class IngestSummary:
    source: str
    layout: str
    classes: list[str]
    images: int
    quarantined: int
    per_class: dict[str, int]
    per_split: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 0


def _check(item: Item, max_pixels: int) -> tuple[dict | None, str, str]:
    """(manifest fields, reason, detail) for one item; path problems are found before any byte is
    read, so a stray or hidden file is reported for what it is."""
    if item.entry.skip_reason or item.problem:
        return None, item.entry.skip_reason or item.problem, ""
    if os.path.basename(item.entry.rel).startswith("."):
        return None, "hidden file", ""
    try:
        data = storage.read_bytes(item.entry.uri)
    except FileNotFoundError as e:
        return None, "missing", str(e)
    except OSError as e:
        return None, "unreadable", str(e)
    try:
        info = images.inspect(data, max_pixels=max_pixels)
    except images.ImageRejected as e:
        return None, e.reason, e.detail
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "width": info.width,
            "height": info.height, "mode": info.mode, "format": info.format}, "", ""


def ingest(source: str, output_dir: str, base_uri: str = "", max_pixels: int = images.DEFAULT_MAX_PIXELS,
           workers: int = 16, max_download_bytes: int = DEFAULT_MAX_DOWNLOAD) -> IngestSummary:
    """Write `manifest.csv`, `classes.json`, `quarantine.csv` and `summary.json` to `output_dir`.

    Files are checked by a thread pool (object-store reads and PIL decoding release the GIL) in
    bounded windows, so memory holds the rows, never more than a window of images.
    """
    with storage.atomic_dir(output_dir) as out:
        src = resolve(source, out, base_uri=base_uri, max_download_bytes=max_download_bytes)
        progress = Progress("ingest", len(src.items), unit="files")
        per_class, per_split, reasons = Counter(), Counter(), Counter()
        with open(out / MANIFEST, "w", newline="", encoding="utf-8") as mf, \
                open(out / QUARANTINE, "w", newline="", encoding="utf-8") as qf, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            manifest = csv.DictWriter(mf, MANIFEST_FIELDS)
            quarantine = csv.DictWriter(qf, QUARANTINE_FIELDS)
            manifest.writeheader()
            quarantine.writeheader()
            window = max(64, workers * 8)
            for start in range(0, len(src.items), window):
                chunk = src.items[start:start + window]
                for item, (row, reason, detail) in zip(chunk, pool.map(lambda i: _check(i, max_pixels), chunk)):
                    if row is None:
                        reasons[reason] += 1
                        quarantine.writerow({"location": item.location, "label": item.label,
                                             "reason": reason, "detail": detail})
                    else:
                        manifest.writerow({"location": item.location, "label": item.label,
                                           "split": item.split, **row})
                        per_class[item.label] += 1
                        if item.split:
                            per_split[item.split] += 1
                    progress.update()
        seconds = progress.close()
        classes = sorted(per_class)
        if len(classes) < 2:
            raise DatasetError(
                f"{source}: found {len(classes)} class(es) with usable images ({', '.join(classes) or 'none'}); "
                "a classifier needs at least 2 classes")
        if src.layout == "pre-split" and "train" not in per_split:
            raise DatasetError(f"{source}: pre-split layout but no usable training images")
        summary = IngestSummary(source=source, layout=src.layout, classes=classes, images=sum(per_class.values()),
                                quarantined=sum(reasons.values()), per_class=dict(sorted(per_class.items())),
                                per_split=dict(sorted(per_split.items())),
                                quarantine_reasons=dict(reasons.most_common()), seconds=round(seconds, 3),
                                workers=workers)
        (out / CLASSES).write_text(json.dumps(classes, indent=1))
        (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=1))
    print(f"ingest: {summary.images} images in {len(classes)} classes ({src.layout}, {src.kind}); "
          f"{summary.quarantined} quarantined {dict(reasons) if reasons else ''}".rstrip(), flush=True)
    return summary


def location_uri(dataset_dir: str, location: str) -> str:
    """Manifest locations of files extracted from an archive are relative to the dataset artifact."""
    if "://" in location or os.path.isabs(location):
        return location
    return str(Path(dataset_dir) / location)


def read_manifest(dataset_dir: str) -> tuple[list[dict], list[str]]:
    d = Path(dataset_dir)
    with open(d / MANIFEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((d / CLASSES).read_text())


def read_quarantine(dataset_dir: str) -> list[dict]:
    with open(Path(dataset_dir) / QUARANTINE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
