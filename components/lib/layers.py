"""The custom Keras layers an imgclf model holds, registered for (de)serialization.

They are part of the saved-model contract: train builds models with them, and every step that loads a
`.keras` file (evaluate, export, a warm start) registers them by importing this module. Only `keras.*`
APIs, so the same layers run on the TensorFlow and JAX backends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from imgclf.components.contracts import MODEL_FILE


def load_model(model_dir: str) -> keras.Model:
    """The trained Keras model of a train output; importing this module registered its custom layers."""
    return keras.saving.load_model(Path(model_dir) / MODEL_FILE)

FLIPS = {"": (False, False), "horizontal": (True, False), "vertical": (False, True),
         "horizontal_and_vertical": (True, True)}


@keras.saving.register_keras_serializable(package="imgclf")
class RandomFlipRotateZoom(layers.Layer):
    """The classic tutorials' RandomFlip + RandomRotation + RandomZoom, as one affine resampling per
    image instead of three passes over the batch (a flip alone as a reversal of pixels). On CPU the
    resampling is most of the input-side cost, and one pass costs well under half of the three Keras
    layers' (input figures: docs/performance.md). Only active when training."""

    def __init__(self, flip: str = "horizontal", rotation: float = 0.02, zoom: float = 0.05,
                 fill_mode: str = "nearest", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(repr(f) for f in FLIPS)}, got {flip!r}")
        self.flip, self.rotation, self.zoom, self.fill_mode, self.seed = flip, rotation, zoom, fill_mode, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        ops = keras.ops
        n = ops.shape(images)[0]

        def uniform(low, high):
            return keras.random.uniform((n,), low, high, seed=self.generator)

        def sign(enabled):
            return ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if enabled else ops.ones((n,))

        # rotation as a fraction of a full turn and zoom as a fraction of the size, as the Keras layers.
        angle = uniform(-self.rotation, self.rotation) * 2.0 * math.pi
        scale = 1.0 + uniform(-self.zoom, self.zoom)
        fx, fy = (sign(f) for f in FLIPS[self.flip])
        pixels = ops.cast(images, "float32")
        if self.rotation == 0 and self.zoom == 0:
            out = self.flipped(pixels, fx, fy)
        else:
            out = self.resampled(pixels, angle, scale, fx, fy)
        return ops.cast(out, self.compute_dtype)

    def resampled(self, pixels, angle, scale, fx, fy):
        """One affine resampling per image: input point = centre + scale * rotation * flip * (output point - centre)."""
        ops = keras.ops
        shape = ops.shape(pixels)
        n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        a0, a1, b0, b1 = cos * fx, -sin * fy, sin * fx, cos * fy
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        zero = ops.zeros((n,))
        transform = ops.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, zero, zero], axis=1)
        return ops.image.affine_transform(pixels, transform, interpolation="bilinear", fill_mode=self.fill_mode)

    @staticmethod
    def flipped(pixels, fx, fy):
        """A flip alone (the baseline's augmentation): the resampling then lands every pixel on a pixel,
        so reversing the columns or rows gives the same pixels from the same draws, for about a third
        of the time."""
        ops = keras.ops
        out = ops.where((fx < 0)[:, None, None, None], ops.flip(pixels, axis=2), pixels)
        return ops.where((fy < 0)[:, None, None, None], ops.flip(out, axis=1), out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "rotation": self.rotation, "zoom": self.zoom,
                "fill_mode": self.fill_mode, "seed": self.seed}


@dataclass(frozen=True)
class Family:
    """A keras.applications backbone: its constructor, the module holding its own `preprocess_input`,
    the input size its ImageNet weights were trained at, and the smallest input it accepts."""
    constructor: str
    module: str
    default_size: int
    min_size: int


FAMILIES = {
    "mobilenet_v2": Family("MobileNetV2", "mobilenet_v2", 224, 32),
    "efficientnet_v2_b0": Family("EfficientNetV2B0", "efficientnet_v2", 224, 32),
    "inception_v3": Family("InceptionV3", "inception_v3", 299, 75),
    "resnet50_v2": Family("ResNet50V2", "resnet_v2", 224, 32),
    "vgg16": Family("VGG16", "vgg16", 224, 32),
}


@keras.saving.register_keras_serializable(package="imgclf")
class FamilyPreprocess(layers.Layer):
    """The family's own `preprocess_input` as a layer, so the saved model (and the SavedModel built from
    it) scales pixels exactly as the backbone's weights expect, with no preprocessing left to clients."""

    def __init__(self, family: str, **kwargs):
        super().__init__(**kwargs)
        self.family = family

    def call(self, x):
        return getattr(keras.applications, FAMILIES[self.family].module).preprocess_input(x)

    def get_config(self):
        return {**super().get_config(), "family": self.family}


