"""Fresh-process check of an exported SavedModel with plain TensorFlow (no Keras, no imgclf model code).

`python -m components.serving_check OUT_JSON SAVED_MODEL SHARD...` feeds each test record's original
encoded bytes to `serving_default` and writes the answers to OUT_JSON.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(argv: list[str]) -> None:
    import tensorflow as tf

    from components import records

    out_json, saved_model_dir, shards = argv[0], argv[1], argv[2:]
    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    spec = {records.ENCODED: tf.io.FixedLenFeature([], tf.string),
            records.LOCATION: tf.io.FixedLenFeature([], tf.string)}
    answers, first = [], True
    for batch in tf.data.TFRecordDataset(shards).batch(64).map(lambda s: tf.io.parse_example(s, spec)):
        out = fn(image_bytes=batch[records.ENCODED])
        if first:  # the same bytes twice must give the same answer (augmentation off, no randomness)
            again = fn(image_bytes=batch[records.ENCODED])
            if not np.array_equal(out["probabilities"].numpy(), again["probabilities"].numpy()):
                sys.exit("serving_default is not deterministic: the same bytes gave different probabilities")
            first = False
        probs = out["probabilities"].numpy()
        for loc, name, p in zip(batch[records.LOCATION].numpy(), out["class_name"].numpy(), probs):
            answers.append({"location": loc.decode("utf-8"), "class_name": name.decode("utf-8"),
                            "probability": float(p.max())})
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main(sys.argv[1:])
