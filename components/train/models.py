"""Keras 3 model builders. Only `keras.*` APIs here, so the same code trains on the TensorFlow and JAX
backends. Augmentation and pixel scaling live inside the model: they run on the accelerator, are
inactive at inference, and the served model takes raw uint8-range pixels exactly like training.

Two kinds of model: `baseline`, the small CNN of the classic tutorials, and the transfer-learning
families of `keras.applications` (a pretrained backbone named "backbone" under a new head).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import keras
from keras import layers

from imgclf.components.lib.layers import FAMILIES, FamilyPreprocess, RandomFlipRotateZoom
from imgclf.components.train.options import ARCHITECTURES


def augmentation(flip: str = "horizontal", rotation: float = 0.02, zoom: float = 0.05,
                 seed: int | None = None) -> keras.Sequential:
    """Flip, ±7° rotation and ±5 % zoom, only active when training."""
    return keras.Sequential([RandomFlipRotateZoom(flip, rotation, zoom, seed=seed, name="flip_rotate_zoom")],
                            name="augmentation")


BASELINE_AUGMENTATION = {"rotation": 0.0, "zoom": 0.0}
"""The baseline augments by flipping alone: trained from scratch, a small network at small sizes learned
more from the sharp images than it gained from resampled ones (flip alone scored at least as well as
flip + rotation + zoom on Fashion-MNIST, the whole set and the sample). Transfer families keep all three."""


def smallest_image(depth: int) -> int:
    """The smallest side the baseline takes at this depth. Worked back from the last block, whose
    convolution must leave 2 pixels to pool: each later block's unpadded 3x3 convolution takes 2
    pixels, and the block before it must pool to what is left (twice as many before pooling)."""
    need = 2
    for _ in range(depth - 1):
        need = 2 * (need + 2)
    return need


def baseline(input_shape: tuple[int, int, int], num_classes: int, width: int = 32, depth: int = 3,
             dropout: float = 0.3, augment: bool = True, seed: int | None = None) -> keras.Model:
    """The small CNN of the classic Keras tutorials: `depth` blocks of conv-pool, doubling the
    filters from `width`, then a dense head with dropout.

    Only the first block pads its convolution ("same"; the tutorials' CNN pads none). Padding the later
    ones too nearly doubles the multiply-adds at small sizes and trains markedly slower, for a gain in
    validation accuracy within the noise of a small sample (docs/performance.md has the training figures).
    """
    if depth < 1 or width < 1:
        raise ValueError(f"baseline needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
    if min(input_shape[:2]) < (need := smallest_image(depth)):
        raise ValueError(f"image_size {input_shape[0]} is too small for depth {depth} (each block halves it, "
                         f"the later ones after an unpadded 3x3 convolution; need at least {need} pixels)")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = augmentation(**BASELINE_AUGMENTATION, seed=seed)(inputs) if augment else inputs
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    # Every layer named: Keras' automatic names (conv2d_3, ...) count the layers built before in the
    # process, so the same network got other names in another run and a warm start found nothing to match.
    for i in range(1, depth + 1):
        filters = width * 2 ** (i - 1)
        x = layers.Conv2D(filters, 3, padding="same" if i == 1 else "valid", activation="relu",
                          name=f"block{i}_conv")(x)
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
        x = layers.Dropout(dropout / 2, name=f"block{i}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(width * 4, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 output keeps softmax stable under mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="baseline")


def transfer(input_shape: tuple[int, int, int], num_classes: int, family: str = "mobilenet_v2",
             weights: str | None = "imagenet", dropout: float = 0.2, augment: bool = True,
             seed: int | None = None) -> keras.Model:
    """A keras.applications backbone under a new pooling + dropout + softmax head.

    `weights`: "imagenet" (Keras downloads them), a local weights file of the backbone without its top
    (air-gapped clusters), or None to train from scratch. With weights the backbone starts frozen and
    is called with training=False, so its BatchNormalization layers stay in inference mode even when
    `unfreeze_top` later makes some of them trainable (the classic fine-tuning recipe).
    """
    fam = FAMILIES[family]
    size, channels = input_shape[0], input_shape[2]
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = augmentation(seed=seed)(inputs) if augment else inputs
    if channels == 1:
        # ImageNet backbones expect three channels; grey images become grey RGB.
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if size < fam.min_size:
        x = layers.Resizing(fam.min_size, fam.min_size, name="upsize")(x)
        size = fam.min_size
    x = FamilyPreprocess(family, name="preprocess_input")(x)
    builder = getattr(keras.applications, fam.constructor)
    base = builder(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                   input_shape=(size, size, 3))
    if weights not in (None, "imagenet"):
        try:
            base.load_weights(weights)
        except Exception as e:  # noqa: BLE001 - Keras raises several types for a mismatched file
            raise ValueError(f"weights file {weights} does not fit {family} without its top "
                             f"({type(e).__name__}: {e})") from None
    pretrained = weights is not None
    base.trainable = not pretrained
    x = base(x, training=False) if pretrained else base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=family)


def is_transfer(name: str) -> bool:
    return name in FAMILIES


def backbone(model: keras.Model) -> keras.Model:
    """The pretrained base inside a transfer model (keras.applications names it per family)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "augmentation"]
    if len(nested) != 1:
        raise ValueError(f"model {model.name!r} has no single backbone to fine-tune")
    return nested[0]


