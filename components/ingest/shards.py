"""Ingest spread over tasks: plan (list the source, refuse what can be refused before a byte is read,
deal the listing out) -> N shard tasks (each decode-checks its run of the files) -> merge (the
whole-dataset checks: exact duplicates and label conflicts across every shard, imbalance, the
quarantined share; one manifest).

The plan fixes the listing and its order; shard task k checks the k-th consecutive run of it, and the
merge reads the parts back in task order through the same `Outputs` a single task writes through, so
the manifest and the quarantine are one task's, byte for byte, whatever N. Each file is read and
decoded once, by one shard task; a retried task rewrites only its own part (atomic folders). A shard
task holds only its run of the listing; the merge holds per-file metadata, never an image.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

from imgclf.components.ingest.options import IngestOptions
from imgclf.components.ingest.relabel import RELABELS
from imgclf.components.ingest.sources import Item
from imgclf.components.ingest.step import (
    QUARANTINE,
    IngestSummary,
    Outputs,
    _Checked,
    announce,
    check_items,
    finish,
    list_source,
    reader_threads,
)
from imgclf.components.lib import sharding, storage, tables
from imgclf.components.lib.options import takes

PLAN_FILE, PART_FILE = "plan.json", "part.json"
FILES_PER_TASK = 25_000
"""Automatic count: a task per this many files (about half a minute of checking photos on 2 cores,
more for tiny images), so a pod's start-up stays a small share of its work."""
AUTO_MAX = 32
ITEM_FIELDS = ["rel", "uri", "size", "skip_reason", "location", "label", "split", "problem"]
EXTRACTED = "files"
"""Where a zip source's files are extracted, in the plan and (linked or copied) in the dataset."""


class _Tally(_Checked):
    """A shard task's tallies, what its part.json reports (notes, files admitted); the quarantine's are
    counted as rows are written. The columns and the duplicate index are the merge's, over every part:
    a shard task keeps nothing per admitted file."""

    def __init__(self):
        super().__init__()
        self.admitted = 0

    def admit(self, row: dict) -> None:
        self.admitted += 1


def _items_file(shard: int) -> str:
    return f"items-{shard:05d}.csv"


def task_count(files: int, requested: int, in_series: bool = False) -> int:
    """`requested` tasks (0: one per 25,000 files, at most 32; one when tasks run in series), never
    more than there are files."""
    return sharding.task_count(files, files, requested, FILES_PER_TASK, AUTO_MAX, in_series)


@takes(IngestOptions, leading=("data",))
def plan(plan_dir: str, opts: IngestOptions) -> list[int]:
    """plan.json (the source's kind, layout, ignored litter, file count, task count) and one listing
    file per shard task; a zip is extracted here, once. Returns the shard task indices."""
    with storage.atomic_dir(plan_dir) as out:
        src = list_source(opts, out)
        n = task_count(len(src.items), opts.ingest_tasks, sharding.in_series())
        runs = sharding.contiguous(len(src.items), n)
        for shard, run in enumerate(runs):
            with open(out / _items_file(shard), "w", newline="", encoding="utf-8") as f:
                w = tables.Writer(f, ITEM_FIELDS)
                for item in src.items[run.start:run.stop]:
                    w.writerow(_item_row(item, out if src.kind == "zip" else None))
        (out / PLAN_FILE).write_text(json.dumps({
            "kind": src.kind, "layout": src.layout, "ignored": src.ignored, "files": len(src.items),
            "tasks": n}), encoding="utf-8")
    print(f"ingest plan: {len(src.items)} files ({src.layout}, {src.kind}) over {n} shard task(s)"
          + ("" if opts.ingest_tasks else " (automatic, tasks in series)" if sharding.in_series()
             else " (automatic)"), flush=True)
    return list(range(n))


def _item_row(item: Item, extracted_in: Path | None) -> dict:
    """A listing row; a file extracted into the plan is named relative to it (the shard tasks see the
    plan at another path)."""
    uri = item.entry.uri
    if extracted_in is not None:
        uri = os.path.relpath(uri, extracted_in)
    return {"rel": item.entry.rel, "uri": uri, "size": item.entry.size, "skip_reason": item.entry.skip_reason,
            "location": item.location, "label": item.label, "split": item.split, "problem": item.problem}


