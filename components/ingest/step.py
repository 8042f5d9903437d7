"""Ingest: list a labelled image source, fully decode every file once, and write a manifest.

Sources (see `sources.py`): a folder or bucket prefix in either Keras layout, a zip archive, or a
CSV/Parquet table. Bad input is never fatal and never silent: an unusable file goes to
`quarantine.csv` with a reason; exact duplicates are collapsed (the same image under two labels is a
label conflict, and a copy in a pre-split test folder of a training image is dropped: leakage); and
whole-dataset problems (too few images in a class, extreme imbalance, mostly broken files) fail the
step with one clear message. The user's source is only read.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from imgclf.components.contracts import (
    CLASSES,
    INGEST_SUMMARY,
    MANIFEST,
    MANIFEST_FIELDS,
    QUARANTINE,
    QUARANTINE_FIELDS,
    DatasetError,
)
from imgclf.components.ingest.options import IngestOptions
from imgclf.components.ingest.relabel import DROP, RELABELS, apply_relabel, read_relabel, write_relabels
from imgclf.components.ingest.sources import Item, resolve
from imgclf.components.lib import images, storage, tables
from imgclf.components.lib.litter import describe_ignored
from imgclf.components.lib.options import takes
from imgclf.components.lib.progress import Progress

__all__ = ["DatasetError", "IngestSummary", "ingest"]

SPLIT_RANK = {"train": 0, "validation": 1, "test": 2, "": 3}


@dataclass
class IngestSummary:
    data: str
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
    ignored: int = 0
    """Files left out as OS or notebook litter (lib/litter.py): not data, never read, not quarantined."""
    ignored_kinds: dict[str, int] = field(default_factory=dict)


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
    read, so a stray file is reported for what it is."""
    row, reason, detail, data = _inspect(item, max_pixels, animated)
    return _served_check(row, reason, detail, data)


def _inspect(item: Item, max_pixels: int, animated: str) -> tuple[dict | None, str, str, bytes]:
    """Every check but the served decoder's, and the bytes that one needs: the part of a file's check
    that needs no TensorFlow, so it can run in a forked process."""
    if item.entry.skip_reason or item.problem:
        return None, item.entry.skip_reason or item.problem, "", b""
    # No hidden-file check here: the listing left litter out (lib/litter.py), and a table row naming
    # a hidden file explicitly is the user's choice.
    if problem := label_problem(item.label):
        return None, "invalid class name", problem, b""
    # One guard per item: whatever fails for this file (its URI, the read, the image library anywhere in
    # opening, counting frames or hashing) becomes its quarantine entry with the real cause; only a
    # failure of the store itself ends the step.
    try:
        data = storage.read_bytes(item.entry.uri)
    except FileNotFoundError as e:
        return None, "missing", str(e), b""
    except Exception as e:  # noqa: BLE001 - see above
        if storage.is_store_failure(e, item.entry.uri):
            raise
        return None, "unreadable", f"{type(e).__name__}: {e}", b""
    try:
        info = images.inspect(data, max_pixels=max_pixels, animated=animated)
    except images.ImageRejected as e:
        return None, e.reason, e.detail, b""
    except Exception as e:  # noqa: BLE001 - see above
        return None, "truncated or corrupt", f"{type(e).__name__}: {e}", b""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "width": info.width,
            "height": info.height, "mode": info.mode, "format": info.format, "frames": info.frames,
            "dhash": info.dhash}, "", "", data


def _served_check(row: dict | None, reason: str, detail: str, data: bytes) -> tuple[dict | None, str, str]:
    if row is not None and (problem := images.served_decoder_problem(data)):
        return None, "not decodable when served", f"TensorFlow: {problem}"
    return row, reason, detail


def _inspect_many(items: list[Item], max_pixels: int, animated: str) -> list[tuple]:
    """A forked reader's batch (one round trip per batch, not per file)."""
    return [_inspect(item, max_pixels, animated) for item in items]


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


