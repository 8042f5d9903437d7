"""The TFRecord contract between preprocess and the steps that read it (train, evaluate, export).

Each record holds the already-resized uint8 pixels, so training never pays for JPEG decoding; records
of the test split also carry the original encoded bytes so export can check the serving signature
on exactly what a client would send.
"""
from __future__ import annotations

import json
from pathlib import Path

PIXELS, LABEL, ENCODED, LOCATION = "image/pixels", "image/label", "image/encoded", "image/location"
METADATA_FILE = "metadata.json"
SPLITS = ("train", "validation", "test")


def serialize(pixels: bytes, label: int, location: str, encoded: bytes | None = None) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    feats = {PIXELS: b(pixels), LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
             LOCATION: b(location.encode("utf-8"))}
    if encoded is not None:
        feats[ENCODED] = b(encoded)
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def load_metadata(dataset_dir: str) -> dict:
    path = Path(dataset_dir) / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{dataset_dir}: no {METADATA_FILE}; is this a preprocess output?")
    return json.loads(path.read_text())


def shard_paths(dataset_dir: str, meta: dict, split: str) -> list[str]:
    return [str(Path(dataset_dir) / s) for s in meta["splits"][split]["shards"]]


def make_dataset(dataset_dir: str, meta: dict, split: str, batch_size: int, shuffle: bool = False,
                 seed: int = 0, with_extras: bool = False, prefetch: bool = True,
                 repeat: bool = False):
    """(pixels, label) batches, or (pixels, label, location, encoded) with `with_extras` (test only).

    Shards are read in parallel and parsed in parallel; pixels stay uint8 until the model's
    Rescaling layer, which keeps the input pipeline cheap and the host->device copy small.
    """
    import tensorflow as tf

    size, ch = meta["image_size"], meta["channels"]
    spec = {PIXELS: tf.io.FixedLenFeature([], tf.string), LABEL: tf.io.FixedLenFeature([], tf.int64)}
    if with_extras:
        spec[LOCATION] = tf.io.FixedLenFeature([], tf.string)
        spec[ENCODED] = tf.io.FixedLenFeature([], tf.string, default_value=b"")

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        pixels = tf.reshape(tf.io.decode_raw(ex[PIXELS], tf.uint8), [-1, size, size, ch])
        if with_extras:
            return pixels, ex[LABEL], ex[LOCATION], ex[ENCODED]
        return pixels, ex[LABEL]

    files = shard_paths(dataset_dir, meta, split)
    if not files:
        raise ValueError(f"{dataset_dir}: the {split} split is empty")
    # Interleaved reads for speed; in file order with extras, so predictions line up with locations
    # across evaluate, export's check and reports.
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) if not with_extras else None)
    # TFRecord files have unknown length; declaring it lets Keras size epochs and progress bars.
    ds = ds.apply(tf.data.experimental.assert_cardinality(meta["splits"][split]["count"]))
    if shuffle:
        ds = ds.shuffle(min(meta["splits"][split]["count"], 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        # Endless, reshuffled every pass: one iterator for the whole fit, so the pipeline keeps filling
        # across epoch boundaries instead of restarting (and refilling the shuffle buffer) every epoch.
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    # prefetch=False lets a caller add stages (one-hot labels, throughput stamps) before prefetching.
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds
