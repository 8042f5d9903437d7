"""Training throughput on the JAX backend, for a GPU machine that has JAX (with CUDA), Keras and NumPy but
no TensorFlow: nothing on this module's import chain may import TensorFlow.

For each model (our builders from imgclf.components.train.models, augmentation in the model as shipped, weights none),
precision (float32 and mixed_float16, set the way the train step sets it) and input:
- synthetic: one fixed random uint8 batch handed over again every step: the model's own ceiling;
- real: preprocessed pixels from `gpu_input.npz` (written by `make bench` / benchmarks.training_throughput
  on a machine with TensorFlow), in memory, tiled to the epoch length and reshuffled every epoch by `fit`.
The gap between the two is what feeding real in-memory data costs. images/s is the train step's own
metric (imgclf.components.train.throughput): steady = median of the epochs after the first, which also pays XLA
compilation. Writes <out>/gpu_training.{json,md}.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks import harness


def _from_a_checkout() -> None:
    """The GPU machine runs this from a checkout with no install (its Python has JAX, not our venv): map
    components/ onto imgclf.components, as pyproject's package-dir does for an install. This needs
    `import imgclf` to work before imgclf.components can be found: imgclf/__init__.py loads all it takes
    from there lazily (tests/test_packaging.py runs this from the checkout, without site-packages)."""
    import importlib.util

    import imgclf

    if importlib.util.find_spec("imgclf.components") is None:
        imgclf.__path__.append(str(Path(__file__).resolve().parents[1]))


_from_a_checkout()

PRECISIONS = ("float32", "mixed_float16")
DEFAULT_INPUT = f"{harness.DEFAULT_OUT}/gpu_input.npz"


def _synthetic(batch: int, shape: tuple[int, int, int], classes: int, steps: int, seed: int = 0):
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=(batch,)).astype("int32")

    class Repeat(keras.utils.PyDataset):
        """The same batch `steps` times: no host-side work per step but the copy to the device."""

        def __len__(self):
            return steps

        def __getitem__(self, i):
            return x, y
    return Repeat()


def _real(path: Path, images: int):
    import numpy as np

    with np.load(path) as f:
        x, y, classes = f["pixels"], f["labels"], [str(c) for c in f["classes"]]
    reps = -(-images // len(x))
    return np.concatenate([x] * reps)[:images], np.concatenate([y] * reps)[:images], classes


def run_one(model: str, precision: str, source: str, data, shape, classes: int, batch: int, epochs: int,
            images: int) -> dict:
    import keras

    from imgclf.components.train import accelerate, models, throughput

    keras.utils.set_random_seed(1)
    with accelerate.setup(precision, "none", "auto") as hw:
        net = models.build(model, shape, classes, weights=None, augment=True, seed=1)
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"], jit_compile=hw.jit_compile)
        meter = throughput.Throughput(throughput.InputStamps(), images)
        if source == "synthetic":
            history = net.fit(_synthetic(batch, shape, classes, images // batch), epochs=epochs, callbacks=[meter],
                              verbose=0)
        else:
            x, y = data
            history = net.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[meter], verbose=0)
    speed = throughput.summary(history.history)
    return {"model": model, "precision": hw.precision, "input": source, "batch_size": batch,
            "images_per_epoch": images, "parameters": net.count_params(),
            "first_epoch_images_per_second": speed["first_epoch_images_per_second"],
            "images_per_second": speed["images_per_second"], "epoch_seconds": speed["epoch_seconds"],
            "all_epochs_images_per_second": [round(v, 1) for v in history.history["images_per_second"]]}


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, argv, **{
        "--input": {"default": DEFAULT_INPUT, "help": f"real preprocessed pixels (default {DEFAULT_INPUT})"},
        "--models": {"default": "baseline,mobilenet_v2", "help": "comma-separated (default baseline,mobilenet_v2)"},
        "--precisions": {"default": ",".join(PRECISIONS), "help": f"comma-separated (default {','.join(PRECISIONS)})"},
        "--batch": {"type": int, "default": 128, "help": "batch size (default 128)"},
        "--epochs": {"type": int, "help": "epochs per run (default 4; 2 with --quick)"},
        "--images": {"type": int, "help": "images per epoch (default 8,192; 128 with --quick)"},
        "--image-size": {"type": int, "default": 160, "help": "synthetic input size without --input (default 160)"}})
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from imgclf.components.train import accelerate

    if keras.backend.backend() != "jax":
        raise SystemExit(f"gpu_training measures the JAX backend; KERAS_BACKEND is {keras.backend.backend()!r}")
    epochs = args.epochs or (2 if args.quick else 4)
    images = args.images or (128 if args.quick else 8_192)
    images -= images % args.batch
    if images < args.batch:
        raise SystemExit(f"--images must be at least one batch ({args.batch})")
    inputs = {}
    path = Path(args.input)
    if path.exists():
        x, y, class_names = _real(path, images)
        inputs["real"] = (x, y)
        shape, classes = tuple(x.shape[1:]), len(class_names)
        print(f"gpu_training: real input {path} ({x.shape[1]}x{x.shape[2]}x{x.shape[3]}, {len(class_names)} classes)",
              flush=True)
    else:
        shape, classes = (args.image_size, args.image_size, 3), 10
        print(f"gpu_training: {path} not found (run make bench on a machine with TensorFlow first): "
              "synthetic input only", flush=True)
    devices = accelerate.devices()
    result = {"machine": {**harness.machine(), "devices": devices, "keras_backend": keras.backend.backend()},
              "epochs": epochs, "runs": []}
    print(f"gpu_training: devices {', '.join(devices)}; batch {args.batch}, {images} images per epoch, "
          f"{epochs} epochs", flush=True)
    for model in filter(None, args.models.split(",")):
        for precision in filter(None, args.precisions.split(",")):
            for source in ("synthetic", *inputs):
                r = run_one(model, precision, source, inputs.get(source), shape, classes, args.batch, epochs, images)
                result["runs"].append(r)
                print(f"  {model} {precision} {source}: steady {r['images_per_second']:,} images/s "
                      f"(first epoch {r['first_epoch_images_per_second']:,})", flush=True)
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    rows = ["| model | precision | input | first epoch images/s (with XLA compile) | steady images/s | steady epoch |",
            "|---|---|---|---:|---:|---:|"]
    rows += [f"| {r['model']} | {r['precision']} | {r['input']} | {r['first_epoch_images_per_second']:,.0f} "
             f"| {r['images_per_second']:,.0f} | {r['epoch_seconds']} s |" for r in result["runs"]]
    harness.save("gpu_training", args.out, result, "\n".join(rows),
                 f"Training on {devices[0]}, JAX backend, {shape[0]}x{shape[1]}x{shape[2]}, batch {args.batch}, "
                 f"{images:,} images per epoch, steady = median of epochs 2-{epochs}", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
