"""Export: a TensorFlow SavedModel whose `serving_default` takes a batch of encoded image bytes.

Decoding and resizing inside the graph are `images.tf_decode_resize`, the very function preprocess
used, so what a serving system answers is what evaluate measured. The step proves it: a fresh process
loads the SavedModel with plain TensorFlow, feeds it every test image's original bytes, and the
top-1 class must equal evaluate's for every image, or the step fails.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components import images, records, storage
from components.evaluate import read_predictions
from components.train import load_model, load_train_info

INPUT_KEY = "image_bytes"
EXPORT_INFO = "assets.extra/imgclf.json"


class ServingMismatch(RuntimeError):
    """The exported SavedModel does not answer like the evaluated model: never publish it."""


@dataclass
class ExportResult:
    saved_model_dir: str
    checked_images: int
    max_probability_diff: float
    published_to: str = ""


def build_archive(model, classes: list[str], image_size: int, channels: int):
    """A keras.export.ExportArchive with a raw-bytes `serving_default` returning a dict (named outputs)."""
    import keras
    import tensorflow as tf

    names = tf.constant(classes)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image_bytes):
        pixels = tf.map_fn(lambda b: images.tf_decode_resize(b, image_size, channels), image_bytes,
                           fn_output_signature=tf.TensorSpec([image_size, image_size, channels], tf.uint8))
        # training=False: otherwise the augmentation layers stay active at serving time.
        probs = model(tf.cast(pixels, tf.float32), training=False)
        top = tf.argmax(probs, axis=1)
        return {"probabilities": probs, "class_index": top, "class_name": tf.gather(names, top)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    return archive


def export(model_dir: str, dataset_dir: str, predictions_dir: str, saved_model_dir: str,
           export_to: str = "") -> ExportResult:
    """Write the SavedModel, verify it in a fresh process, then optionally publish it to `export_to`."""
    info = load_train_info(model_dir)
    meta = records.load_metadata(dataset_dir)
    model = load_model(model_dir)
    with storage.atomic_dir(saved_model_dir) as out:
        build_archive(model, info["classes"], info["image_size"], info["channels"]).write_out(
            str(out), verbose=False)
        extra = out / EXPORT_INFO
        extra.parent.mkdir(exist_ok=True)
        extra.write_text(json.dumps({
            "input_key": INPUT_KEY, "outputs": ["probabilities", "class_index", "class_name"],
            "classes": info["classes"], "image_size": info["image_size"], "channels": info["channels"],
            "color_mode": info["color_mode"], "model": info["model"],
            "data_fingerprint": info["data_fingerprint"]}, indent=1))
        served = check_in_fresh_process(str(out), records.shard_paths(dataset_dir, meta, "test"))
        expected = {r["location"]: r for r in read_predictions(predictions_dir)}
        mismatches, max_diff = [], 0.0
        for s in served:
            e = expected.get(s["location"])
            if e is None:
                mismatches.append(f"{s['location']}: not in evaluate's predictions")
                continue
            if s["class_name"] != e["predicted"]:
                mismatches.append(f"{s['location']}: served {s['class_name']!r}, evaluated {e['predicted']!r}")
            max_diff = max(max_diff, abs(s["probability"] - float(e["probability"])))
        if len(served) != len(expected):
            mismatches.append(f"served {len(served)} test images, evaluate predicted {len(expected)}")
        if mismatches:
            raise ServingMismatch(f"SavedModel disagrees with evaluate on {len(mismatches)} test image(s): "
                                  + "; ".join(mismatches[:10]))
    print(f"export: SavedModel at {saved_model_dir}; raw-bytes serving agrees with evaluate on all "
          f"{len(served)} test images (max probability difference {max_diff:.2e})", flush=True)
    result = ExportResult(saved_model_dir, len(served), max_diff)
    if export_to:
        result.published_to = storage.publish_dir(saved_model_dir, export_to)
        print(f"export: published to {export_to}", flush=True)
    return result


def check_in_fresh_process(saved_model_dir: str, test_shards: list[str]) -> list[dict]:
    """Run `components.serving_check` in a new interpreter: nothing of the Keras model survives there."""
    with tempfile.TemporaryDirectory() as tmp:
        answers = Path(tmp) / "answers.json"
        proc = subprocess.run([sys.executable, "-m", "components.serving_check", str(answers), saved_model_dir,
                               *test_shards], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServingMismatch(f"checking {saved_model_dir} in a fresh process failed:\n{proc.stderr[-3000:]}")
        return json.loads(answers.read_text())
