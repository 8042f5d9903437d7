"""Warm start: every layer whose role and shapes match is copied from the earlier model, through the train
step's own path (options, precision policy, build, warm start, compile), before the first training step.
Same classes give every weight, a new class all but the head, a champion saved before the baseline named
its layers still gives every layer (paired in order), and another architecture is refused with the reason.
Real Fashion-MNIST images, tiny models."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from imgclf.components.lib.layers import load_model
from imgclf.components.train import models, step
from tests.conftest import preprocessed

SMALL = {"width": 8, "depth": 2, "batch_size": 16, "epochs": 1, "patience": 1, "seed": 3}
SHAPE = (32, 32, 1)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """100 real images (10 classes) at 32 px grey."""
    return str(preprocessed(tmp_path_factory.mktemp("warm"), 10))


class _Started(Exception):
    """Raised at the train step's first fit: the weights are then what training would start from."""


def started(monkeypatch, records: str, out, **opts) -> keras.Model:
    """The model the train step is about to fit, taken at the entry of its first `fit` (the whole model
    with the head put back in when the head phase trains on bottleneck features)."""
    seen = {}

    def first_fit(run, *args, whole=None, **kwargs):
        seen["net"] = whole(run.net) if whole else run.net
        raise _Started

    monkeypatch.setattr(step, "fit", first_fit)
    with pytest.raises(_Started):
        step.train(records, str(out), **opts)
    return seen["net"]