def unfreeze_top(model: keras.Model, n: int) -> int:
    """Make the backbone's top `n` layers trainable, keeping every BatchNormalization layer frozen
    (fine-tuning its statistics on a small dataset wrecks the pretrained features). Returns how many
    layers became trainable."""
    base = backbone(model)
    base.trainable = True
    opened = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= len(base.layers) - n and not isinstance(layer, layers.BatchNormalization)
        opened += layer.trainable
    return opened


NO_NAME = "no layer of that name"


def weighted_layers(model: keras.Model) -> list:
    """The layers that hold weights, in the order the model builds them, descending into nested models (a
    transfer family's backbone): the units a warm start copies. A layer that is not itself a model is one
    unit with all its weights, trainable or not (a BatchNormalization's moving statistics included)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


@dataclass
class WarmStart:
    """What `copy_weights` did: the layers copied, by how they were paired, and every layer left as built
    (named with why). `str()` is the one log line; it stays short for a backbone of hundreds of layers."""
    source: str
    target: str
    layers: int
    by_name: list[str] = field(default_factory=list)
    by_position: list[str] = field(default_factory=list)
    fresh: list[tuple[str, str]] = field(default_factory=list)  # (layer, why it was not copied)

    LISTED = 10

    @property
    def copied(self) -> int:
        return len(self.by_name) + len(self.by_position)

    def _copied(self, names: list[str]) -> str:
        if not names:
            return "none"
        return ", ".join(names) if len(names) <= self.LISTED else f"{len(names)} layers"

    def not_copied(self, fresh: list[tuple[str, str]] | None = None) -> str:
        fresh = self.fresh if fresh is None else fresh
        shown = ", ".join(f"{name} ({why}: starts fresh)" for name, why in fresh[:self.LISTED])
        return shown + (f" and {len(fresh) - self.LISTED} more" if len(fresh) > self.LISTED else "")

    def __str__(self) -> str:
        line = (f"copied {self.copied} of {self.layers} layers with weights (by name: {self._copied(self.by_name)}; "
                f"by position: {self._copied(self.by_position)})")
        return line + (f"; not copied: {self.not_copied()}" if self.fresh else "")

    def why_nothing(self) -> str:
        """Why no layer fitted, for the error a warm start that copies nothing raises."""
        if self.source != self.target:
            # Only the layers found by name say anything here: every other one is simply not in that model.
            named = [(name, why) for name, why in self.fresh if why != NO_NAME]
            return (f"that model is a {self.source} and this one a {self.target}: across architectures layers pair "
                    "by name alone, and no layer of the same name has the same class and weight shapes"
                    + (f" ({self.not_copied(named)})" if named else ""))
        return ("no layer has the class and weight shapes of its counterpart by name or by position; not copied: "
                + self.not_copied())


def _shapes_differ(old: keras.layers.Layer, new: keras.layers.Layer) -> str:
    """Why `old`'s weights cannot go into `new` ("" when they can)."""
    if type(old) is not type(new):
        return f"a {type(new).__name__} where that model has a {type(old).__name__}"
    if len(old.weights) != len(new.weights):
        return f"{len(old.weights)} weights vs {len(new.weights)}"
    for a, b in zip(old.weights, new.weights):
        if tuple(a.shape) != tuple(b.shape):
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    return ""


