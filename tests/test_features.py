"""Bottleneck-feature training: the head phase on features computed once gives the same one model as the
image path (same layers, same losses, same kind of accuracy), resumes after a kill, hands over to
fine-tuning on images, and runs through `imgclf run`. Real Fashion-MNIST images; the backbone's weights
are a saved random EfficientNetV2-B0 (nothing can be downloaded here), whose features carry enough to
learn from."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from imgclf.components.contracts import RecordsMetadata, load_history
from imgclf.components.lib.layers import load_model
from imgclf.components.train.step import train
from tests.conftest import REPO, TEN, make_folder, preprocessed

QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
FAMILY = "efficientnet_v2_b0"
# Random-backbone features are small: a high rate lets a few epochs show learning. float32: the tests
# compare the two paths (and the saved float32 model with the history) to float32's rounding, which
# mixed bfloat16, what precision=auto picks on a CPU with native bfloat16, does not keep.
HEAD = {"architecture": FAMILY, "epochs": 3, "batch_size": 32, "learning_rate": 0.05, "patience": 5, "seed": 3,
        "precision": "float32"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """400 real images (10 classes) at 32 px grey, and a backbone weights file as an air-gapped cluster has it."""
    tmp = tmp_path_factory.mktemp("features")
    preprocessed(tmp, 40)
    weights = tmp / "backbone.weights.h5"
    keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    return tmp / "pp", str(weights)


def _layers(model) -> list:
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


@pytest.mark.slow
def test_cached_head_is_the_image_path_model(records, tmp_path, capsys):
    from imgclf.components.evaluate.step import evaluate

    pp, weights = records
    cached = train(str(pp), str(tmp_path / "cached"), weights=weights, augment=False, **HEAD)
    out = capsys.readouterr().out
    train_images = RecordsMetadata.load(str(pp)).count("train")
    assert f"bottleneck features of {train_images} train images" in out and \
        "head phase on cached bottleneck features" in out
    images = train(str(pp), str(tmp_path / "images"), weights=weights, augment=False, cache_features="off", **HEAD)
    assert "head phase" not in capsys.readouterr().out

    a, b = load_model(str(tmp_path / "cached")), load_model(str(tmp_path / "images"))
    assert _layers(a) == _layers(b)  # one whole model, exactly the image path's architecture
    # Same seed, same inputs to the head: the same optimisation, epoch by epoch (dropout draws differ).
    h_cached, h_images = load_history(str(tmp_path / "cached")), load_history(str(tmp_path / "images"))
    np.testing.assert_allclose(h_cached["loss"], h_images["loss"], rtol=1e-2)
    np.testing.assert_allclose(h_cached["learning_rate"], h_images["learning_rate"], rtol=1e-6)
    # The saved whole model, fed validation *images*, scores the best head epoch's validation loss on features.
    meta = RecordsMetadata.load(str(pp))
    from imgclf.components.lib import records as rec
    x, y = zip(*[(xb.numpy(), yb.numpy()) for xb, yb in rec.make_dataset(str(pp), meta, "validation", 64)])
    p = a.predict(np.concatenate(x), verbose=0)
    val_loss = float(np.mean(-np.log(p[np.arange(len(p)), np.concatenate(y)])))
    assert val_loss == pytest.approx(min(h_cached["val_loss"]), rel=1e-4)
    # The frozen backbone came back untouched around the trained head.
    base = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.load_weights(weights)
    for w, v in zip(base.get_weights(), a.get_layer(base.name).get_weights()):
        np.testing.assert_array_equal(w, v)
    ev_cached = evaluate(str(pp), str(tmp_path / "cached"), str(tmp_path / "p1"))
    ev_images = evaluate(str(pp), str(tmp_path / "images"), str(tmp_path / "p2"))
    assert ev_cached.metrics["accuracy"] > 0.25, ev_cached.metrics  # 10 classes: chance is 0.1
    assert abs(ev_cached.metrics["accuracy"] - ev_images.metrics["accuracy"]) <= 0.1
    assert cached.epochs_run == images.epochs_run == 3  # (the speed-up is make bench's to show, not a test's)


def test_cache_on_refuses_a_backbone_that_trains(records, tmp_path):
    pp, _ = records
    with pytest.raises(ValueError, match="cache_features=on needs a frozen pretrained backbone"):
        train(str(pp), str(tmp_path / "m"), architecture="baseline", cache_features="on", epochs=1)
    with pytest.raises(ValueError, match="cache_features=on needs a frozen pretrained backbone"):
        train(str(pp), str(tmp_path / "m"), architecture=FAMILY, weights="none", cache_features="on", epochs=1)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_cached_head_and_trains_on_images(records, tmp_path, capsys):
    pp, weights = records
    r = train(str(pp), str(tmp_path / "m"), weights=weights, cache_features="on", fine_tune_layers=20,
              fine_tune_epochs=2, **HEAD)
    out = capsys.readouterr().out
    assert "head phase on cached bottleneck features" in out and "fine-tuning the top 20 backbone layers" in out
    hist = load_history(str(tmp_path / "m"))
    assert r.epochs_run == len(hist["loss"]) == 5
    # Phase 2 started at lr x 0.1 from the head phase's best: its first loss is near that phase's best.
    assert hist["learning_rate"][3] == pytest.approx(0.005 * (0.01 + 0.99 * 0.5), rel=1e-3)
    assert hist["val_loss"][3] < hist["val_loss"][0] + 0.5
    # Phase 2 saw images through the whole model (augmentation included), not features.
    assert hist["images_per_second"][3] < min(hist["images_per_second"][1:3])
    assert max(hist["val_accuracy"]) > 0.25


@pytest.mark.slow
def test_killed_head_phase_resumes_with_features_read_back(records, tmp_path):
    pp, weights = records
    backup = str(tmp_path / "model.backup")
    cmd = [sys.executable, "-m", "imgclf.components", "train", "--dataset-dir", str(pp), "--model-dir", str(tmp_path / "m"),
           "--architecture", FAMILY, "--weights", weights, "--no-augment", "--epochs", "150", "--patience", "150",
           "--batch-size", "32", "--learning-rate", "0.05", "--backup-uri", backup,
           "--backup-seconds", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=QUIET, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "model.backup" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["epoch"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())["epoch"]
    assert saved < 150 and (tmp_path / "model.backup" / "features" / "features.json").exists()

    again = subprocess.run(cmd, cwd=REPO, env=QUIET, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "bottleneck features of train, validation read back" in again.stdout
    assert "bottleneck features of 279" not in again.stdout  # not computed again
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["resumed_from_epoch"] == saved
    hist = load_history(str(tmp_path / "m"))
    assert len(hist["loss"]) == result["epochs_run"] > saved
    # The cosine schedule continued from the restored step counter: strictly decreasing, no jump back.
    assert all(b < a for a, b in zip(hist["learning_rate"], hist["learning_rate"][1:]))
    assert not (tmp_path / "model.backup").exists()
    meta = RecordsMetadata.load(str(pp))
    assert load_model(str(tmp_path / "m")).output.shape[-1] == len(meta.classes)


@pytest.mark.slow
def test_imgclf_run_trains_the_head_on_cached_features_then_fine_tunes(records, tmp_path):
    """Through kfp.local: the head phase on features, fine-tuning on images, and export's parity check on the
    test images' original bytes, unchanged."""
    _, weights = records
    data = make_folder(tmp_path / "data", TEN, 12, jpeg_every=4)
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--image-size", "32",
         "--color-mode", "grayscale", "--architecture", FAMILY, "--weights", weights, "--no-augment",
         "--fine-tune-layers", "10", "--fine-tune-epochs", "1", "--epochs", "2", "--batch-size", "16",
         "--val-fraction", "0.1", "--test-fraction", "0.2", "--pipeline-root", str(tmp_path / "runs")],
        cwd=REPO, env=QUIET, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "head phase on cached bottleneck features" in out and "fine-tuning the top 10 backbone layers" in out
    summary = proc.stdout[proc.stdout.index("=== imgclf run finished"):]
    assert "test accuracy :" in summary and "  export " in summary
    # The learning-curves page and the TensorBoard logs are named in the summary, where people look.
    curves = summary.split("curves        : ")[1].split("\n")[0]
    tensorboard = summary.split("TensorBoard   : ")[1].split("  ")[0]
    assert curves.endswith("learning_curves.html") and "<td>best_epoch</td>" in open(curves).read()
    assert os.path.isdir(tensorboard) and os.listdir(tensorboard)