class _Checked:
    """What the check phase keeps per admitted file: compact columns, never rows or pixels (memory
    grows with per-file metadata only), plus the duplicate index and the quarantine tallies."""

    def __init__(self):
        self.first_of: dict[bytes, int] = {}
        self.dup_groups: dict[bytes, list[int]] = {}
        self.labels: list[str] = []
        self.splits: list[str] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.samples: dict[str, list[tuple[int, str]]] = {}
        self.reasons, self.notes, self.examples = Counter(), Counter(), defaultdict(list)
        self.dropped: set[int] = set()
        self.duplicates: list[dict] = []

    def admit(self, row: dict) -> None:
        """Keep what the later checks and the report need of one manifest row (as written, or as read
        back from a shard task's part: numbers may be text)."""
        n = len(self.labels)
        sha = bytes.fromhex(row["sha256"])
        if sha in self.first_of:
            self.dup_groups.setdefault(sha, [self.first_of[sha]]).append(n)
        else:
            self.first_of[sha] = n
        label = row["label"]
        self.labels.append(sys.intern(label))
        self.splits.append(sys.intern(row["split"]))
        self.widths.append(int(row["width"]))
        self.heights.append(int(row["height"]))
        if len(self.samples.setdefault(label, [])) < 12:  # spare ones, in case of duplicates
            self.samples[label].append((n, row["location"]))

    def note(self, item: Item, row: dict) -> None:
        """What is worth saying about an admitted file that is not a problem (its name, its frames)."""
        ext = os.path.splitext(item.entry.rel)[1].lower()
        if images.EXTENSIONS.get(ext, row["format"]) != row["format"]:
            self.notes[f"{row['format']} file named {ext}"] += 1
        if row["frames"] > 1:
            self.notes["animated, first frame used"] += 1

    def quarantined(self, entry: dict) -> None:
        self.reasons[entry["reason"]] += 1
        if len(self.examples[entry["reason"]]) < 3:
            self.examples[entry["reason"]].append(entry)

    def kept(self) -> list[int]:
        return [i for i in range(len(self.labels)) if i not in self.dropped]

    def counts(self) -> tuple[Counter, Counter]:
        """(images per class, images per given split) of what survives duplicate resolution."""
        kept = self.kept()
        return (Counter(self.labels[i] for i in kept), Counter(self.splits[i] for i in kept if self.splits[i]))


@takes(IngestOptions, leading=("data",))
def ingest(output_dir: str, opts: IngestOptions, *, report_html: str = "") -> IngestSummary:
    """Write `manifest.csv`, `classes.json`, `quarantine.csv` and `summary.json` to `output_dir`
    (and, with `report_html`, the ingest report).

    Files are checked by forked reader processes (local files) or threads (buckets, URLs) in bounded
    windows: memory holds the manifest rows, never more than two windows of images. The pipelines run
    the same phases spread over tasks (shards.py: plan, shard tasks, merge), to the same manifest.
    """
    with storage.atomic_dir(output_dir) as out:
        src = list_source(opts, out)
        opts = replace(opts, workers=opts.workers or reader_threads(src.items))
        checked = _Checked()
        with Outputs(out, checked) as written:
            seconds = check_items(src.items, written, opts)
            written.resolve_duplicates()
        summary = finish(out, opts, src.layout, len(src.items), src.ignored, checked, seconds, report_html)
    announce(summary, src.kind, checked)
    return summary


def list_source(opts: IngestOptions, out: Path):
    """The source's items (a zip extracted into `out`), relabelled, and refused before any file is read
    when its class names clash or its splits hold different classes."""
    src = resolve(opts.data, out, base_uri=opts.data_base_uri, max_download_bytes=opts.max_download_bytes,
                  allow_outside_paths=opts.allow_outside_paths)
    if opts.relabel:
        changes = read_relabel(opts.relabel)
        items, log = apply_relabel(src.items, changes, opts.relabel, label_problem)
        src = replace(src, items=items)
        write_relabels(out / RELABELS, log)
        print(f"ingest: relabel {opts.relabel}: {sum(e['now'] != DROP for e in log)} label(s) changed, "
              f"{sum(e['now'] == DROP for e in log)} file(s) dropped (recorded in {RELABELS})", flush=True)
    check_class_names(src.items)
    check_class_sets(src.items, opts.allow_missing_classes)
    return src


