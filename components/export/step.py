"""Export: a TensorFlow SavedModel whose `serving_default` takes a batch of encoded image bytes.

Decoding and resizing inside the graph are `images.tf_decode_resize`, the very function preprocess
used, so what a serving system answers is what evaluate measured. The step proves it: a fresh process
loads the SavedModel with plain TensorFlow, feeds it every test image's original bytes, and the
top-1 class must equal evaluate's for every image, and its top probability evaluate's to within
PROBABILITY_TOLERANCE, or the step fails. The served probabilities are the calibrated ones: evaluate fits
a temperature on the validation split and writes calibrated predictions; the SavedModel divides the
model's log-probabilities by the same temperature (recorded in imgclf.json, with the abstention threshold).
The same process answers a base64 REST body the way TF Serving's REST API passes it and replays the TF
Serving warm-up requests written into `assets.extra/`, where `saved_model_cli show --all` output is kept
too (TF Serving tolerates extra files only there). That process starts with the step and imports
TensorFlow while the step builds the SavedModel, so the check costs no second TensorFlow import on the step's clock.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from imgclf.components.contracts import (
    INPUT_KEY,
    Evaluation,
    ExportInfo,
    RecordsMetadata,
    TrainedModel,
    read_predictions,
)
from imgclf.components.export import warmup
from imgclf.components.export.options import ExportOptions
from imgclf.components.lib import images, records, storage
from imgclf.components.lib.options import takes

CLI_SHOW = "assets.extra/saved_model_cli.txt"
TFLITE_FILE = "assets.extra/model.tflite"
WARMUP_IMAGES = 3
PARSE_BATCH = 512
PROBABILITY_TOLERANCE = 1e-4
"""Served vs evaluated top probability: float32 serving against evaluate's float64 calibration, written
with six decimals, differs by about 1e-6; a wrong temperature differs by far more."""


class ServingMismatch(RuntimeError):
    """The exported SavedModel does not answer like the evaluated model: never publish it."""


@dataclass
class ExportResult:
    saved_model_dir: str
    checked_images: int
    max_probability_diff: float
    published_to: str = ""
    rest_images: int = 0
    warmup_requests: int = 0
    tflite_max_diff: float | None = None


def calibrated(model, temperature: float):
    """The model answering softmax(log p / temperature): what is served (and converted to TFLite). The same
    model object when the temperature is 1. Guo et al. divide logits; our models end in a softmax, and
    log p is the logits less a per-image constant, which softmax ignores."""
    if temperature == 1.0:
        return model
    import keras

    from imgclf.components.lib.calibration import TINY

    def scale(p):
        return keras.ops.softmax(keras.ops.log(keras.ops.maximum(p, TINY)) / temperature, axis=-1)

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    return keras.Model(inputs, keras.layers.Lambda(scale, name="temperature")(model(inputs, training=False)),
                       name=f"{model.name}_calibrated")


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


@takes(ExportOptions)
def export(model_dir: str, dataset_dir: str, predictions_dir: str, saved_model_dir: str,
           opts: ExportOptions) -> ExportResult:
    """Write the SavedModel, verify it in a fresh process, then optionally publish it to `export_to`.

    `tflite` also converts the model to TensorFlow Lite (pixels in, probabilities out: TFLite has no
    image decoding) and fails unless it agrees with the Keras model on every test image.
    """
    checker = FreshChecker()  # importing TensorFlow there while this process loads Keras and the model
    try:
        return _export(model_dir, dataset_dir, predictions_dir, saved_model_dir, opts, checker)
    finally:
        checker.close()


def _export(model_dir: str, dataset_dir: str, predictions_dir: str, saved_model_dir: str, opts: ExportOptions,
            checker: FreshChecker) -> ExportResult:
    from imgclf.components.lib.layers import load_model  # Keras: only when the step runs

    info = TrainedModel.load(model_dir)
    meta = RecordsMetadata.load(dataset_dir)
    evaluated = Evaluation.load(predictions_dir).metrics
    temperature = float(evaluated.get("temperature", 1.0))  # an evaluation before calibration: as trained
    model = calibrated(load_model(model_dir), temperature)
    spec = info.input
    with storage.atomic_dir(saved_model_dir) as out:
        build_archive(model, spec.classes, spec.image_size, spec.channels).write_out(str(out), verbose=False)
        ExportInfo(spec, info.architecture, info.data_fingerprint, temperature=temperature,
                   abstain_below=float(evaluated.get("abstain_threshold", 0.0))).save(out)
        shards = meta.shard_paths(dataset_dir, "test")
        warmup.write(str(out / warmup.WARMUP_FILE), INPUT_KEY, [_warmup_images(dataset_dir, meta)])
        tflite_diff = _tflite(model, dataset_dir, meta, out / TFLITE_FILE) if opts.tflite else None
        checked = checker.check(str(out), shards)
        (out / CLI_SHOW).write_text(checked["saved_model_cli"])
        served = checked["answers"]
        expected = {r["location"]: r for r in read_predictions(predictions_dir)}
        mismatches, max_diff = [], 0.0
        for s in served:
            e = expected.get(s["location"])
            if e is None:
                mismatches.append(f"{s['location']}: not in evaluate's predictions")
                continue
            if s["class_name"] != e["predicted"]:
                mismatches.append(f"{s['location']}: served {s['class_name']!r}, evaluated {e['predicted']!r}")
            diff = abs(s["probability"] - float(e["probability"]))
            if diff > PROBABILITY_TOLERANCE:
                mismatches.append(f"{s['location']}: served probability {s['probability']:.6f}, evaluated "
                                  f"{e['probability']} (temperature {temperature:.4f})")
            max_diff = max(max_diff, diff)
        if len(served) != len(expected):
            mismatches.append(f"served {len(served)} test images, evaluate predicted {len(expected)}")
        if mismatches:
            raise ServingMismatch(f"SavedModel disagrees with evaluate on {len(mismatches)} test image(s): "
                                  + "; ".join(mismatches[:10]))
    print(f"export: SavedModel at {saved_model_dir} (temperature {temperature:.4f}); raw-bytes serving agrees "
          f"with evaluate on all {len(served)} test images (max probability difference {max_diff:.2e}); a base64 REST body of "
          f"{checked['rest_images']} images answers the same; {checked['warmup_requests']} warm-up request(s) "
          "replayed" + (f"; TFLite agrees (max difference {tflite_diff:.2e})" if opts.tflite else ""), flush=True)
    result = ExportResult(saved_model_dir, len(served), max_diff, rest_images=checked["rest_images"],
                          warmup_requests=checked["warmup_requests"], tflite_max_diff=tflite_diff)
    if opts.export_to:
        result.published_to = storage.publish_dir(saved_model_dir, opts.export_to)
        print(f"export: published to {opts.export_to}", flush=True)
    return result


def _warmup_images(dataset_dir: str, meta: RecordsMetadata) -> list[bytes]:
    """A few test images for the warm-up request, one of each encoding first (JPEG and PNG decode differently)."""
    picked: dict[bytes, bytes] = {}
    rest = []
    # Every test image is looked at (the last one may be the only GIF), read in batches: one eager parse
    # per record was a large share of export's time on big test splits (profiled).
    batches = records.make_dataset(dataset_dir, meta, "test", PARSE_BATCH, with_extras=True)
    for *_, encoded in batches.as_numpy_iterator():
        for data in encoded:
            if data[:4] not in picked:
                picked[data[:4]] = data
            elif len(rest) < WARMUP_IMAGES:
                rest.append(data)
    return (list(picked.values()) + rest)[:WARMUP_IMAGES]


def _tflite(model, dataset_dir: str, meta: RecordsMetadata, dest: Path) -> float:
    """Convert to TFLite and compare with Keras on every test image: the largest probability difference."""
    import numpy as np
    import tensorflow as tf

    # from_keras_model freezes the weights into the file. A concrete function of the model converts
    # too, but keeps its weights as resource variables that the TFLite interpreter never initialises
    # (NaN out, or a READ_VARIABLE failure without the XNNPACK delegate).
    dest.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter = tf.lite.Interpreter(model_path=str(dest))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    worst, disagree = 0.0, 0
    size, channels = meta.input.image_size, meta.input.channels
    interpreter.resize_tensor_input(inp["index"], [1, size, size, channels])
    interpreter.allocate_tensors()
    for pixels, _ in records.make_dataset(dataset_dir, meta, "test", 1):
        x = tf.cast(pixels, tf.float32).numpy()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        lite = interpreter.get_tensor(out["index"])
        keras_p = np.asarray(model(x, training=False))
        worst = max(worst, float(np.abs(lite - keras_p).max()))
        disagree += int(lite.argmax() != keras_p.argmax())
    if disagree or worst > 1e-4:
        raise ServingMismatch(f"TFLite model disagrees with Keras: top-1 differs on {disagree} test image(s), "
                              f"max probability difference {worst:.2e}")
    return worst


class FreshChecker:
    """`imgclf.components.export.serving_check` in another process that never holds the Keras model.

    Started before the model is loaded, so nothing of it can survive there. Where TensorFlow is
    imported but its runtime has not started and no other Python thread runs (a local task forked
    from the preloaded zygote, a container step at its start), that process is a fork of this one
    taken now: it skips the seconds of importing TensorFlow again. Anywhere else (a test process whose
    TensorFlow already runs thread pools, which a fork cannot carry) it is a new interpreter that
    imports TensorFlow while this process works. Either way `check` hands it the SavedModel.
    """

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory()
        self._log = open(Path(self._tmp.name) / "stderr.txt", "w+", encoding="utf-8")
        self.forked = _can_fork()
        if self.forked:
            read, write = os.pipe()
            self.pid = os.fork()
            if self.pid == 0:
                os.close(write)
                _serve_check(read, self._log.fileno())  # never returns
            os.close(read)
            self._request = os.fdopen(write, "w")
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "imgclf.components.export.serving_check", "--stdin"],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, text=True)
            self._request = self.proc.stdin

    def _send(self, line: str) -> None:
        try:
            self._request.write(line)
            self._request.close()
        except BrokenPipeError:
            pass  # it died while starting: its stderr says why

    def _wait(self, timeout: float | None = None) -> int:
        if not self.forked:
            return self.proc.wait(timeout=timeout)
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)

    def check(self, saved_model_dir: str, test_shards: list[str]) -> dict:
        """The fresh process's answers; meanwhile this process lists the files with `saved_model_cli`."""
        from imgclf.components.export.serving_check import show_all

        answers = Path(self._tmp.name) / "answers.json"
        self._send(json.dumps([str(answers), saved_model_dir, *test_shards]) + "\n")
        try:
            shown, unreadable = show_all(saved_model_dir), ""
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported after the fresh check's own verdict
            shown, unreadable = "", str(e)
        if self._wait() != 0 or not answers.exists():
            self._log.seek(0)
            raise ServingMismatch(f"checking {saved_model_dir} in a fresh process failed:\n{self._log.read()[-3000:]}")
        if unreadable:
            raise ServingMismatch(f"saved_model_cli show --all cannot read {saved_model_dir}: {unreadable}")
        return {**json.loads(answers.read_text()), "saved_model_cli": shown}

    def close(self) -> None:
        if self.forked and self.pid or not self.forked and self.proc.poll() is None:
            self._send("")  # the export failed before the check: let it go
            if self.forked:
                self._wait()
            else:
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()
        self._tmp.cleanup()


def _can_fork() -> bool:
    """Whether a fork of this process is a clean TensorFlow process: imported, runtime not started."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    import tensorflow  # noqa: F401 - the step needs it next anyway; the fork then has it for free
    from tensorflow.python.eager import context

    return not getattr(context.context(), "_initialized", True)


def _serve_check(read_fd: int, log_fd: int) -> None:
    """The forked checker: wait for the request, check, exit with the check's status."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(log_fd, 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        with os.fdopen(read_fd) as requests:
            request = requests.readline()
        if request:
            from imgclf.components.export import serving_check

            serving_check.main(json.loads(request), show=False)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the check's failure is its stderr and exit status
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)