def champion(path, architecture: str, classes: int, seed: int, build=models.build, **kw) -> keras.Model:
    """An earlier model saved as train saves one, with weights drawn afresh (no initializer gives them, so a
    layer left as built cannot pass for a copied one); positive, so they also do as BatchNormalization
    variances."""
    net = build(architecture, SHAPE, classes, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    net.set_weights([rng.uniform(0.01, 1.0, w.shape).astype("float32") for w in net.get_weights()])
    path.parent.mkdir(parents=True, exist_ok=True)
    net.save(path)
    return keras.saving.load_model(path)


def assert_same(got: keras.Model, want: keras.Model, skip: tuple[str, ...] = ()) -> None:
    """Every weight of every layer with weights, trainable or not, equal in value."""
    pairs = list(zip(models.weighted_layers(got), models.weighted_layers(want)))
    assert len(pairs) == len(models.weighted_layers(want))
    compared = 0
    for a, b in pairs:
        if a.name in skip:
            continue
        assert len(a.weights) == len(b.weights), a.name
        for x, y in zip(a.weights, b.weights):
            np.testing.assert_array_equal(np.asarray(x.numpy()), np.asarray(y.numpy()),
                                          err_msg=f"{a.name}/{x.path}")
            compared += 1
    assert compared == sum(len(a.weights) for a, _ in pairs if a.name not in skip)


def warm_line(out: str) -> str:
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("train: warm start from ")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_same_classes_start_from_every_weight_of_the_champion(records, tmp_path, monkeypatch, capsys, precision):
    old = champion(tmp_path / "champ" / "model.keras", "baseline", 10, seed=11, width=8, depth=2)
    net = started(monkeypatch, records, tmp_path / "m", warm_start_from=str(tmp_path / "champ"),
                  precision=precision, **SMALL)
    # The weights went into the network that trains, under the run's policy (not a float32 copy of it).
    assert net.get_layer("block1_conv").compute_dtype == ("float32" if precision == "float32" else "bfloat16")
    assert len(net.weights) == len(old.weights) == 8
    assert_same(net, old)
    assert warm_line(capsys.readouterr().out) == (
        f"train: warm start from {tmp_path / 'champ'}: copied 4 of 4 layers with weights "
        "(by name: block1_conv, block2_conv, dense, probabilities; by position: none)")


def test_a_trained_champion_barely_moves_at_a_negligible_learning_rate(records, tmp_path):
    """End to end: warm-started at learning rate 1e-9, one epoch leaves the saved model within 1e-6 of
    the champion everywhere (with fresh convolutions they differed by 0.1-0.3)."""
    step.train(records, str(tmp_path / "champ"), **SMALL)
    step.train(records, str(tmp_path / "m"), warm_start_from=str(tmp_path / "champ"), learning_rate=1e-9, **SMALL)
    old, new = load_model(str(tmp_path / "champ")), load_model(str(tmp_path / "m"))
    assert len(old.weights) == len(new.weights)
    for a, b in zip(models.weighted_layers(new), models.weighted_layers(old)):
        for x, y in zip(a.weights, b.weights):
            diff = np.max(np.abs(np.asarray(x.numpy()) - np.asarray(y.numpy())))
            assert diff <= 1e-6, (a.name, x.path, diff)


def test_a_new_class_copies_all_but_the_head(records, tmp_path, monkeypatch, capsys):
    old = champion(tmp_path / "champ.keras", "baseline", 9, seed=12, width=8, depth=2)
    net = started(monkeypatch, records, tmp_path / "m", warm_start_from=str(tmp_path / "champ.keras"), **SMALL)
    assert_same(net, old, skip=("probabilities",))
    head = net.get_layer("probabilities")
    assert tuple(head.kernel.shape) == (32, 10) and tuple(old.get_layer("probabilities").kernel.shape) == (32, 9)
    assert warm_line(capsys.readouterr().out) == (
        f"train: warm start from {tmp_path / 'champ.keras'}: copied 3 of 4 layers with weights "
        "(by name: block1_conv, block2_conv, dense; by position: none); not copied: probabilities "
        "(shape (32, 9) vs (32, 10): starts fresh)")


def old_baseline(name, input_shape, num_classes, width=8, depth=2, dropout=0.3, seed=None):
    """The baseline as built before it named its layers: Keras' automatic names, which count the layers
    built before it in the process."""
    from keras import layers

    assert name == "baseline"
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = models.augmentation(**models.BASELINE_AUGMENTATION, seed=seed)(inputs)
    x = layers.Rescaling(1.0 / 255)(x)
    for i in range(depth):
        x = layers.Conv2D(width * 2 ** i, 3, padding="same" if i == 0 else "valid", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout / 2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(width * 4, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="baseline")


@pytest.mark.parametrize("classes", [10, 9])
def test_a_champion_with_the_old_automatic_names_still_gives_every_layer(records, tmp_path, monkeypatch, capsys,
                                                                         classes):
    keras.layers.Conv2D(1, 3), keras.layers.Dense(1)  # as in a process that built layers before the champion
    old = champion(tmp_path / "champ.keras", "baseline", classes, seed=13, build=old_baseline)
    auto = [layer.name for layer in models.weighted_layers(old)]
    assert auto[:2] != ["conv2d", "conv2d_1"] and auto[0].startswith("conv2d_") and auto[2].startswith("dense_")
    net = started(monkeypatch, records, tmp_path / "m", warm_start_from=str(tmp_path / "champ.keras"), **SMALL)
    line = warm_line(capsys.readouterr().out)
    if classes == 10:
        assert_same(net, old)
        assert line.endswith("copied 4 of 4 layers with weights (by name: probabilities; by position: "
                             "block1_conv, block2_conv, dense)")
    else:
        assert_same(net, old, skip=("probabilities",))
        assert line.endswith("copied 3 of 4 layers with weights (by name: none; by position: block1_conv, "
                             "block2_conv, dense); not copied: probabilities (shape (32, 9) vs (32, 10): starts fresh)")


def test_another_architecture_is_refused_with_the_reason(records, tmp_path, monkeypatch):
    champion(tmp_path / "champ.keras", "baseline", 10, seed=14, width=8, depth=2)
    with pytest.raises(ValueError, match=r"no layer of that model fits this one \(mobilenet_v2\): that model is a "
                                         r"baseline and this one a mobilenet_v2: .*probabilities \(shape \(32, 10\) "
                                         r"vs \(1280, 10\): starts fresh\)") as refused:
        started(monkeypatch, records, tmp_path / "m", warm_start_from=str(tmp_path / "champ.keras"),
                architecture="mobilenet_v2", weights="none", **SMALL)
    assert "Conv1" not in str(refused.value)  # the layers that model simply lacks are not listed


def test_transfer_family_starts_from_every_weight_or_all_but_the_head(records, tmp_path, monkeypatch, capsys):
    """MobileNetV2 with BatchNormalization statistics, a new class, and the head phase on cached bottleneck
    features (whose backbone comes from the champion too, not from the weights file)."""
    old = champion(tmp_path / "champ.keras", "mobilenet_v2", 10, seed=15, weights=None)
    transfer = {**SMALL, "architecture": "mobilenet_v2", "warm_start_from": str(tmp_path / "champ.keras")}
    net = started(monkeypatch, records, tmp_path / "a", weights="none", **transfer)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in models.weighted_layers(net))
    assert_same(net, old)
    line = warm_line(capsys.readouterr().out)
    assert line.endswith("copied 105 of 105 layers with weights (by name: 105 layers; by position: none)")

    fewer = champion(tmp_path / "nine.keras", "mobilenet_v2", 9, seed=16, weights=None)
    net = started(monkeypatch, records, tmp_path / "b", weights="none",
                  **{**transfer, "warm_start_from": str(tmp_path / "nine.keras")})
    assert_same(net, fewer, skip=("probabilities",))
    assert warm_line(capsys.readouterr().out).endswith(
        "copied 104 of 105 layers with weights (by name: 104 layers; by position: none); not copied: "
        "probabilities (shape (1280, 9) vs (1280, 10): starts fresh)")

    file = tmp_path / "base.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(file)
    net = started(monkeypatch, records, tmp_path / "c", weights=str(file), augment=False, **transfer)
    assert "head phase on cached bottleneck features" in capsys.readouterr().out
    assert_same(net, old)