def finish(out: Path, opts: IngestOptions, layout: str, files: int, ignored: dict[str, int], checked: _Checked,
           seconds: float, report_html: str) -> IngestSummary:
    """The whole-dataset checks, then the manifest without dropped duplicates, classes.json,
    summary.json and the report."""
    check_dataset(opts, layout, files, checked)
    write_manifest(out / STAGED, out / MANIFEST, checked.dropped)
    summary = summarize(opts, layout, checked, seconds, ignored)
    (out / CLASSES).write_text(json.dumps(summary.classes, indent=1))
    (out / INGEST_SUMMARY).write_text(json.dumps(asdict(summary), indent=1))
    if report_html:
        write_report(report_html, summary, checked, str(out))
    return summary


def announce(summary: IngestSummary, kind: str, checked: _Checked) -> None:
    print(f"ingest: {summary.images} images in {len(summary.classes)} classes ({summary.layout}, {kind}); "
          f"{summary.quarantined} quarantined {dict(checked.reasons) if checked.reasons else ''}".rstrip()
          + (f"; ignored as OS or notebook litter: {describe_ignored(summary.ignored_kinds)}" if summary.ignored else ""),
          flush=True)


STAGED = f".{MANIFEST}.unfiltered"
"""Every admitted row, before duplicate resolution drops some (a hidden file of the output folder)."""


class Outputs:
    """The manifest (staged) and quarantine files being written, and the tallies of what went in:
    rows in the order they are given, whether checked here or read back from shard tasks' parts."""

    def __init__(self, folder: Path, checked: _Checked, staged: str = STAGED, quarantine: str = QUARANTINE):
        self.staged, self.quarantine_csv, self.checked = folder / staged, folder / quarantine, checked

    def __enter__(self):
        self._mf = open(self.staged, "w", newline="", encoding="utf-8")
        self._qf = open(self.quarantine_csv, "w", newline="", encoding="utf-8")
        self._manifest = tables.Writer(self._mf, MANIFEST_FIELDS)
        self._quarantine = tables.Writer(self._qf, QUARANTINE_FIELDS)
        return self

    def __exit__(self, *exc):
        self._mf.close()
        self._qf.close()
        self.checked.first_of.clear()

    def admitted(self, row: dict) -> None:
        self._manifest.writerow(row)
        self.checked.admit(row)

    def quarantined(self, entry: dict) -> None:
        self._quarantine.writerow(entry)
        self.checked.quarantined(entry)

    def resolve_duplicates(self) -> None:
        """Exact duplicates among every admitted row: one kept, the others quarantined after the rest."""
        checked = self.checked
        if not checked.dup_groups:
            return
        self._mf.flush()
        involved = {i for g in checked.dup_groups.values() for i in g}
        with open(self.staged, newline="", encoding="utf-8") as f:
            locations = {i: r["location"] for i, r in enumerate(tables.read_rows(f)) if i in involved}
        checked.dropped, checked.duplicates = _resolve_duplicates(
            list(checked.dup_groups.values()), checked.labels, checked.splits, locations)
        for e in checked.duplicates:
            self.quarantined(e)


def reader_threads(items: list[Item]) -> int:
    """Local files: one reader per core (decoding is the work; more readers than cores only contend and
    were measurably slower). Any file in a bucket or behind a URL: 16, to overlap the waits."""
    return REMOTE_READERS if _remote(items) else max(1, os.cpu_count() or 1)


def _remote(items: list[Item]) -> bool:
    return any("://" in item.entry.uri and not item.entry.uri.startswith("file://") for item in items)


REMOTE_READERS = 16


def check_items(items: list[Item], written: Outputs, opts: IngestOptions, name: str = "ingest") -> float:
    """Check every file, streamed: each row goes to the manifest or the quarantine as it is checked,
    in the items' order. Returns the seconds it took."""
    progress = Progress(name, len(items), unit="files")
    with _checker(items, opts) as results:
        for item, (row, reason, detail) in zip(items, results):
            progress.update()
            if row is None:
                written.quarantined({"location": item.location, "label": item.label, "reason": reason,
                                     "detail": detail})
                continue
            written.admitted({"location": item.location, "label": item.label, "split": item.split, **row})
            written.checked.note(item, row)
    return progress.close()


