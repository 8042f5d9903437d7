"""Preprocess: content-hash stratified split (stable as the data grows), decode + resize with the serving-time
decoder, sharded TFRecords.

Images stream through one at a time (bounded windows of a thread pool); only slim manifest rows are
held in memory, so memory grows with per-image metadata, never with pixels.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from imgclf.components.contracts import (
    DatasetError,
    InputSpec,
    RecordsMetadata,
    SplitImages,
    SplitInfo,
    ingest_source,
    load_manifest,
    location_uri,
)
from imgclf.components.lib import images, records, storage
from imgclf.components.lib.options import takes
from imgclf.components.lib.progress import Progress
from imgclf.components.preprocess.near_duplicates import near_duplicates
from imgclf.components.preprocess.options import LAYOUT_ONLY, PreprocessOptions


@dataclass
class PreprocessSummary:
    classes: list[str]
    counts: dict[str, int]
    quarantined: int
    fingerprint: str
    data_fingerprint: str
    seconds: float
    near_duplicates: int = 0


def data_fingerprint(rows: list[dict]) -> str:
    """Content identity of a dataset: what caching and 'retrain only on new data' key on."""
    h = hashlib.sha256()
    for line in sorted(f"{r['sha256']}\t{r['label']}\t{r['split']}" for r in rows):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def split_position(sha256: str, seed: int) -> float:
    """Where an image falls in [0, 1): from its content and the seed alone, so adding or removing other
    images never moves it to another split (TFX splits by hash for the same reason)."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _bands(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each carved split's [low, high) band of positions, in order; the rest stays where it is."""
    bands, low = {}, 0.0
    for name, fraction in fractions.items():
        bands[name] = (low, low + fraction)
        low += fraction
    return bands


def _carve(indices: list[int], rows: list[dict], fractions: dict[str, float], seed: int,
           rest: str = "train") -> dict[str, list[int]]:
    """Split `indices` by each image's position: the splits of `fractions` take their bands, `rest` the rest.

    Stratified within each class: every class gets the same bands, and a class the bands leave with no
    image in a carved split gets its one image nearest to that band moved there. That exception is the only
    way another image's arrival can move an image, and only in a class too small to fill every split (it
    goes back when the class grows). A class smaller than the number of splits cannot be split at all.
    """
    fractions = {k: v for k, v in fractions.items() if v > 0}
    out = {rest: [], **{k: [] for k in fractions}}
    if not fractions:
        out[rest] = list(indices)
        return out
    bands = _bands(fractions)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_class[rows[i]["label"]].append(i)
    for label, members in by_class.items():
        if len(members) < len(fractions) + 1:
            raise DatasetError(
                f"class {label!r} has only {len(members)} image(s): a stratified split into {rest} and "
                f"{', '.join(fractions)} needs at least {len(fractions) + 1} per class; add images or set "
                f"{' and '.join(f'{k}_fraction' if k != 'validation' else 'val_fraction' for k in fractions)} to 0")
        position = {i: split_position(rows[i]["sha256"], seed) for i in members}
        mine = {name: [] for name in out}
        for i in members:
            name = next((n for n, (lo, hi) in bands.items() if lo <= position[i] < hi), rest)
            mine[name].append(i)
        for name, (lo, hi) in bands.items():
            if mine[name]:
                continue
            donor = max(mine, key=lambda n: (len(mine[n]), n == rest))
            nearest = min(mine[donor], key=lambda i: (max(lo - position[i], position[i] - hi, 0.0), i))
            mine[donor].remove(nearest)
            mine[name].append(nearest)
        for name, idx in mine.items():
            out[name] += idx
    return {name: sorted(idx) for name, idx in out.items()}


