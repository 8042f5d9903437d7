"""Model builders: shapes, augmentation only active in training, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from imgclf.components.train import models

pytestmark = pytest.mark.unit


def test_baseline_shapes_and_float32_output():
    m = models.build("baseline", (32, 32, 3), 5, width=8, depth=2)
    out = m(np.zeros((2, 32, 32, 3), "float32"), training=False)
    assert tuple(out.shape) == (2, 5)
    np.testing.assert_allclose(np.asarray(out).sum(1), 1.0, rtol=1e-5)
    assert m.layers[-1].dtype_policy.compute_dtype == "float32"


def test_augmentation_is_inactive_at_inference():
    m = models.build("baseline", (28, 28, 1), 3, width=8, depth=2, seed=4)
    x = np.random.default_rng(0).integers(0, 255, (16, 28, 28, 1)).astype("float32")
    a = np.asarray(m(x, training=False))
    np.testing.assert_array_equal(a, np.asarray(m(x, training=False)))
    aug = m.get_layer("augmentation")
    assert not np.array_equal(np.asarray(aug(x, training=True)), x)
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)


def test_baseline_flips_only_and_pads_only_its_first_block():
    """The baseline's augmentation is an exact flip or the identity per image (no resampling), and
    only its first convolution keeps the size."""
    m = models.build("baseline", (28, 28, 1), 3, seed=2)
    x = np.random.default_rng(2).integers(0, 255, (16, 28, 28, 1)).astype("float32")
    y = np.asarray(m.get_layer("augmentation")(x, training=True))
    flipped = [np.allclose(y[i], x[i, :, ::-1], atol=1e-3) for i in range(16)]
    same = [np.allclose(y[i], x[i], atol=1e-3) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 16
    convs = [layer for layer in m.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.padding for c in convs] == ["same", "valid", "valid"]
    assert [tuple(c.output.shape[1:3]) for c in convs] == [(28, 28), (12, 12), (4, 4)]


@pytest.mark.parametrize("depth", range(1, 7))
def test_smallest_accepted_image_builds_and_one_less_is_refused(depth):
    """The size check and the network agree at the boundary, for every depth."""
    import re

    with pytest.raises(ValueError, match="too small") as refused:
        models.build("baseline", (1, 1, 1), 2, width=2, depth=depth)
    need = int(re.search(r"at least (\d+) pixels", str(refused.value)).group(1))
    m = models.build("baseline", (need, need, 1), 2, width=2, depth=depth, augment=False)
    assert tuple(m(np.zeros((1, need, need, 1), "float32")).shape) == (1, 2)
    with pytest.raises(ValueError, match=f"at least {need} pixels"):
        models.build("baseline", (need - 1, need - 1, 1), 2, width=2, depth=depth)


def test_unknown_model_and_too_small_image():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*baseline"):
        models.build("resnet9000", (28, 28, 1), 2)
    with pytest.raises(ValueError, match="too small"):
        models.build("baseline", (8, 8, 1), 2, depth=4)


@pytest.mark.parametrize("case", range(12))
def test_a_flip_alone_gives_the_pixels_the_resampling_gives(case):
    """Generated batches (shapes, flip modes, seeds): without rotation and zoom the layer takes its
    short path, and that equals the affine resampling of the same draws, pixel for pixel."""
    import keras

    rng = np.random.default_rng(case)
    flip = ("horizontal", "vertical", "horizontal_and_vertical", "")[case % 4]
    n, h, w, c = int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(1, 40)), int(rng.choice([1, 3]))
    x = rng.integers(0, 256, (n, h, w, c)).astype("float32")
    fx = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype("float32") if "horizontal" in flip else np.ones(n, "float32")
    fy = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype("float32") if "vertical" in flip else np.ones(n, "float32")
    layer = models.RandomFlipRotateZoom(flip, 0.0, 0.0, seed=case)
    zero, one = keras.ops.zeros((n,)), keras.ops.ones((n,))
    short = np.asarray(layer.flipped(x, fx, fy))
    np.testing.assert_array_equal(short, np.asarray(layer.resampled(x, zero, one, fx, fy)))
    expect = np.stack([x[i, ::int(fy[i]), ::int(fx[i])] for i in range(n)])
    np.testing.assert_array_equal(short, expect)
    a = np.asarray(models.RandomFlipRotateZoom(flip, 0.0, 0.0, seed=case)(x, training=True))
    assert all(any(np.array_equal(a[i], x[i, ::sy, ::sx]) for sy in (1, -1) for sx in (1, -1)) for i in range(n))


def test_one_pass_augmentation_flips_exactly_and_round_trips(tmp_path):
    """With rotation and zoom off, the layer gives an exact flip or the identity per image;
    with them on it moves pixels; the layer survives a .keras round trip."""
    import keras

    x = np.random.default_rng(1).integers(0, 255, (16, 20, 24, 3)).astype("float32")
    y = np.asarray(models.RandomFlipRotateZoom("horizontal", 0.0, 0.0, seed=3)(x, training=True))
    flipped = [np.allclose(y[i], x[i, :, ::-1], atol=1e-3) for i in range(16)]
    same = [np.allclose(y[i], x[i], atol=1e-3) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 16
    moved = np.asarray(models.RandomFlipRotateZoom("", 0.05, 0.1, seed=3)(x, training=True))
    assert moved.shape == x.shape and not np.allclose(moved, x)
    net = keras.Sequential([keras.Input((24, 24, 3)), models.augmentation(seed=3)])
    net.save(tmp_path / "m.keras")
    layer = keras.saving.load_model(tmp_path / "m.keras").layers[0].layers[0]
    assert isinstance(layer, models.RandomFlipRotateZoom) and (layer.rotation, layer.zoom) == (0.02, 0.05)
