"""What the two notebook-style scripts share, so that they differ only in how they feed images: the
tutorials' small CNN (three Conv2D/MaxPooling blocks of 32, 64 and 128 filters, Flatten, Dense 128,
Dropout, softmax), compiled the way the tutorials compile it (Adam, cross-entropy, accuracy), their
command line, and the JSON line each prints last for `benchmarks.end_to_end` to read.

Nothing here is tuned: the point of the notebook side of the pairing is to be what a user writes from
the tutorials, not the best that Keras can do.
"""
from __future__ import annotations

import argparse
import json
import time

VALIDATION_SPLIT = 0.2


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data", required=True, help="class-per-subfolder image folder")
    p.add_argument("--image-size", type=int, required=True, help="images are resized to N x N")
    p.add_argument("--color-mode", choices=("grayscale", "rgb"), required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", required=True, help="folder for model.keras")
    p.add_argument("--seed", type=int, default=42, help="the validation split's and the shuffle's seed")
    return p.parse_args(argv)


def build_model(input_shape: tuple[int, int, int], classes: int, rescale: bool = False):
    """`rescale`: divide by 255 inside the model (image_dataset_from_directory yields 0-255 pixels;
    ImageDataGenerator has already rescaled)."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    if rescale:
        model.add(layers.Rescaling(1.0 / 255))
    for filters in (32, 64, 128):
        model.add(layers.Conv2D(filters, (3, 3), activation="relu"))
        model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(classes, activation="softmax"))
    return model


def compile_model(model, one_hot_labels: bool) -> None:
    """ImageDataGenerator's `class_mode="categorical"` gives one-hot labels, image_dataset_from_directory's
    default integer ones: the same loss in the form each needs."""
    loss = "categorical_crossentropy" if one_hot_labels else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])


def report(started: float, fit_seconds: float, epochs: int, accuracy: float, images: dict[str, int]) -> None:
    """The last stdout line. `wall_seconds` counts from the script's first line (before TensorFlow's
    import), not the interpreter's start: `benchmarks.end_to_end` times the whole process itself."""
    print(json.dumps({"accuracy": round(float(accuracy), 4), "epochs": epochs, "fit_seconds": round(fit_seconds, 2),
                      "wall_seconds": round(time.perf_counter() - started, 2), "images": images}), flush=True)
