"""Preprocess spread over tasks: plan (the splits, from the whole manifest) -> N shard tasks (each writes
its share of the TFRecord files) -> merge (one records artifact and its metadata).

The plan fixes every split and its order before any image is read, and the files are the single task's
files (same names, same rows in the same order), dealt out round-robin: the merged output is the same
as one preprocess task's, byte for byte, whatever N. A shard task reads the manifest and the plan,
never the other tasks' images, so each pod handles 1/N of the images.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgclf.components.contracts import DatasetError, ingest_source, load_manifest
from imgclf.components.lib import sharding, storage
from imgclf.components.lib.options import takes
from imgclf.components.lib.progress import Progress
from imgclf.components.preprocess.options import PreprocessOptions
from imgclf.components.preprocess.step import (
    PreprocessSummary,
    image_loader,
    input_spec,
    plan_splits,
    record_files,
    save_metadata,
    split_infos,
    write_file,
)

PLAN_FILE, PART_FILE = "plan.json", "part.json"
IMAGES_PER_TASK = 10_000
AUTO_MAX = 32


def task_count(images: int, files: int, requested: int, in_series: bool = False) -> int:
    """`requested` tasks (0: one per 10,000 images, at most 32; one when tasks run in series), never
    more than there are files."""
    return sharding.task_count(images, files, requested, IMAGES_PER_TASK, AUTO_MAX, in_series)


@takes(PreprocessOptions)
def plan(dataset_dir: str, plan_dir: str, opts: PreprocessOptions) -> list[int]:
    """plan.json: every split's rows in order, the near-duplicates and the task count; returns the
    shard task indices (the ParallelFor's items)."""
    rows, _ = load_manifest(dataset_dir)
    splits, near = plan_splits(rows, opts)
    files = record_files(splits, opts.images_per_shard)
    in_series = sharding.in_series()
    n = task_count(len(rows), len(files), opts.shard_tasks, in_series)
    with storage.atomic_dir(plan_dir) as out:
        (out / PLAN_FILE).write_text(json.dumps({"splits": splits, "near_duplicates": near, "tasks": n}))
    print(f"preprocess plan: {sum(map(len, splits.values()))} images in {len(files)} TFRecord files over "
          f"{n} shard task(s)" + ("" if opts.shard_tasks else " (automatic, tasks in series)" if in_series
                                   else " (automatic)"), flush=True)
    return list(range(n))


def _load_plan(plan_dir: str) -> dict:
    return json.loads((Path(plan_dir) / PLAN_FILE).read_text(encoding="utf-8"))


@takes(PreprocessOptions)
def write_part(dataset_dir: str, plan_dir: str, shard: int, part_dir: str, opts: PreprocessOptions) -> dict:
    """Shard task `shard`: the TFRecord files number shard, shard + N, shard + 2N, ... and part.json
    with each file's images per class and the quarantined rows, in file order."""
    rows, classes = load_manifest(dataset_dir)
    p = _load_plan(plan_dir)
    n, spec = p["tasks"], input_spec(classes, opts)
    if not 0 <= shard < n:
        raise ValueError(f"shard {shard}: the plan has shard tasks 0 to {n - 1}")
    mine = record_files(p["splits"], opts.images_per_shard)[shard::n]
    load = image_loader(dataset_dir, rows, spec)
    progress = Progress(f"preprocess shard {shard}/{n}", sum(len(idx) for _, _, idx in mine))
    files = []
    with storage.atomic_dir(part_dir) as out, ThreadPoolExecutor(max_workers=opts.workers) as pool:
        for split, name, idx in mine:
            quarantined = []
            per_class = write_file(str(out / name), split, idx, rows, spec, load, pool, progress, quarantined)
            files.append({"split": split, "name": name, "per_class": dict(per_class), "quarantined": quarantined})
        part = {"shard": shard, "files": files, "seconds": round(progress.close(), 3)}
        (out / PART_FILE).write_text(json.dumps(part), encoding="utf-8")
    return part


def _place(src: Path, dest: Path) -> None:
    """A hard link where both sides share a file system (kfp.local), else a copy (a pod's volumes)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


@takes(PreprocessOptions)
def merge(dataset_dir: str, plan_dir: str, part_dirs: list[str], output_dir: str,
          opts: PreprocessOptions) -> PreprocessSummary:
    """The records artifact: every part's files under one folder, and metadata.json as one task writes it."""
    rows, classes = load_manifest(dataset_dir)
    p = _load_plan(plan_dir)
    spec = input_spec(classes, opts)
    parts = [json.loads((Path(d) / PART_FILE).read_text(encoding="utf-8")) for d in part_dirs]
    if sorted(part["shard"] for part in parts) != list(range(p["tasks"])):
        raise ValueError(f"{len(parts)} parts for a plan of {p['tasks']} shard tasks")
    found = {f["name"]: (d, f) for d, part in zip(part_dirs, parts) for f in part["files"]}
    order = [name for _, name, _ in record_files(p["splits"], opts.images_per_shard)]
    if sorted(found) != sorted(order):
        raise ValueError("the parts' files are not the plan's files")
    quarantined, written = [], []
    with storage.atomic_dir(output_dir) as out:
        for name in order:
            d, f = found[name]
            _place(Path(d) / name, out / name)
            quarantined += f["quarantined"]
            written.append((f["split"], name, Counter(f["per_class"])))
        meta_splits = split_infos(spec, written, out)
        if meta_splits["train"].count == 0:
            raise DatasetError(f"{dataset_dir}: no training images left after preprocessing")
        fp, data_fp = save_metadata(out, rows, spec, meta_splits, quarantined, p["near_duplicates"], opts,
                                    ingest_source(dataset_dir), p["splits"])
    seconds = max((part["seconds"] for part in parts), default=0.0)
    summary = PreprocessSummary(classes, {k: v.count for k, v in meta_splits.items()}, len(quarantined), fp, data_fp,
                                seconds, len(p["near_duplicates"]))
    print(f"preprocess merge: {summary.counts} from {len(parts)} shard task(s); {len(quarantined)} quarantined",
          flush=True)
    return summary