def assign_splits(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Row indices per split: the source's own split where it has one; otherwise each image's split follows
    from its content hash and the seed (`split_position`), stratified within its class."""
    given = defaultdict(list)
    for i, r in enumerate(rows):
        given[r["split"] or "unsplit"].append(i)
    if "unsplit" in given:
        if len(given) > 1:
            raise DatasetError("manifest mixes pre-split and unsplit images")
        carved = _carve(given["unsplit"], rows, {"test": test_fraction, "validation": val_fraction}, seed)
        return {"train": carved["train"], "validation": carved.get("validation", []), "test": carved.get("test", [])}
    split = {"train": given.get("train", []), "validation": given.get("validation", []), "test": given.get("test", [])}
    # A pre-split source without validation/ or test/ gets them carved from train by the same rule, like
    # Keras' validation_split: the user's explicit folders always win.
    missing = {name: fraction for name, fraction in (("test", test_fraction), ("validation", val_fraction))
               if not split[name] and fraction > 0}
    if missing:
        carved = _carve(split["train"], rows, missing, seed)
        split.update({name: carved.get(name, split[name]) for name in split})
    return split


def fold_of(sha256: str, seed: int, folds: int) -> int:
    """An image's audit fold, from its content and the seed alone (like `split_position`, with its own salt,
    so folds cut across the train/validation bands instead of following them)."""
    return int(split_position(f"audit:{sha256}", seed) * folds)


def audit_splits(rows: list, splits: dict[str, list[int]], folds: int, fold: int, val_fraction: float,
                 seed: int) -> dict[str, list[int]]:
    """One fold of a label audit: fold `fold` of the train and validation images becomes "test" (scored
    out-of-fold by a model that never saw it), a `val_fraction` slice of the other folds the validation
    split (early stopping), the rest train. The source's own test images are left out: the audit judges
    the labels a model learns from. Folds are not stratified: each image's fold follows from its hash,
    so it never depends on which other images are present."""
    pool = sorted(splits["train"] + splits["validation"])
    held = [i for i in pool if fold_of(rows[i]["sha256"], seed, folds) == fold]
    held_set = set(held)
    rest = [i for i in pool if i not in held_set]
    carved = _carve(rest, rows, {"validation": val_fraction}, seed)
    return {"train": carved["train"], "validation": carved.get("validation", []), "test": held}


def shuffled(splits: dict[str, list[int]], seed: int) -> dict[str, list[int]]:
    """Each split in a seeded random order. The listing order is class-sorted: shards written in it hold
    a few classes each, and even with interleaved reads and a shuffle buffer the first batches of an
    epoch then see as few as 3 of 10 classes (slower, noisier training)."""
    import numpy as np

    return {name: [idx[i] for i in np.random.default_rng([seed, n]).permutation(len(idx))]
            for n, (name, idx) in enumerate(splits.items())}


def plan_splits(rows: list, opts: PreprocessOptions) -> tuple[dict[str, list[int]], list[dict]]:
    """Every split's row indices in their final (seeded, shuffled) order, and the near-duplicates found:
    decided from the whole manifest before any image is read, so how the writing is spread over tasks
    (`shard_tasks`) cannot change a split."""
    splits = assign_splits(rows, opts.val_fraction, opts.test_fraction, opts.seed)
    if opts.audit_folds:
        splits = audit_splits(rows, splits, opts.audit_folds, opts.audit_fold, opts.val_fraction, opts.seed)
    near = near_duplicates(rows, splits, opts.near_duplicate_bits)
    if near:
        print(f"preprocess: {len(near)} validation/test image(s) are near-duplicates of training images"
              + ("; leaving them out" if opts.drop_near_duplicates else " (reported; drop_near_duplicates=False)"),
              flush=True)
    if opts.drop_near_duplicates and near:
        gone = {n["location"] for n in near}
        for split in ("validation", "test"):
            splits[split] = [i for i in splits[split] if rows[i]["location"] not in gone]
    return shuffled(splits, opts.seed), near


def input_spec(classes: list[str], opts: PreprocessOptions) -> InputSpec:
    return InputSpec(classes, opts.image_size, images.channels_for(opts.color_mode), opts.color_mode)


def record_files(splits: dict[str, list[int]], per_shard: int) -> list[tuple[str, str, list[int]]]:
    """(split, file name, row indices) of every TFRecord file, in writing order."""
    files = []
    for split, idx in splits.items():
        n = max(1, math.ceil(len(idx) / per_shard))
        files += [(split, f"{split}-{s:05d}-of-{n:05d}.tfrecord", idx[s * per_shard:(s + 1) * per_shard])
                  for s in range(n)]
    return files


def save_metadata(out, rows: list, spec: InputSpec, meta_splits: dict[str, SplitInfo], quarantined: list[dict],
                  near: list[dict], opts: PreprocessOptions, source: str,
                  splits: dict[str, list[int]]) -> tuple[str, str]:
    """metadata.json and images.csv (every planned image's split by content hash); returns (fingerprint,
    data fingerprint). `source` is where ingest read the data."""
    data_fp = data_fingerprint(rows)
    gone = {q["location"] for q in quarantined}
    SplitImages({split: {rows[i]["location"]: rows[i]["sha256"] for i in sorted(idx)
                         if rows[i]["location"] not in gone} for split, idx in splits.items()}).save(out)
    # What changes the records' content (the pipeline parameters), not how they were written.
    params = {o.name: getattr(opts, o.name) for o in opts.declared() if o.pipeline and o.name not in LAYOUT_ONLY}
    if opts.audit_folds:  # an audit fold's records are not the run's records
        params.update(audit_folds=opts.audit_folds, audit_fold=opts.audit_fold)
    fp = hashlib.sha256((data_fp + json.dumps(params, sort_keys=True)).encode()).hexdigest()
    RecordsMetadata(spec, meta_splits, params, data_fp, fp, quarantined, near,
                    bool(opts.drop_near_duplicates and near), source=source).save(out)
    return fp, data_fp


@takes(PreprocessOptions)
def preprocess(dataset_dir: str, output_dir: str, opts: PreprocessOptions) -> PreprocessSummary:
    """Write `<split>-NNNNN-of-NNNNN.tfrecord` shards and `metadata.json` to `output_dir`.

    Near-duplicates of training images in validation/test (perceptual hash within
    `near_duplicate_bits` bits; -1 turns the check off) are reported in the metadata, and left out
    of their split with `drop_near_duplicates`.
    """
    rows, classes = load_manifest(dataset_dir)
    spec = input_spec(classes, opts)
    splits, near = plan_splits(rows, opts)
    with storage.atomic_dir(output_dir) as out:
        meta_splits, quarantined, seconds = write_shards(dataset_dir, rows, splits, spec, out, opts)
        if meta_splits["train"].count == 0:
            raise DatasetError(f"{dataset_dir}: no training images left after preprocessing")
        fp, data_fp = save_metadata(out, rows, spec, meta_splits, quarantined, near, opts, ingest_source(dataset_dir),
                                    splits)
    summary = PreprocessSummary(classes, {k: v.count for k, v in meta_splits.items()}, len(quarantined),
                                fp, data_fp, round(seconds, 3), len(near))
    print(f"preprocess: {summary.counts} at {spec.image_size}x{spec.image_size}x{spec.channels}; "
          f"{len(quarantined)} quarantined", flush=True)
    return summary


DECODE_BATCH = 64
"""Images decoded per TensorFlow call."""


def image_loader(dataset_dir: str, rows: list, spec: InputSpec):
    """(read, decode): `read(i)` is row i's (i, encoded bytes, problem), checked against the manifest's
    sha256; `decode(list of bytes)` is each one's (pixels, problem). A problem is that image's
    quarantine reason; a store's failure ends the step."""
    batch = images.batch_decoder(spec.image_size, spec.channels)

    def read(i: int):
        row = rows[i]
        try:
            data = storage.read_bytes(location_uri(dataset_dir, row["location"]))
        except Exception as e:  # noqa: BLE001 - one image's failure is its quarantine entry, a store's ends the step
            if storage.is_store_failure(e, row["location"]):
                raise
            return i, None, f"unreadable since ingest: {e}"
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            return i, None, "changed since ingest (sha256 differs)"
        return i, data, ""

    def decode(datas: list[bytes]) -> list[tuple]:
        return [(pixels, f"TensorFlow cannot decode it: {cause}" if cause else "") for pixels, cause in batch(datas)]

    return read, decode