@contextlib.contextmanager
def _checker(items: list[Item], opts: IngestOptions):
    """Every item's (row, reason, detail), in order, with at most two windows of files in flight.

    Local files go to forked reader processes: a file's check is short and mostly Python (PIL,
    hashing, the calls into TensorFlow), so threads hold the GIL by turns and two checked the embedded
    sample no faster than one. The readers never touch TensorFlow (forking is safe whatever this
    process has run); this process's threads run the served-decoder check of each batch they pass back,
    while they read the next ones. Files in a bucket or behind a URL go to threads, which overlap the
    network waits.
    """
    fork = opts.workers > 1 and not _remote(items) and "fork" in multiprocessing.get_all_start_methods()
    if not fork:
        with ThreadPoolExecutor(max_workers=opts.workers) as pool:
            check = functools.partial(_check, max_pixels=opts.max_pixels, animated=opts.animated)
            window = max(64, opts.workers * 8)
            yield _pipelined((items[i:i + window] for i in range(0, len(items), window)),
                             lambda chunk: pool.map(check, chunk))
        return
    inspect = functools.partial(_inspect_many, max_pixels=opts.max_pixels, animated=opts.animated)
    with _frozen_for_fork(), \
            ProcessPoolExecutor(max_workers=opts.workers, mp_context=multiprocessing.get_context("fork")) as readers, \
            ThreadPoolExecutor(max_workers=opts.workers) as deciders:
        def start(window: list[list[Item]]):
            decided = [deciders.submit(_served_checks, readers.submit(inspect, batch)) for batch in window]
            return (checked for future in decided for checked in future.result())

        batches = batched(items, PROCESS_BATCH, PROCESS_BATCH_BYTES)
        yield _pipelined(_groups(batches, 2 * opts.workers), start)


@contextlib.contextmanager
def _frozen_for_fork():
    """The listing (an object per file) stays shared with the forked readers: a child's garbage
    collector would otherwise write to every object's header and copy each page it sits on, once per
    reader (gc.freeze: the objects that exist now are left out of collection, here and in the children)."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


PROCESS_BATCH = 64
PROCESS_BATCH_BYTES = 16 * 2 ** 20
"""A forked reader's batch: at most this many files, and of bytes (unless one file is larger). Its
bytes come back for the served-decoder check, so with two windows of 2 x workers batches in flight,
memory holds at most 4 x workers x 16 MiB of files."""


def batched(items: list[Item], files: int, max_bytes: int):
    """Consecutive runs of `items`: at most `files` each, and at most `max_bytes` by their listed sizes
    unless a single file is larger."""
    batch, size = [], 0
    for item in items:
        if batch and (len(batch) == files or size + item.entry.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.entry.size
    if batch:
        yield batch


def _groups(iterable, n: int):
    group = []
    for x in iterable:
        group.append(x)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _served_checks(batch) -> list[tuple]:
    """The served-decoder check of a reader's batch, on one of `workers` threads: TensorFlow decodes
    outside the GIL, and a large JPEG's full decode is most of such a file's check."""
    return [_served_check(*found) for found in batch.result()]


def _pipelined(chunks, start):
    """`start(chunk)` for each chunk, the next one started before this one's results are read."""
    pending = None
    for chunk in chunks:
        started = start(chunk)
        if pending is not None:
            yield from pending
        pending = started
    if pending is not None:
        yield from pending


def check_class_names(items: list[Item]) -> None:
    """Class names that differ only by case or Unicode normalisation ("Cat"/"cat", NFC/NFD "Café") would
    silently become two classes: refuse them before any file is read, naming the folders."""
    groups: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.label:
            groups[unicodedata.normalize("NFC", item.label).casefold()].add(item.label)
    clashes = [sorted(names) for names in groups.values() if len(names) > 1]
    if clashes:
        raise DatasetError("class names that differ only by case or Unicode normalisation: "
                           + "; ".join(" and ".join(repr(n) for n in names) for names in clashes)
                           + ". Merge or rename those folders (or labels)")


