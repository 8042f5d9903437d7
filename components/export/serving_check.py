"""Fresh-process check of an exported SavedModel with plain TensorFlow (no Keras, no imgclf model code).

`python -m imgclf.components.export.serving_check OUT_JSON SAVED_MODEL SHARD...` feeds each test record's original
encoded bytes to `serving_default` and writes the answers to OUT_JSON. It also checks what a serving
system adds on top: the same images sent as a base64 REST body (as TF Serving's REST API receives them)
must give the same answers, and the TF Serving warm-up file, if present, must replay. From the command
line the answers also carry `saved_model_cli show --all`'s text: the signatures as TensorFlow's own
tool reads them from disk (the export step lists them itself while this check runs).

The export step runs `main` in a process started before the SavedModel exists (a fork of the step taken
before it loads the model, or `--stdin`: a new interpreter that imports TensorFlow meanwhile, then
reads `OUT_JSON SAVED_MODEL SHARD...` as one JSON list on stdin). Either way the process has never seen
the Keras model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str], show: bool = True) -> None:
    import tensorflow as tf

    from imgclf.components.export import serving_rest, warmup
    from imgclf.components.lib.serving import answer_records

    out_json, saved_model_dir, shards = argv[0], argv[1], argv[2:]
    loaded = tf.saved_model.load(saved_model_dir)
    fn = loaded.signatures["serving_default"]
    checked = {"rest_images": 0, "warmup_requests": 0}

    def first_batch_checks(encoded, out):
        if checked["rest_images"]:
            return
        # The same bytes twice must give the same answer (augmentation off, no randomness).
        again = fn(image_bytes=encoded)
        if not np.array_equal(out["probabilities"].numpy(), again["probabilities"].numpy()):
            sys.exit("serving_default is not deterministic: the same bytes gave different probabilities")
        blobs = list(encoded.numpy())
        # What a REST client sends: JSON text with base64 images, unnamed and named instances.
        for name in ("", "image_bytes"):
            body = json.loads(json.dumps(serving_rest.b64_body(blobs, name)))
            rest = serving_rest.predict(loaded.signatures, body)["predictions"]
            got = [r["class_name"] for r in rest]
            want = [c.decode("utf-8") for c in out["class_name"].numpy()]
            if got != want or not np.allclose([r["probabilities"] for r in rest], out["probabilities"].numpy(),
                                              rtol=0, atol=1e-6):
                sys.exit(f"a base64 REST body {'with named' if name else 'with unnamed'} instances answered "
                         f"{got[:5]}..., the raw bytes {want[:5]}...")
        checked["rest_images"] = len(blobs)

    answers = answer_records(fn, shards, on_batch=first_batch_checks)
    warm = Path(saved_model_dir) / warmup.WARMUP_FILE
    if warm.exists():
        checked["warmup_requests"] = warmup.replay(loaded.signatures, str(warm))
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump({"answers": answers, **checked, **({"saved_model_cli": show_all(saved_model_dir)} if show else {})}, f)


def show_all(saved_model_dir: str) -> str:
    """`saved_model_cli show --all` (TensorFlow's tool, its own reading of the files), as text."""
    import contextlib
    import io

    from tensorflow.python.tools import saved_model_cli

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        saved_model_cli._show_all(saved_model_dir)  # what `show --all` runs; no public function prints it
    if "serving_default" not in text.getvalue():
        sys.exit(f"saved_model_cli show --all finds no serving_default in {saved_model_dir}")
    return text.getvalue()


if __name__ == "__main__":
    if sys.argv[1:] == ["--stdin"]:
        import tensorflow  # noqa: F401 - the slow part, done while the caller still builds the SavedModel

        request = sys.stdin.readline()
        if request:  # an empty line: the caller gave up (its export failed); nothing to check
            main(json.loads(request), show=False)
    else:
        main(sys.argv[1:])
