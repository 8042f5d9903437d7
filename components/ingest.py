"""Ingest: list a labelled image source, fully decode every file once, and write a manifest.

Sources (see `sources.py`): a folder or bucket prefix in either Keras layout, a zip archive, or a
CSV/Parquet table. Bad input is never fatal and never silent: an unusable file goes to
`quarantine.csv` with a reason; exact duplicates are collapsed (the same image under two labels is a
label conflict, and a copy in a pre-split test folder of a training image is dropped: leakage); and
whole-dataset problems (too few images in a class, extreme imbalance, mostly broken files) fail the
step with one clear message. The user's source is only read.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components import images, storage
from components.progress import Progress
from components.sources import DEFAULT_MAX_DOWNLOAD, DatasetError, Item, resolve

__all__ = ["DatasetError", "IngestSummary", "ingest", "read_manifest", "load_manifest", "read_quarantine",
           "location_uri"]

MANIFEST, CLASSES, QUARANTINE, SUMMARY = "manifest.csv", "classes.json", "quarantine.csv", "summary.json"
MANIFEST_FIELDS = ["location", "label", "split", "bytes", "sha256", "width", "height", "mode", "format", "frames",
                   "dhash"]
QUARANTINE_FIELDS = ["location", "label", "reason", "detail"]
SPLIT_RANK = {"train": 0, "validation": 1, "test": 2, "": 3}
# Not counted towards max_quarantined_share: OS litter, not damaged data.
HARMLESS = {"hidden file"}


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
    notes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 0


def label_problem(label: str) -> str:
    """Why a folder or table label cannot name a class (it becomes a served `class_name`)."""
    if not label or not label.strip():
        return "empty class name"
    if label != label.strip() or label in (".", "..") or label.startswith("."):
        return f"invalid class name {label!r}: leading/trailing space or dot"
    if len(label) > 100:
        return f"invalid class name: {len(label)} characters (at most 100)"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in label):
        return f"invalid class name {label!r}: control or invisible characters"
    return ""


def _check(item: Item, max_pixels: int, animated: str) -> tuple[dict | None, str, str]:
    """(manifest fields, reason, detail) for one item; path problems are found before any byte is
    read, so a stray or hidden file is reported for what it is."""
    if item.entry.skip_reason or item.problem:
        return None, item.entry.skip_reason or item.problem, ""
    if os.path.basename(item.entry.rel).startswith("."):
        return None, "hidden file", ""
    if problem := label_problem(item.label):
        return None, "invalid class name", problem
    try:
        data = storage.read_bytes(item.entry.uri)
    except FileNotFoundError as e:
        return None, "missing", str(e)
    except OSError as e:
        return None, "unreadable", str(e)
    try:
        info = images.inspect(data, max_pixels=max_pixels, animated=animated)
    except images.ImageRejected as e:
        return None, e.reason, e.detail
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "width": info.width,
            "height": info.height, "mode": info.mode, "format": info.format, "frames": info.frames,
            "dhash": info.dhash}, "", ""


def _resolve_duplicates(groups: list[list[int]], labels: list[str], splits: list[str],
                        locations: dict[int, str]) -> tuple[set[int], list[dict]]:
    """For each group of rows with identical bytes: which rows to drop, and their quarantine entries."""
    dropped, entries = set(), []
    for group in groups:
        group_labels = sorted({labels[i] for i in group})
        if len(group_labels) > 1:
            detail = f"the same image is labelled {', '.join(group_labels)} ({len(group)} copies)"
            dropped.update(group)
            entries += [{"location": locations[i], "label": labels[i], "reason": "label conflict", "detail": detail}
                        for i in group]
            continue
        group = sorted(group, key=lambda i: (SPLIT_RANK[splits[i]], locations[i]))
        keep = group[0]
        for i in group[1:]:
            leak = splits[i] != splits[keep]
            dropped.add(i)
            entries.append({"location": locations[i], "label": labels[i],
                            "reason": "duplicate across splits" if leak else "exact duplicate",
                            "detail": f"same bytes as {locations[keep]}"
                                      + (f" ({splits[keep]}); kept out of {splits[i]}" if leak else "")})
    return dropped, entries


def _dataset_checks(source: str, per_class: Counter, files: int, damaged: int, min_images_per_class: int,
                    max_imbalance: float, max_quarantined_share: float) -> list[str]:
    problems = []
    if len(per_class) < 2:
        problems.append(f"found {len(per_class)} class(es) with usable images "
                        f"({', '.join(sorted(per_class)) or 'none'}); a classifier needs at least 2 classes")
    small = {c: n for c, n in sorted(per_class.items()) if n < min_images_per_class}
    if small:
        problems.append(f"{len(small)} class(es) have fewer than {min_images_per_class} usable images: "
                        + ", ".join(f"{c} ({n})" for c, n in list(small.items())[:10])
                        + " (add images, or lower min_images_per_class)")
    if len(per_class) >= 2:
        most, least = max(per_class.values()), min(per_class.values())
        if most / least > max_imbalance:
            big = max(per_class, key=per_class.get)
            tiny = min(per_class, key=per_class.get)
            problems.append(f"classes are imbalanced {most / least:.0f}x ({big}: {most}, {tiny}: {least}); "
                            f"the limit is {max_imbalance:g}x (max_imbalance)")
    if files and damaged / files > max_quarantined_share:
        problems.append(f"{damaged} of {files} files ({damaged / files:.0%}) were quarantined, more than "
                        f"max_quarantined_share={max_quarantined_share:.0%}: is this the right source?")
    return [f"{source}: {p}" for p in problems]


def ingest(source: str, output_dir: str, base_uri: str = "", max_pixels: int = images.DEFAULT_MAX_PIXELS,
           animated: str = "first_frame", min_images_per_class: int = 10, max_imbalance: float = 100.0,
           max_quarantined_share: float = 0.5, workers: int = 16, max_download_bytes: int = DEFAULT_MAX_DOWNLOAD,
           report_html: str = "") -> IngestSummary:
    """Write `manifest.csv`, `classes.json`, `quarantine.csv` and `summary.json` to `output_dir`
    (and, with `report_html`, the ingest report).

    Files are checked by a thread pool (object-store reads and PIL decoding release the GIL) in
    bounded windows: memory holds the manifest rows, never more than a window of images.
    """
    if animated not in images.ANIMATED_POLICIES:
        raise ValueError(f"animated must be one of {images.ANIMATED_POLICIES}, got {animated!r}")
    with storage.atomic_dir(output_dir) as out:
        src = resolve(source, out, base_uri=base_uri, max_download_bytes=max_download_bytes)
        progress = Progress("ingest", len(src.items), unit="files")
        # Streamed: rows go to disk as they are checked; memory keeps only compact per-file columns
        # (a hash index for duplicates, label/split/size), never the rows or the images themselves.
        first_of: dict[bytes, int] = {}
        dup_groups: dict[bytes, list[int]] = {}
        labels, splits, widths, heights = [], [], [], []
        samples: dict[str, list[tuple[int, str]]] = {}
        reasons, notes, examples = Counter(), Counter(), defaultdict(list)
        staged = out / f".{MANIFEST}.unfiltered"
        with open(staged, "w", newline="", encoding="utf-8") as mf, \
                open(out / QUARANTINE, "w", newline="", encoding="utf-8") as qf, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            manifest = csv.DictWriter(mf, MANIFEST_FIELDS)
            quarantine = csv.DictWriter(qf, QUARANTINE_FIELDS)
            manifest.writeheader()
            quarantine.writeheader()

            def quarantined(entry: dict) -> None:
                quarantine.writerow(entry)
                reasons[entry["reason"]] += 1
                if len(examples[entry["reason"]]) < 3:
                    examples[entry["reason"]].append(entry)

            window = max(64, workers * 8)
            for start in range(0, len(src.items), window):
                chunk = src.items[start:start + window]
                for item, (row, reason, detail) in zip(
                        chunk, pool.map(lambda i: _check(i, max_pixels, animated), chunk)):
                    progress.update()
                    if row is None:
                        quarantined({"location": item.location, "label": item.label, "reason": reason,
                                     "detail": detail})
                        continue
                    n = len(labels)
                    manifest.writerow({"location": item.location, "label": item.label, "split": item.split, **row})
                    sha = bytes.fromhex(row["sha256"])
                    if sha in first_of:
                        dup_groups.setdefault(sha, [first_of[sha]]).append(n)
                    else:
                        first_of[sha] = n
                    labels.append(sys.intern(item.label))
                    splits.append(sys.intern(item.split))
                    widths.append(row["width"])
                    heights.append(row["height"])
                    if len(samples.setdefault(item.label, [])) < 12:  # spare ones, in case of duplicates
                        samples[item.label].append((n, item.location))
                    ext = os.path.splitext(item.entry.rel)[1].lower()
                    if images.EXTENSIONS.get(ext, row["format"]) != row["format"]:
                        notes[f"{row['format']} file named {ext}"] += 1
                    if row["frames"] > 1:
                        notes["animated, first frame used"] += 1
            seconds = progress.close()
            dropped: set[int] = set()
            duplicates: list[dict] = []
            if dup_groups:
                mf.flush()
                involved = {i for g in dup_groups.values() for i in g}
                with open(staged, newline="", encoding="utf-8") as f:
                    locations = {i: r["location"] for i, r in enumerate(csv.DictReader(f)) if i in involved}
                dropped, duplicates = _resolve_duplicates(list(dup_groups.values()), labels, splits, locations)
                for e in duplicates:
                    quarantined(e)
        del first_of
        kept = [i for i in range(len(labels)) if i not in dropped]
        per_class = Counter(labels[i] for i in kept)
        per_split = Counter(splits[i] for i in kept if splits[i])
        damaged = sum(n for r, n in reasons.items() if r not in HARMLESS)
        problems = _dataset_checks(source, per_class, len(src.items) - reasons["hidden file"], damaged,
                                   min_images_per_class, max_imbalance, max_quarantined_share)
        if src.layout == "pre-split" and kept and "train" not in per_split:
            problems.append(f"{source}: pre-split layout but no usable training images")
        if problems:
            raise DatasetError("dataset checks failed:\n  " + "\n  ".join(problems))
        if dropped:
            with open(staged, newline="", encoding="utf-8") as src_f, \
                    open(out / MANIFEST, "w", newline="", encoding="utf-8") as dst:
                w = csv.DictWriter(dst, MANIFEST_FIELDS)
                w.writeheader()
                w.writerows(r for i, r in enumerate(csv.DictReader(src_f)) if i not in dropped)
            staged.unlink()
        else:
            staged.rename(out / MANIFEST)
        classes = sorted(per_class)
        summary = IngestSummary(source=source, layout=src.layout, classes=classes, images=len(kept),
                                quarantined=sum(reasons.values()), per_class=dict(sorted(per_class.items())),
                                per_split=dict(sorted(per_split.items())), quarantine_reasons=dict(reasons.most_common()),
                                notes=dict(notes.most_common()), seconds=round(seconds, 3), workers=workers)
        (out / CLASSES).write_text(json.dumps(classes, indent=1))
        (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=1))
        if report_html:
            from components.ingest_report import write_report

            by_class_split = Counter((labels[i], splits[i]) for i in kept)
            shown = {c: [loc for i, loc in picks if i not in dropped] for c, picks in samples.items()}
            write_report(report_html, summary, by_class_split, examples, duplicates[:50], shown,
                         [widths[i] for i in kept], [heights[i] for i in kept], str(out))
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


class ManifestRow:
    """The manifest fields later steps need, with slots and interned labels instead of a dict per row:
    per-image metadata is what grows with the dataset, so keep it small."""
    __slots__ = ("location", "label", "split", "sha256", "dhash")

    def __init__(self, location: str, label: str, split: str, sha256: str, dhash: str):
        self.location, self.label, self.split = location, sys.intern(label), sys.intern(split)
        self.sha256, self.dhash = sha256, dhash

    def __getitem__(self, key: str) -> str:
        return getattr(self, key)


def load_manifest(dataset_dir: str) -> tuple[list[ManifestRow], list[str]]:
    d = Path(dataset_dir)
    with open(d / MANIFEST, newline="", encoding="utf-8") as f:
        rows = [ManifestRow(r["location"], r["label"], r["split"], r["sha256"], r["dhash"]) for r in csv.DictReader(f)]
    return rows, json.loads((d / CLASSES).read_text())


def read_quarantine(dataset_dir: str) -> list[dict]:
    with open(Path(dataset_dir) / QUARANTINE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
