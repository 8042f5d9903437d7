"""Grad-CAM over the last convolutional block: the split model answers exactly what the model answers, the
map follows the evidence, and the JAX backend draws the same maps as TensorFlow for the same saved model."""
from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from imgclf.components.evaluate import gradcam
from imgclf.components.lib.layers import FAMILIES
from imgclf.components.train import models
from tests.conftest import REPO


@pytest.mark.parametrize("name", ["baseline", "mobilenet_v2"])
def test_split_model_answers_what_the_model_answers(name):
    net = models.build(name, (64, 64, 1), 4, seed=0, augment=True)
    x = np.random.RandomState(0).randint(0, 256, (5, 64, 64, 1)).astype("float32")
    maps, probs, layer = gradcam.heatmaps(net, x)
    np.testing.assert_allclose(probs, net.predict(x, verbose=0), atol=1e-5)
    assert layer == gradcam.target_layer(net).name
    assert maps.shape[0] == 5 and maps.min() >= 0 and maps.max() <= 1
    if name == "baseline":  # the last convolution's grid: 64 px, pool 32, unpadded 30, pool 15, unpadded 13
        assert maps.shape[1:] == (13, 13) == tuple(net.get_layer(layer).output.shape[1:3])


def test_every_family_explains_its_backbone_output():
    for family in FAMILIES:
        net = models.build(family, (32, 32, 3), 3, seed=0, augment=False)
        assert gradcam.target_layer(net) is models.backbone(net)


@pytest.mark.unit
def test_map_lights_up_where_the_evidence_is():
    """A one-conv model whose class-1 score is the mean of a filter that fires on bright pixels: the map
    for class 1 is hot where the image is bright and cold elsewhere."""
    inputs = keras.Input((16, 16, 1), name="pixels")
    conv = keras.layers.Conv2D(1, 1, activation="relu", kernel_initializer="ones", bias_initializer="zeros")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(conv)
    out = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.Constant([[-1.0, 1.0]]))(
        pooled)
    net = keras.Model(inputs, out)
    x = np.zeros((1, 16, 16, 1), "float32")
    x[0, 2:6, 9:14] = 1.0
    maps, _, _ = gradcam.heatmaps(net, x, np.array([1]))
    assert maps[0, 2:6, 9:14].min() == pytest.approx(1.0) and maps[0].sum() == pytest.approx(20.0)


JAX_MAPS = """
import sys, numpy as np, keras
from imgclf.components.evaluate import gradcam
from imgclf.components.lib.layers import load_model  # registers the custom layers
net = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
maps, probs, _ = gradcam.heatmaps(net, x)
np.savez(sys.argv[3], maps=maps, probs=probs, backend=keras.backend.backend())
"""


@pytest.mark.slow
def test_jax_backend_draws_the_same_maps(tmp_path):
    pytest.importorskip("jax")
    net = models.build("baseline", (32, 32, 1), 3, seed=1, width=8, depth=2)
    net.save(tmp_path / "m.keras")
    x = np.random.RandomState(1).randint(0, 256, (4, 32, 32, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    tf_maps, tf_probs, _ = gradcam.heatmaps(net, x)
    proc = subprocess.run([sys.executable, "-c", JAX_MAPS, str(tmp_path / "m.keras"), str(tmp_path / "x.npy"),
                           str(tmp_path / "jax.npz")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    assert str(got["backend"]) == "jax"
    np.testing.assert_allclose(got["probs"], tf_probs, atol=1e-5)
    np.testing.assert_allclose(got["maps"], tf_maps, atol=1e-3)
    assert tf_maps.max() > 0
