"""Calling an exported SavedModel: staging it from a store, and answering test records through a
signature. Shared by export's fresh-process check, the gate's re-scoring of the champion and predict.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imgclf.components.lib import records, storage


@contextlib.contextmanager
def local_model(location: str) -> Iterator[Path]:
    """The SavedModel as a local folder for TensorFlow: used in place, or staged from a bucket."""
    with contextlib.ExitStack() as stack:
        if storage.is_local(location):
            path = Path(storage.local_path(location))
        else:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgclf-model-")))
            storage.download_dir(location, str(path))
        if not (path / "saved_model.pb").exists():
            raise FileNotFoundError(f"{location}: no SavedModel here (saved_model.pb missing); pass the "
                                    "export step's saved_model folder")
        yield path


def answer_records(fn, shards: list[str], batch_size: int = 64, on_batch=None) -> list[dict]:
    """`fn`'s answer for every test record's original bytes: location, true label index, class, top probability.

    `on_batch(encoded, out)` sees each batch and its outputs (for extra checks on the same data).
    """
    import tensorflow as tf

    spec = {records.ENCODED: tf.io.FixedLenFeature([], tf.string),
            records.LOCATION: tf.io.FixedLenFeature([], tf.string),
            records.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    answers = []
    for batch in tf.data.TFRecordDataset(shards).batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)):
        out = fn(image_bytes=batch[records.ENCODED])
        if on_batch:
            on_batch(batch[records.ENCODED], out)
        probs = out["probabilities"].numpy()
        for loc, label, name, p in zip(batch[records.LOCATION].numpy(), batch[records.LABEL].numpy(),
                                       out["class_name"].numpy(), probs):
            answers.append({"location": loc.decode("utf-8"), "label": int(label), "class_name": name.decode("utf-8"),
                            "probability": float(p.max())})
    return answers
