"""Grad-CAM: where in the image the network looked for the class it chose (Selvaraju et al., 2017), the
modern form of the classic tutorials' feature-map plots.

The model is cut at its last convolutional block (the baseline's last Conv2D; a transfer family's
backbone output, which is its last block), the gradient of the chosen class's log-probability with
respect to that block's activations is averaged per channel, and the channels' weighted sum, through a
ReLU, is the heat map. Keras 3 has no backend-neutral gradient, so the one gradient call is written per
backend (TensorFlow's GradientTape, jax.grad); everything else is `keras.*`.
"""
from __future__ import annotations

import keras
import numpy as np


def target_layer(model: keras.Model) -> keras.layers.Layer:
    """The last convolutional block: a nested backbone if there is one, else the last Conv2D."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "augmentation"]
    if nested:
        return nested[-1]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(f"model {model.name!r} has no convolutional layer to explain")
    return convs[-1]


def split(model: keras.Model):
    """(image -> activations of the last block, activations -> probabilities). The layers after the block
    form a chain in both our model kinds, so the second half re-applies them in order, in inference mode."""
    target = target_layer(model)
    upper_layers = model.layers[model.layers.index(target) + 1:]
    # The next layer's input is the block's output in this graph (a nested backbone's own `.output` is not).
    lower = keras.Model(model.inputs, upper_layers[0].input, name="to_last_block")

    def upper(activations):
        x = activations
        for layer in upper_layers:
            x = layer(x, training=False)
        return x

    return target.name, lower, upper


def _gradients(upper, activations: np.ndarray, classes: np.ndarray):
    """Probabilities and d log p[class] / d activations, on whichever backend Keras runs."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(a)
            probs = upper(a)
            score = tf.math.log(tf.gather(probs, classes, batch_dims=1) + 1e-12)
        return probs.numpy(), tape.gradient(score, a).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(a):
            probs = upper(a)
            return jnp.sum(jnp.log(jnp.take_along_axis(probs, jnp.asarray(classes)[:, None], 1) + 1e-12)), probs

        grads, probs = jax.grad(score, has_aux=True)(jnp.asarray(activations))
        return np.asarray(probs), np.asarray(grads)
    raise NotImplementedError(f"Grad-CAM has no gradient for the {backend} backend (tensorflow and jax only)")


def heatmaps(model: keras.Model, pixels: np.ndarray, classes: np.ndarray | None = None,
             batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, str]:
    """Heat maps in [0, 1] (N x h x w, the last block's resolution) for `classes` (default: the predicted
    ones), the model's probabilities, and the explained layer's name."""
    name, lower, upper = split(model)
    maps, all_probs = [], []
    for i in range(0, len(pixels), batch_size):
        x = np.asarray(pixels[i:i + batch_size], dtype="float32")
        a = np.asarray(keras.ops.convert_to_numpy(lower([x], training=False)), dtype="float32")
        chosen = None if classes is None else np.asarray(classes[i:i + batch_size])
        if chosen is None:
            chosen = np.asarray(keras.ops.convert_to_numpy(upper(a))).argmax(1)
        probs, grads = _gradients(upper, a, chosen.astype("int32"))
        weights = grads.mean(axis=(1, 2), keepdims=True)
        cam = np.maximum((weights * a).sum(-1), 0)
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps.append(np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0))
        all_probs.append(probs)
    return np.concatenate(maps), np.concatenate(all_probs), name
