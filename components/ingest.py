"""Ingest: list a labelled image source, fully decode every file once, and write a manifest.

Accepts the two folder layouts of the Keras world: one subfolder per class, or pre-split
`train/`, `validation/` (or `val/`), `test/` folders each holding class subfolders. Unusable files
are never fatal and never silent: they go to `quarantine.csv` with a reason. The source is only read.
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

MANIFEST, CLASSES, QUARANTINE, SUMMARY = "manifest.csv", "classes.json", "quarantine.csv", "summary.json"
MANIFEST_FIELDS = ["location", "label", "split", "bytes", "sha256", "width", "height", "mode", "format"]
QUARANTINE_FIELDS = ["location", "label", "reason", "detail"]
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}


class DatasetError(ValueError):
    """The source as a whole cannot be used (as opposed to a single bad file)."""


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


def _detect_layout(top_dirs: set[str]) -> str:
    lowered = {d.lower() for d in top_dirs}
    if lowered and lowered <= set(SPLIT_ALIASES) and any(SPLIT_ALIASES[d] == "train" for d in lowered):
        return "pre-split"
    return "class-per-subfolder"


def _label_and_split(rel: str, layout: str) -> tuple[str, str, str]:
    """(label, split, problem) for a file's path relative to the source root."""
    parts = rel.split("/")
    if layout == "pre-split":
        if len(parts) < 3:
            return "", "", "not inside a class folder"
        return parts[1], SPLIT_ALIASES[parts[0].lower()], ""
    if len(parts) < 2:
        return "", "", "not inside a class folder"
    return parts[0], "", ""


def _check(entry: storage.Entry, layout: str, max_pixels: int) -> tuple[str, str, dict | None, str, str]:
    """(label, split, manifest fields, reason, detail) for one file; path problems are found before
    any byte is read, so a stray or hidden file is reported for what it is."""
    label, split, problem = _label_and_split(entry.rel, layout)
    if entry.skip_reason or problem:
        return label, split, None, entry.skip_reason or problem, ""
    if os.path.basename(entry.rel).startswith("."):
        return label, split, None, "hidden file", ""
    try:
        data = storage.read_bytes(entry.uri)
    except OSError as e:
        return label, split, None, "unreadable", f"{type(e).__name__}: {e}"
    try:
        info = images.inspect(data, max_pixels=max_pixels)
    except images.ImageRejected as e:
        return label, split, None, e.reason, e.detail
    return label, split, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "width": info.width,
                          "height": info.height, "mode": info.mode, "format": info.format}, "", ""


def ingest(source: str, output_dir: str, max_pixels: int = images.DEFAULT_MAX_PIXELS,
           workers: int = 8) -> IngestSummary:
    """Write `manifest.csv`, `classes.json`, `quarantine.csv` and `summary.json` to `output_dir`.

    Files are checked by a thread pool (I/O and PIL decoding release the GIL) in bounded windows, so
    memory holds only the rows, never the images.
    """
    entries = list(storage.walk_files(source))
    if not entries:
        raise DatasetError(f"{source}: no files found")
    top_dirs = {e.rel.split("/")[0] for e in entries if "/" in e.rel}
    layout = _detect_layout(top_dirs)
    progress = Progress("ingest", len(entries), unit="files")
    per_class, per_split, reasons = Counter(), Counter(), Counter()
    with storage.atomic_dir(output_dir) as out, \
            open(out / MANIFEST, "w", newline="", encoding="utf-8") as mf, \
            open(out / QUARANTINE, "w", newline="", encoding="utf-8") as qf, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        manifest = csv.DictWriter(mf, MANIFEST_FIELDS)
        quarantine = csv.DictWriter(qf, QUARANTINE_FIELDS)
        manifest.writeheader()
        quarantine.writeheader()
        window = max(64, workers * 16)
        for start in range(0, len(entries), window):
            chunk = entries[start:start + window]
            for entry, (label, split, row, reason, detail) in zip(
                    chunk, pool.map(lambda e: _check(e, layout, max_pixels), chunk)):
                if row is None:
                    reasons[reason] += 1
                    quarantine.writerow({"location": entry.uri, "label": label, "reason": reason,
                                         "detail": detail})
                else:
                    manifest.writerow({"location": entry.uri, "label": label, "split": split, **row})
                    per_class[label] += 1
                    if split:
                        per_split[split] += 1
                progress.update()
            mf.flush()
        seconds = progress.close()
        classes = sorted(per_class)
        if len(classes) < 2:
            raise DatasetError(
                f"{source}: found {len(classes)} class(es) with usable images ({', '.join(classes) or 'none'}); "
                "a classifier needs at least 2 class subfolders")
        if layout == "pre-split" and "train" not in per_split:
            raise DatasetError(f"{source}: pre-split layout but no usable images under train/")
        summary = IngestSummary(source=source, layout=layout, classes=classes, images=sum(per_class.values()),
                                quarantined=sum(reasons.values()), per_class=dict(sorted(per_class.items())),
                                per_split=dict(sorted(per_split.items())),
                                quarantine_reasons=dict(reasons.most_common()), seconds=round(seconds, 3))
        (out / CLASSES).write_text(json.dumps(classes, indent=1))
        (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=1))
    print(f"ingest: {summary.images} images in {len(classes)} classes ({layout}); "
          f"{summary.quarantined} quarantined {dict(reasons) if reasons else ''}".rstrip(), flush=True)
    return summary


def read_manifest(dataset_dir: str) -> tuple[list[dict], list[str]]:
    d = Path(dataset_dir)
    with open(d / MANIFEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((d / CLASSES).read_text())


def read_quarantine(dataset_dir: str) -> list[dict]:
    with open(Path(dataset_dir) / QUARANTINE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
