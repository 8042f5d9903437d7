"""Bottleneck features: the frozen backbone's output for every image, computed once per split, so the
head phase trains a tiny model on vectors instead of paying the backbone's forward pass every epoch
(the classic "bottleneck features" tutorial).

The features are what the full model's own layers produce in inference mode, up to its pooling layer,
so a head trained on them drops back into the full model unchanged: `assemble` copies the head's
weights into the model, which is what evaluate, export and serving then see.

Each split streams batch by batch into float32 TFRecord shards (memory does not grow with the dataset),
and the shards go to the training backup beside the checkpoints, `features.json` last, so a retried
task reads them back instead of computing them again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from imgclf.components.lib import records, storage

FOLDER = "features"
INDEX = "features.json"
POOL = "pool"
SHARD_IMAGES = 4096


def wanted(choice: str, architecture: str, pretrained: bool, augment: bool) -> bool:
    """auto: when the backbone is frozen (pretrained transfer family) and augmentation is off, since
    augmented images would give different features every epoch; on: also with augmentation (the head
    phase then trains on unaugmented images, fine-tuning still augments); off: never."""
    from imgclf.components.train import models

    frozen = models.is_transfer(architecture) and pretrained
    if choice == "on" and not frozen:
        raise ValueError(f"cache_features=on needs a frozen pretrained backbone: {architecture} with "
                         f"weights {'none' if not pretrained else 'given'} trains every layer, so its features "
                         "change every step")
    return frozen and (choice == "on" or (choice == "auto" and not augment))


def extractor(net):
    """The model up to (and including) its pooling layer, in inference mode: augmentation is inactive."""
    import keras

    return keras.Model(net.inputs, net.get_layer(POOL).output, name="bottleneck")


def head(net):
    """A stand-alone copy of the model's head (dropout + softmax) over feature vectors, starting from
    the same weights: a warm-started model's head (same classes) keeps the champion's, as on images, and
    the features come from its warm-started backbone."""
    import keras
    from keras import layers

    top = net.get_layer("probabilities")
    inputs = keras.Input(shape=(net.get_layer(POOL).output.shape[-1],), name="features")
    x = layers.Dropout(net.get_layer("head_dropout").rate, name="head_dropout")(inputs)
    outputs = layers.Dense(top.units, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="head")
    model.get_layer("probabilities").set_weights(top.get_weights())
    return model


def assemble(head_model, net):
    """Backbone and trained head back in one model: the head's weights go into the model's own head."""
    net.get_layer("probabilities").set_weights(head_model.get_layer("probabilities").get_weights())
    return net


def _serialize(vector, label: int) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "features": tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
        records.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})).SerializeToString()


def compute(dataset_dir: str, meta, net, splits: list[str], batch_size: int, local: Path, backup_uri: str) -> dict:
    """Every split's features in `local`, computed once: read back from the backup when an earlier
    attempt finished them. Returns the index (dimension, shards per split)."""
    import numpy as np
    import tensorflow as tf

    local.mkdir(parents=True, exist_ok=True)
    remote = storage.join(backup_uri, FOLDER) if backup_uri else ""
    if remote and storage.exists(storage.join(remote, INDEX)):
        index = json.loads(storage.read_bytes(storage.join(remote, INDEX)))
        for name in (n for shards in index["shards"].values() for n in shards):
            storage.download_file(storage.join(remote, name), str(local / name))
        print(f"train: bottleneck features of {', '.join(index['shards'])} read back from {remote}", flush=True)
        return index
    bottleneck = extractor(net)
    index = {"dim": int(bottleneck.output.shape[-1]), "shards": {}}
    for split in splits:
        start, done, shards, writer = time.perf_counter(), 0, [], None
        for pixels, labels in records.make_dataset(dataset_dir, meta, split, batch_size):
            vectors = np.asarray(bottleneck.predict_on_batch(pixels), dtype=np.float32)
            for v, y in zip(vectors, labels.numpy()):
                if done % SHARD_IMAGES == 0:
                    if writer:
                        writer.close()
                    shards.append(f"{split}-{len(shards):05d}.tfrecord")
                    writer = tf.io.TFRecordWriter(str(local / shards[-1]))
                writer.write(_serialize(v, int(y)))
                done += 1
        if writer:
            writer.close()
        index["shards"][split] = shards
        seconds = time.perf_counter() - start
        print(f"train: bottleneck features of {done} {split} images ({index['dim']} values each) in {seconds:.1f} s "
              f"({done / max(seconds, 1e-9):.0f} images/s)", flush=True)
    if remote:
        for name in (n for shards in index["shards"].values() for n in shards):
            storage.copy_file(str(local / name), storage.join(remote, name))
        storage.write_text(storage.join(remote, INDEX), json.dumps(index))
    return index


def make_dataset(local: Path, index: dict, split: str, count: int, batch_size: int, shuffle: bool = False,
                 seed: int = 0, repeat: bool = False):
    """(features, label) batches from the shards, shaped like `records.make_dataset`'s pixel batches."""
    import tensorflow as tf

    spec = {"features": tf.io.FixedLenFeature([index["dim"]], tf.float32),
            records.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset([str(local / n) for n in index["shards"][split]])
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle:
        ds = ds.shuffle(min(count, 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        return ex["features"], ex[records.LABEL]

    return ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