def check_class_sets(items: list[Item], allow_missing: bool = False) -> None:
    """In a pre-split source every split must hold the same classes: a typo'd folder
    (`validation/Sandals` beside `train/Sandal`) would otherwise train a class with no training images,
    or evaluate one the model can never predict, and pass the gate. Refused before any file is read,
    naming each folder and the closest name in train/. A class absent from validation/ or test/ is
    allowed with `allow_missing_classes` (its metrics are then missing, not wrong); one absent from
    train/ never is."""
    by_split: dict[str, set[str]] = defaultdict(set)
    for item in items:
        # Rows ingest quarantines anyway (a bad path, an unusable label) are not classes of a split.
        if item.split and item.label and not (item.problem or item.entry.skip_reason or label_problem(item.label)):
            by_split[item.split].add(item.label)
    train = by_split.get("train")
    if not train:
        return  # no training images at all: check_dataset names that
    problems = []
    for split in sorted(set(by_split) - {"train"}, key=SPLIT_RANK.get):
        for label in sorted(by_split[split] - train):
            problems.append(f"`{split}/{label}`: no such class in train/" + _did_you_mean(label, train))
        if not allow_missing:
            for label in sorted(train - by_split[split]):
                problems.append(f"`train/{label}`: no images in {split}/"
                                + _did_you_mean(label, by_split[split] - train, where=f"{split}/"))
    if problems:
        hint = "rename or move those folders or labels" + ("" if allow_missing else
                                                           "; allow_missing_classes lets a class be absent "
                                                           "from validation/test")
        raise DatasetError("the splits hold different classes: " + "; ".join(problems) + f" ({hint})")


def _did_you_mean(label: str, names: set[str], where: str = "") -> str:
    """" — did you mean `Sandal`?" for the closest of `names` (case and spelling), or ""."""
    import difflib

    folded = {n.casefold(): n for n in names}
    close = difflib.get_close_matches(label.casefold(), list(folded), n=1, cutoff=0.6)
    return f" — did you mean `{where}{folded[close[0]]}`?" if close else ""


def check_dataset(opts: IngestOptions, layout: str, files: int, checked: _Checked) -> None:
    """Whole-dataset problems fail the step with one message naming the classes and numbers."""
    per_class, per_split = checked.counts()
    # Ignored litter is not among the files: it counts neither as a file nor as quarantined.
    problems = _dataset_checks(opts.data, per_class, files, sum(checked.reasons.values()),
                               opts.min_images_per_class, opts.max_imbalance, opts.max_quarantined_share)
    if layout == "pre-split" and per_class and "train" not in per_split:
        problems.append(f"{opts.data}: pre-split layout but no usable training images")
    if problems:
        # One line: the run's final error line is the exception's line, and it must carry the reasons.
        raise DatasetError("dataset checks failed: " + "; ".join(problems))


def write_manifest(staged: Path, final: Path, dropped: set[int]) -> None:
    """The manifest without the rows duplicate resolution dropped."""
    if not dropped:
        staged.rename(final)
        return
    with open(staged, newline="", encoding="utf-8") as src_f, open(final, "w", newline="", encoding="utf-8") as dst:
        tables.Writer(dst, MANIFEST_FIELDS).writerows(r for i, r in enumerate(tables.read_rows(src_f)) if i not in dropped)
    staged.unlink()


def summarize(opts: IngestOptions, layout: str, checked: _Checked, seconds: float,
              ignored: dict[str, int] | None = None) -> IngestSummary:
    per_class, per_split = checked.counts()
    ignored = ignored or {}
    return IngestSummary(data=opts.data, layout=layout, classes=sorted(per_class), images=sum(per_class.values()),
                         quarantined=sum(checked.reasons.values()), per_class=dict(sorted(per_class.items())),
                         per_split=dict(sorted(per_split.items())),
                         quarantine_reasons=dict(checked.reasons.most_common()),
                         notes=dict(checked.notes.most_common()), seconds=round(seconds, 3), workers=opts.workers,
                         ignored=sum(ignored.values()),
                         ignored_kinds=dict(sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0]))))


def write_report(path: str, summary: IngestSummary, checked: _Checked, dataset_dir: str) -> None:
    from imgclf.components.ingest.report import write_report as render

    kept = checked.kept()
    by_class_split = Counter((checked.labels[i], checked.splits[i]) for i in kept)
    shown = {c: [loc for i, loc in picks if i not in checked.dropped] for c, picks in checked.samples.items()}
    render(path, summary, by_class_split, checked.examples, checked.duplicates[:50], shown,
           [checked.widths[i] for i in kept], [checked.heights[i] for i in kept], dataset_dir)
