"""Keras 3 model builders. Only `keras.*` APIs here, so the same code trains on the TensorFlow and JAX
backends. Augmentation and pixel scaling live inside the model: they run on the accelerator, are
inactive at inference, and the served model takes raw uint8-range pixels exactly like training.
"""
from __future__ import annotations

import keras
from keras import layers


def augmentation(flip: str = "horizontal", rotation: float = 0.02, zoom: float = 0.05,
                 seed: int | None = None) -> keras.Sequential:
    """The classic tutorials' RandomFlip/RandomRotation/RandomZoom, only active when training."""
    aug = []
    if flip:
        aug.append(layers.RandomFlip(flip, seed=seed))
    if rotation:
        aug.append(layers.RandomRotation(rotation, fill_mode="nearest", seed=seed))
    if zoom:
        aug.append(layers.RandomZoom(zoom, fill_mode="nearest", seed=seed))
    return keras.Sequential(aug, name="augmentation")


def baseline(input_shape: tuple[int, int, int], num_classes: int, width: int = 32, depth: int = 3,
             dropout: float = 0.3, augment: bool = True, seed: int | None = None) -> keras.Model:
    """The small CNN of the classic Keras tutorials: `depth` blocks of conv-pool, doubling the
    filters from `width`, then a dense head with dropout."""
    if depth < 1 or width < 1:
        raise ValueError(f"baseline needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
    if min(input_shape[:2]) < 2 ** depth:
        raise ValueError(f"image_size {input_shape[0]} is too small for depth {depth} "
                         f"(each block halves it; need at least {2 ** depth} pixels)")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = augmentation(seed=seed)(inputs) if augment else inputs
    x = layers.Rescaling(1.0 / 255)(x)
    for i in range(depth):
        filters = width * 2 ** i
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout / 2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(width * 4, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    # float32 output keeps softmax stable under mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="baseline")


MODELS = {"baseline": baseline}


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs) -> keras.Model:
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return builder(input_shape, num_classes, **kwargs)