def _load_plan(plan_dir: str) -> dict:
    return json.loads((Path(plan_dir) / PLAN_FILE).read_text(encoding="utf-8"))


def _read_items(plan_dir: str, shard: int, zip_kind: bool) -> list[Item]:
    with open(Path(plan_dir) / _items_file(shard), newline="", encoding="utf-8") as f:
        rows = list(tables.read_rows(f))
    root = os.path.abspath(plan_dir)
    return [Item(storage.Entry(r["rel"], os.path.join(root, r["uri"]) if zip_kind else r["uri"], int(r["size"]),
                               r["skip_reason"]), r["location"], r["label"], r["split"], r["problem"])
            for r in rows]


@takes(IngestOptions)
def write_part(plan_dir: str, shard: int, part_dir: str, opts: IngestOptions) -> dict:
    """Shard task `shard`: check its run of the listing into a manifest part and a quarantine part
    (rows in listing order), and part.json with its notes and seconds."""
    p = _load_plan(plan_dir)
    if not 0 <= shard < p["tasks"]:
        raise ValueError(f"shard {shard}: the plan has shard tasks 0 to {p['tasks'] - 1}")
    items = _read_items(plan_dir, shard, p["kind"] == "zip")
    opts = replace(opts, workers=opts.workers or reader_threads(items))
    checked = _Tally()
    with storage.atomic_dir(part_dir) as out:
        with Outputs(out, checked, staged="manifest.csv") as written:
            seconds = check_items(items, written, opts, name=f"ingest shard {shard}/{p['tasks']}")
        part = {"shard": shard, "files": len(items), "admitted": checked.admitted,
                "notes": dict(checked.notes), "seconds": round(seconds, 3), "workers": opts.workers}
        (out / PART_FILE).write_text(json.dumps(part), encoding="utf-8")
    return part


@takes(IngestOptions)
def merge(plan_dir: str, part_dirs: list[str], output_dir: str, opts: IngestOptions, *,
          report_html: str = "") -> IngestSummary:
    """The dataset artifact, as one ingest task writes it: every part's rows in task order, then the
    duplicates across all of them, the whole-dataset checks, summary, classes and report."""
    p = _load_plan(plan_dir)
    parts = [json.loads((Path(d) / PART_FILE).read_text(encoding="utf-8")) for d in part_dirs]
    if sorted(part["shard"] for part in parts) != list(range(p["tasks"])):
        raise ValueError(f"{len(parts)} parts for a plan of {p['tasks']} shard tasks")
    ordered = sorted(zip(parts, part_dirs), key=lambda pd: pd[0]["shard"])
    if sum(part["files"] for part, _ in ordered) != p["files"]:
        raise ValueError("the parts do not hold every file of the plan")
    checked = _Checked()
    with storage.atomic_dir(output_dir) as out:
        if p["kind"] == "zip":
            _place_tree(Path(plan_dir) / EXTRACTED, out / EXTRACTED)
        if (Path(plan_dir) / RELABELS).is_file():
            shutil.copyfile(Path(plan_dir) / RELABELS, out / RELABELS)
        with Outputs(out, checked) as written:
            for _, d in ordered:
                with open(Path(d) / "manifest.csv", newline="", encoding="utf-8") as f:
                    for row in tables.read_rows(f):
                        written.admitted(row)
            for _, d in ordered:
                with open(Path(d) / QUARANTINE, newline="", encoding="utf-8") as f:
                    for entry in tables.read_rows(f):
                        written.quarantined(entry)
            written.resolve_duplicates()
        checked.notes = sum((Counter(part["notes"]) for part, _ in ordered), Counter())
        seconds = max((part["seconds"] for part, _ in ordered), default=0.0)
        workers = max((part["workers"] for part, _ in ordered), default=0)
        summary = finish(out, replace(opts, workers=workers), p["layout"], p["files"], p["ignored"], checked,
                         seconds, report_html)
    announce(summary, p["kind"], checked)
    return summary


def _place_tree(src: Path, dest: Path) -> None:
    """Hard links where both sides share a file system (kfp.local), else copies (a pod's volumes)."""
    for folder, _, names in os.walk(src):
        target = dest / os.path.relpath(folder, src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                os.link(os.path.join(folder, name), target / name)
            except OSError:
                shutil.copyfile(os.path.join(folder, name), target / name)