def _loaded(idx: list[int], loader, pool):
    """(i, bytes, pixels, problem) for rows `idx` in order: the pool reads the next batch while this
    one is decoded."""
    read, decode = loader
    chunks = [idx[k:k + DECODE_BATCH] for k in range(0, len(idx), DECODE_BATCH)]
    pending = [pool.submit(read, i) for i in chunks[0]] if chunks else []
    for n in range(len(chunks)):
        got = [f.result() for f in pending]
        pending = [pool.submit(read, i) for i in chunks[n + 1]] if n + 1 < len(chunks) else []
        readable = [(i, data) for i, data, problem in got if not problem]
        decoded = dict(zip((i for i, _ in readable), decode([data for _, data in readable])))
        for i, data, problem in got:
            if problem:
                yield i, None, None, problem
            else:
                pixels, problem = decoded[i]
                yield (i, None, None, problem) if problem else (i, data, pixels.tobytes(), "")


def write_file(path: str, split: str, idx: list[int], rows: list, spec: InputSpec, load, pool, progress,
               quarantined: list[dict]) -> Counter:
    """One TFRecord file of `split` from rows `idx`; returns its images per class."""
    import tensorflow as tf

    class_index = {c: i for i, c in enumerate(spec.classes)}
    per_class = Counter()
    with tf.io.TFRecordWriter(path) as writer:
        for i, data, pixels, problem in _loaded(idx, load, pool):
            progress.update()
            row = rows[i]
            if problem:
                quarantined.append({"location": row["location"], "label": row["label"], "reason": problem})
                continue
            writer.write(records.serialize(pixels, class_index[row["label"]], row["location"],
                                           encoded=data if split == "test" else None))
            per_class[row["label"]] += 1
    return per_class


def split_infos(spec: InputSpec, files: list[tuple[str, str, Counter]], out) -> dict[str, SplitInfo]:
    """Each split's count, files and per-class counts from its files' (split, name, per class); the
    files of a split with no image left are removed."""
    meta_splits = {}
    for split in dict.fromkeys(f[0] for f in files):
        mine = [(name, counts) for s, name, counts in files if s == split]
        per_class = sum((c for _, c in mine), Counter())
        written = sum(per_class.values())
        meta_splits[split] = SplitInfo(written, [n for n, _ in mine] if written else [],
                                       {c: per_class.get(c, 0) for c in spec.classes})
        if not written:
            for name, _ in mine:
                (out / name).unlink()
    return meta_splits


def write_shards(dataset_dir: str, rows: list, splits: dict[str, list[int]], spec: InputSpec, out,
                 opts: PreprocessOptions) -> tuple[dict[str, SplitInfo], list[dict], float]:
    """Decode, check and write every split's shards through a bounded thread-pool window."""
    load = image_loader(dataset_dir, rows, spec)
    progress = Progress("preprocess", sum(len(v) for v in splits.values()))
    quarantined, written = [], []
    with ThreadPoolExecutor(max_workers=opts.workers) as pool:
        for split, name, idx in record_files(splits, opts.images_per_shard):
            written.append((split, name, write_file(str(out / name), split, idx, rows, spec, load, pool, progress,
                                                    quarantined)))
    return split_infos(spec, written, out), quarantined, progress.close()