def copy_weights(source: keras.Model, target: keras.Model) -> WarmStart:
    """Warm-start `target` with `source`'s weights wherever a layer plays the same role with the same shapes.

    Pairing by name comes first: a name found once in each model (our builders name every layer, and
    keras.applications names a backbone's) pairs its two layers, which are copied when their class and
    weight shapes agree and otherwise left as built (a new class changes the head's shape: the head starts
    fresh and the rest still copies). Then, only within one architecture (same model name), the layers still
    unpaired in each are paired in order, copied where class and all weight shapes agree: a champion saved
    before the baseline named its layers has Keras' automatic names (conv2d_3, ...), which count the layers
    built earlier in the process and so differ from run to run; in order its layers are still ours.
    Across architectures nothing is paired by position: shapes alone could pair layers of different roles.
    """
    new, old = weighted_layers(target), weighted_layers(source)
    same_architecture = source.name == target.name
    report = WarmStart(source.name, target.name, len(new))

    def unique(found):
        counts = Counter(layer.name for layer in found)
        return {layer.name: layer for layer in found if counts[layer.name] == 1}

    old_named, new_named = unique(old), unique(new)
    pairs, fresh, used = {}, {}, set()
    for layer in new:
        match = old_named.get(layer.name) if layer.name in new_named else None
        if match is None or type(match) is not type(layer):
            continue
        used.add(id(match))
        why = _shapes_differ(match, layer)
        if why:
            fresh[id(layer)] = why
        else:
            pairs[id(layer)] = (match, "name")
    unpaired = [layer for layer in new if id(layer) not in pairs and id(layer) not in fresh]
    if same_architecture:
        for layer, match in zip(unpaired, [m for m in old if id(m) not in used]):
            why = _shapes_differ(match, layer)
            if why:
                fresh[id(layer)] = why
            else:
                pairs[id(layer)] = (match, "position")
    for layer in unpaired:
        if id(layer) not in pairs and id(layer) not in fresh:
            fresh[id(layer)] = "nothing in that model at its place" if same_architecture else NO_NAME
    for layer in new:
        if id(layer) in pairs:
            match, how = pairs[id(layer)]
            layer.set_weights(match.get_weights())
            (report.by_name if how == "name" else report.by_position).append(layer.name)
        else:
            report.fresh.append((layer.name, fresh[id(layer)]))
    return report


MODELS = list(ARCHITECTURES)
assert set(MODELS) == {"baseline", *FAMILIES}, "train/options.py ARCHITECTURES must name exactly the builders here"


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, *, weights: str | None = None,
          width: int = 32, depth: int = 3, dropout: float = 0.3, augment: bool = True,
          seed: int | None = None) -> keras.Model:
    if name == "baseline":
        if weights is not None:
            raise ValueError("weights apply to the transfer-learning families; baseline trains from scratch "
                             "(to start from an earlier model's weights use warm_start)")
        return baseline(input_shape, num_classes, width=width, depth=depth, dropout=dropout, augment=augment,
                        seed=seed)
    if name in FAMILIES:
        return transfer(input_shape, num_classes, name, weights=weights, dropout=dropout, augment=augment, seed=seed)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
