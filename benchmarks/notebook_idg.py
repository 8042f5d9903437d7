"""The notebook way with ImageDataGenerator, as the Keras tutorials write it: one generator that rescales
to 0-1 and holds back 20 % for validation, `flow_from_directory` for the training and validation subsets,
the tutorials' small CNN, `fit`, `evaluate` on the validation subset, `save` to a .keras file.

The notebook side of `benchmarks.end_to_end`, runnable alone:
  python -m benchmarks.notebook_idg --data DIR --image-size 28 --color-mode grayscale --epochs 15 \\
      --batch-size 64 --out DIR
Prints its result as the last line (JSON: accuracy, epochs, fit and wall seconds). It checks nothing
about the images (a damaged file stops it mid-epoch) and exports nothing that serves.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()

import sys  # noqa: E402 - the clock starts before the imports, as a notebook's first cell does
from pathlib import Path  # noqa: E402

from benchmarks import notebook_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = notebook_model.parse_args(__doc__, argv)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    # Keras 3 keeps ImageDataGenerator only under tf.keras, where the tutorials import it from.
    datagen = tf.keras.preprocessing.image.ImageDataGenerator(rescale=1.0 / 255,
                                                               validation_split=notebook_model.VALIDATION_SPLIT)
    train = datagen.flow_from_directory(args.data, target_size=size, color_mode=args.color_mode,
                                        batch_size=args.batch_size, class_mode="categorical", subset="training",
                                        shuffle=True, seed=args.seed)
    val = datagen.flow_from_directory(args.data, target_size=size, color_mode=args.color_mode,
                                      batch_size=args.batch_size, class_mode="categorical", subset="validation",
                                      shuffle=False)

    channels = 1 if args.color_mode == "grayscale" else 3
    model = notebook_model.build_model((*size, channels), train.num_classes)
    notebook_model.compile_model(model, one_hot_labels=True)
    model.summary()

    t = time.perf_counter()
    history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
    fit_seconds = time.perf_counter() - t

    loss, accuracy = model.evaluate(val, verbose=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    notebook_model.report(STARTED, fit_seconds, len(history.history["loss"]), accuracy,
                          {"train": train.samples, "validation": val.samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
