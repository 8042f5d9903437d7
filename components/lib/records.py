"""The TFRecord codec between preprocess and the steps that read it (train, evaluate, export); the
metadata beside the shards is `contracts.RecordsMetadata`.

Each record holds the already-resized uint8 pixels, so training never pays for JPEG decoding; records
of the test split also carry the original encoded bytes so export can check the serving signature
on exactly what a client would send.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgclf.components.contracts import RecordsMetadata

PIXELS, LABEL, ENCODED, LOCATION = "image/pixels", "image/label", "image/encoded", "image/location"


def serialize(pixels: bytes, label: int, location: str, encoded: bytes | None = None) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    feats = {PIXELS: b(pixels), LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
             LOCATION: b(location.encode("utf-8"))}
    if encoded is not None:
        feats[ENCODED] = b(encoded)
    # Deterministic: map entries in key order, so the same image gives the same bytes in every process (a
    # protobuf map's order otherwise varies between processes) and sharded preprocess equals one task's.
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def make_dataset(dataset_dir: str, meta: RecordsMetadata, split: str, batch_size: int, shuffle: bool = False,
                 seed: int = 0, with_extras: bool = False, prefetch: bool = True,
                 repeat: bool = False):
    """(pixels, label) batches, or (pixels, label, location, encoded) with `with_extras` (test only).

    Shards are read in parallel and parsed in parallel; pixels stay uint8 until the model's
    Rescaling layer, which keeps the input pipeline cheap and the host->device copy small.
    """
    import tensorflow as tf

    size, ch = meta.input.image_size, meta.input.channels
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

    files = meta.shard_paths(dataset_dir, split)
    if not files:
        raise ValueError(f"{dataset_dir}: the {split} split is empty")
    # Interleaved reads for speed; in file order with extras, so predictions line up with locations
    # across evaluate, export's check and reports.
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) if not with_extras else None)
    # TFRecord files have unknown length; declaring it lets Keras size epochs and progress bars.
    ds = ds.apply(tf.data.experimental.assert_cardinality(meta.count(split)))
    if shuffle:
        ds = ds.shuffle(min(meta.count(split), 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        # Endless, reshuffled every pass: one iterator for the whole fit, so the pipeline keeps filling
        # across epoch boundaries instead of restarting (and refilling the shuffle buffer) every epoch.
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    # prefetch=False lets a caller add stages (one-hot labels, throughput stamps) before prefetching.
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds
