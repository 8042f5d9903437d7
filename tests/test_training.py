"""The train step beyond the baseline: transfer families, a weights file, fine-tuning, resume after a kill,
several replicas, the JAX backend, class weights and throughput metrics. Real images throughout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from imgclf.components.contracts import RecordsMetadata, TrainedModel, load_history
from imgclf.components.lib.layers import load_model
from imgclf.components.train import accelerate, models
from imgclf.components.train.step import class_weights, train
from tests.conftest import REPO, preprocessed

QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """600 real Fashion-MNIST images (10 classes) preprocessed at 32 px grey."""
    return preprocessed(tmp_path_factory.mktemp("records"), 60)


def real_batch(records_dir: Path, n: int = 8):
    from imgclf.components.lib import records as rec

    meta = RecordsMetadata.load(str(records_dir))
    x, y = next(iter(rec.make_dataset(str(records_dir), meta, "train", n)))
    return np.asarray(x, "float32"), keras.utils.to_categorical(np.asarray(y), 10)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_every_family_builds_and_trains_a_step(family, records):
    x, y = real_batch(records)
    net = models.build(family, (32, 32, 1), 10, weights=None, seed=0)
    assert net.get_layer("preprocess_input").family == family
    assert models.backbone(net).trainable  # no pretrained weights: the whole network learns
    if 32 < models.FAMILIES[family].min_size:
        assert net.get_layer("upsize").output.shape[1] == models.FAMILIES[family].min_size
    net.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    before = [w.copy() for w in net.get_weights()]
    loss = float(net.train_on_batch(x, y))
    assert np.isfinite(loss)
    assert sum(not np.array_equal(a, b) for a, b in zip(before, net.get_weights())) > 0
    out = np.asarray(net(x, training=False))
    assert out.shape == (8, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-4)


def test_family_preprocess_is_the_familys_own(tmp_path):
    """The layer applies keras.applications' preprocess_input and survives a save/load round trip."""
    x = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype("float32")
    for family, fn in [("vgg16", keras.applications.vgg16.preprocess_input),
                       ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input)]:
        layer = models.FamilyPreprocess(family)
        np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(fn(x.copy())), rtol=1e-5)
    net = models.build("vgg16", (32, 32, 3), 3, weights=None)
    net.save(tmp_path / "m.keras")
    again = load_model_file(tmp_path / "m.keras")
    xs = x[:, :32, :32]
    np.testing.assert_allclose(np.asarray(again(xs, training=False)), np.asarray(net(xs, training=False)), rtol=1e-5)


def load_model_file(path):
    return keras.saving.load_model(path)


@pytest.mark.slow
def test_pretrained_weights_file_frozen_base_then_fine_tuning(records, tmp_path, bucket):
    """Pretrain a small backbone on the sample, ship its weights through a bucket, load them as a frozen
    base, then fine-tune the top layers with BatchNormalization frozen."""
    import tensorflow as tf

    from imgclf.components.lib import records as rec
    from imgclf.components.lib import storage

    # Pretraining as a user would: the backbone from scratch on the sample. MobileNetV2's BatchNormalization
    # momentum (0.999) needs thousands of steps before its statistics mean anything; 0.9 needs a few dozen.
    meta = RecordsMetadata.load(str(records))
    pre = models.build("mobilenet_v2", (32, 32, 1), 10, weights=None, seed=0)
    for layer in models.backbone(pre).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    pre.compile(keras.optimizers.Adam(2e-3), "categorical_crossentropy", metrics=["accuracy"])
    hot = lambda x, y: (x, tf.one_hot(y, 10))  # noqa: E731
    fit = pre.fit(rec.make_dataset(str(records), meta, "train", 32, shuffle=True).map(hot), epochs=6, verbose=0,
                  shuffle=False,
                  validation_data=rec.make_dataset(str(records), meta, "validation", 32).map(hot))
    base = models.backbone(pre)
    base.save_weights(tmp_path / "base.weights.h5")
    s3, _ = bucket
    storage.copy_file(str(tmp_path / "base.weights.h5"), f"{s3}/weights/base.weights.h5")
    shipped = [w.copy() for w in base.get_weights()]

    r = train(str(records), str(tmp_path / "ft"), architecture="mobilenet_v2", weights=f"{s3}/weights/base.weights.h5",
              epochs=3, fine_tune_layers=30, fine_tune_epochs=2, batch_size=32, learning_rate=2e-3, patience=5,
              seed=3)
    info, hist = TrainedModel.load(str(tmp_path / "ft")), load_history(str(tmp_path / "ft"))
    assert r.epochs_run == len(hist["loss"]) == 5  # 3 frozen + 2 fine-tuning
    # Cosine decay to 1 % within each phase (rates as at the end of each epoch); phase 2 starts at lr x 0.1.
    assert hist["learning_rate"][2] == pytest.approx(2e-3 * 0.01, rel=1e-3)
    assert hist["learning_rate"][3] == pytest.approx(2e-4 * (0.01 + 0.99 * 0.5), rel=1e-3)
    tuned = models.backbone(load_model(str(tmp_path / "ft")))
    changed = [not np.array_equal(a, b) for a, b in zip(shipped, tuned.get_weights())]
    bn = {id(v) for layer in tuned.layers if isinstance(layer, keras.layers.BatchNormalization)
          for v in layer.weights}
    is_bn = [id(v) in bn for v in tuned.weights]
    assert not any(c for c, b in zip(changed, is_bn) if b), "BatchNormalization weights or statistics moved"
    n = len(changed)
    top = set(range(n - 60, n))  # the last 30 layers hold at most 60 weight tensors
    assert not any(c for i, c in enumerate(changed) if i not in top), "layers below the top 30 moved"
    # The saved model holds the best epoch's weights. Only when that epoch is a fine-tuning one must the
    # top layers differ from the shipped backbone; a phase-1 best keeps the frozen base as shipped.
    if r.best_epoch > 3:
        assert any(changed[i] for i in top), "fine-tuning changed nothing in the top layers"
    else:
        assert not any(changed), "the best epoch was a frozen-base one, yet the backbone moved"
    assert info.params["weights"].endswith("base.weights.h5")
    # The pretrained features carry: the frozen-base head learns well past chance (0.1).
    assert max(fit.history["val_accuracy"]) > 0.3
    assert max(hist["val_accuracy"][:3]) > 0.3, hist["val_accuracy"]


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        tmp_path / "vgg.weights.h5")
    with pytest.raises(ValueError, match=r"vgg\.weights\.h5 does not fit mobilenet_v2"):
        models.build("mobilenet_v2", (32, 32, 3), 3, weights=str(tmp_path / "vgg.weights.h5"))
    with pytest.raises(ValueError, match="baseline trains from scratch"):
        models.build("baseline", (32, 32, 3), 3, weights="imagenet")


def _train_cmd(records_dir, out, backup, *extra):
    return [sys.executable, "-m", "imgclf.components", "train", "--dataset-dir", str(records_dir), "--model-dir", str(out),
            "--epochs", "8", "--patience", "8", "--batch-size", "16", "--width", "48", "--depth", "3",
            "--backup-uri", backup, "--backup-seconds", "0", *extra]


@pytest.mark.slow
def test_killed_training_resumes_from_last_epoch(records, tmp_path, bucket):
    """SIGKILL mid-run, start again with the same backup location (what a KFP retry does): it continues
    from the last saved epoch, the learning-rate schedule and history are continuous, and the model is
    as good as an uninterrupted run's."""
    from imgclf.components.lib import storage

    s3, _ = bucket
    backup = f"{s3}/runs/train/model.backup"
    env = {**QUIET, **{k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "IMGCLF_"))}}
    proc = subprocess.Popen(_train_cmd(records, tmp_path / "m", backup), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if storage.exists(f"{backup}/state.json") and \
                json.loads(storage.read_bytes(f"{backup}/state.json"))["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(storage.read_bytes(f"{backup}/state.json"))["epoch"]
    assert 3 <= saved < 8 and not (tmp_path / "m").exists()

    again = subprocess.run(_train_cmd(records, tmp_path / "m", backup), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from epoch {saved} (phase 1)" in again.stdout
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["resumed_from_epoch"] == saved and resumed["epochs_run"] == 8
    assert not storage.exists(f"{backup}/state.json")  # cleared after success

    whole = train(str(records), str(tmp_path / "whole"), epochs=8, patience=8, batch_size=16, width=48, depth=3)
    h_resumed, h_whole = load_history(str(tmp_path / "m")), load_history(str(tmp_path / "whole"))
    assert len(h_resumed["loss"]) == 8
    # The optimizer's step counter was restored: the cosine schedule continues exactly.
    np.testing.assert_allclose(h_resumed["learning_rate"], h_whole["learning_rate"], rtol=1e-5)
    assert resumed["best_val_accuracy"] >= whole.best_val_accuracy - 0.08, (resumed, whole)


@pytest.mark.slow
def test_two_replicas_with_the_global_batch_scaled(records, tmp_path):
    """MirroredStrategy over two logical CPUs exercises the multi-device path a multi-GPU node takes."""
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from imgclf.components.train.step import train
        r = train({str(records)!r}, {str(tmp_path / "m")!r}, epochs=2, batch_size=16, width=8, depth=2,
                  distribute="mirrored")
        print("REPLICAS", r.replicas)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=QUIET, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REPLICAS 2" in proc.stdout and "replicas 2" in proc.stdout
    hw = TrainedModel.load(str(tmp_path / "m")).hardware
    assert hw["replicas"] == 2 and hw["global_batch"] == 32


@pytest.mark.slow
def test_train_on_jax_backend_then_serve_with_tensorflow(records, tmp_path):
    """Keras 3 only in the model and training code: the step trains under KERAS_BACKEND=jax, and the saved
    model evaluates and exports under TensorFlow."""
    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.export.step import export

    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.components", "train", "--dataset-dir", str(records), "--model-dir",
         str(tmp_path / "m"), "--epochs", "3", "--batch-size", "32", "--width", "16", "--depth", "2",
         "--label-smoothing", "0.1", "--lr-schedule", "plateau"],
        env={**QUIET, "KERAS_BACKEND": "jax"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = TrainedModel.load(str(tmp_path / "m"))
    assert info.hardware["backend"] == "jax" and "backend jax" in proc.stdout
    ev = evaluate(str(records), str(tmp_path / "m"), str(tmp_path / "pred"))
    assert ev.metrics["accuracy"] > 0.3  # 10 classes: well above chance after 3 epochs
    ex = export(str(tmp_path / "m"), str(records), str(tmp_path / "pred"), str(tmp_path / "sm"))
    assert ex.checked_images == ev.metrics["test_images"]


@pytest.mark.unit
def test_class_weights():
    classes = ["a", "b", "c"]
    w = class_weights("auto", classes, {"a": 100, "b": 50, "c": 10})
    assert w == pytest.approx({0: 160 / 300, 1: 160 / 150, 2: 160 / 30}, rel=1e-3)
    # Weighted counts are equal: every class weighs the same in the loss.
    assert 100 * w[0] == pytest.approx(10 * w[2], rel=1e-3)
    assert class_weights("auto", classes, {"a": 5, "b": 5, "c": 5}) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert class_weights("none", classes, {"a": 5}) is None
    assert class_weights("c=4, a=0.5", classes, {}) == {0: 0.5, 1: 1.0, 2: 4.0}
    with pytest.raises(ValueError, match="'d=2' is not name=weight"):
        class_weights("d=2", classes, {})


@pytest.mark.unit
def test_precision_and_devices_are_chosen_from_the_hardware(monkeypatch, tmp_path):
    native, plain = {"fma", "avx512f", "avx512_bf16"}, {"fma", "avx2", "avx512f"}
    assert accelerate.choose_precision("auto", ["cpu:0"], flags=plain) == "float32"
    assert accelerate.choose_precision("auto", ["cpu:0"], flags=native) == "mixed_bfloat16"
    assert accelerate.choose_precision("auto", ["cpu:0"], flags={"amx_bf16", "amx_tile"}) == "mixed_bfloat16"
    assert accelerate.choose_precision("auto", ["cpu:0"], "jax", flags=native) == "float32"  # XLA CPU emulates it
    assert accelerate.choose_precision("auto", ["cpu:0", "gpu:0"], flags=native) == "mixed_float16"
    assert accelerate.choose_precision("float32", ["cpu:0"], flags=native) == "float32"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # without oneDNN, TensorFlow emulates bfloat16 too
    assert accelerate.choose_precision("auto", ["cpu:0"], flags=native) == "float32"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert accelerate.choose_precision("auto", ["cpu:0"], flags=native) == "mixed_bfloat16"
    # This machine's own flags are read from /proc/cpuinfo's first "flags" line.
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 sse\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert accelerate.cpu_flags(str(info)) == {"fpu", "avx512_bf16", "sse"}
    assert accelerate.cpu_flags("/nonexistent/cpuinfo") == set()
    assert accelerate.choose_precision("mixed_bfloat16", ["cpu:0"]) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        accelerate.choose_precision("fp8", ["cpu:0"])
    with accelerate.setup("mixed_bfloat16") as hw:
        assert keras.config.dtype_policy().name == "mixed_bfloat16" and hw.replicas == 1
        net = models.build("baseline", (28, 28, 1), 3, width=8, depth=2)
        assert net.layers[-1].dtype_policy.compute_dtype == "float32"  # the softmax stays float32
        assert net.get_layer(index=3).compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # restored afterwards


@pytest.mark.slow
def test_mixed_precision_training_saves_a_float32_model_with_the_trained_weights(records, tmp_path):
    """Trained under mixed bfloat16 (what auto picks on a CPU with native bfloat16), the saved model computes
    in float32 throughout, holds the trained weights (it scores on the validation split what training saw
    at its best epoch, within bfloat16's rounding), and train.json records the policy it trained under."""
    from imgclf.components.evaluate.step import evaluate

    r = train(str(records), str(tmp_path / "m"), epochs=4, batch_size=32, width=8, depth=2, patience=4,
              precision="mixed_bfloat16", seed=5)
    info = TrainedModel.load(str(tmp_path / "m"))
    assert info.hardware["precision"] == "mixed_bfloat16"
    net = load_model(str(tmp_path / "m"))
    assert {layer.compute_dtype for layer in net.layers} == {"float32"}
    assert {w.dtype for w in net.weights} == {"float32"}
    meta = RecordsMetadata.load(str(records))
    from imgclf.components.lib import records as rec

    xs, ys = zip(*((np.asarray(x), np.asarray(y)) for x, y in rec.make_dataset(str(records), meta, "validation", 64)))
    accuracy = float(np.mean(np.argmax(net.predict(np.concatenate(xs), verbose=0), 1) == np.concatenate(ys)))
    assert r.best_val_accuracy > 0.3  # trained: well above chance (0.1)
    assert abs(accuracy - r.best_val_accuracy) <= 0.05, (accuracy, r.best_val_accuracy)
    assert evaluate(str(records), str(tmp_path / "m"), str(tmp_path / "pred")).metrics["accuracy"] > 0.3


@pytest.mark.slow
def test_throughput_is_measured_per_epoch(records, tmp_path):
    r = train(str(records), str(tmp_path / "m"), epochs=3, batch_size=32, width=8, depth=2,
              tensorboard_uri=str(tmp_path / "tb"))
    hist = load_history(str(tmp_path / "m"))
    assert len(hist["images_per_second"]) == len(hist["epoch_seconds"]) == len(hist["input_wait_share"]) == 3
    assert all(0.0 <= s <= 1.0 for s in hist["input_wait_share"])
    assert r.images_per_second > 0 and 0.0 <= r.input_wait_share <= 1.0
    # Time in no epoch: never negative, and with the epochs never more than the whole fit.
    assert len(hist["seconds_before_epoch"]) == 3 and min(hist["seconds_before_epoch"]) >= 0
    assert sum(hist["seconds_before_epoch"]) + sum(hist["epoch_seconds"]) <= r.seconds + 0.01
    # 420 images per epoch: the rate and the epoch time agree.
    assert hist["images_per_second"][1] * hist["epoch_seconds"][1] >= 420 * 0.9
    assert list((tmp_path / "m" / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))  # mirrored live to the given location


@pytest.mark.slow
def test_tensorboard_gets_every_epochs_scalars(records, tmp_path):
    """Epoch summaries for train and validation, as Keras' TensorBoard writes them (without its idle
    per-batch calls)."""
    import tensorflow as tf

    train(str(records), str(tmp_path / "m"), epochs=2, batch_size=32, width=8, depth=2, patience=2)
    steps: dict[str, set] = {}
    for events in (tmp_path / "m" / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                steps.setdefault(f"{events.parent.name}/{value.tag}", set()).add(event.step)
    assert steps["train/epoch_loss"] == steps["validation/epoch_loss"] == {0, 1}
    assert steps["train/epoch_accuracy"] == {0, 1}
    assert not [t for t in steps if "/batch_" in t]


@pytest.mark.unit
def test_backups_are_spaced_and_the_best_weights_survive_them(tmp_path, monkeypatch):
    """Generated epoch lengths, intervals and losses: a backup is taken exactly at the first epoch ending
    `backup_seconds` after the previous one (every epoch at 0), state.json always names a checkpoint and
    best weights of the same backup, the in-memory best is the best epoch's, and a restore reads back
    the last backup's best."""
    from imgclf.components.train import checkpoint

    rng = np.random.default_rng(7)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    clock = [0.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    for case in range(12):
        every = float(rng.choice([0, 0.5, 2, 5, 30]))
        lengths, losses = rng.uniform(0.2, 3, 8), rng.uniform(0, 1, 8)
        uri = str(tmp_path / f"case{case}")
        clock[0] = 0.0
        backup = checkpoint.Backup(uri, every)
        last, best, best_weights, expected = 0.0, None, None, []
        for epoch, (length, loss) in enumerate(zip(lengths, losses), start=1):
            clock[0] += length
            net.set_weights([rng.normal(size=w.shape).astype("float32") for w in net.get_weights()])
            improved = best is None or loss < best
            if improved:
                best, best_weights = loss, [w.copy() for w in net.get_weights()]
            took = backup.epoch_end(net, {"epoch": epoch, "best": best}, improved)
            due = clock[0] - last >= every
            assert took == due, (case, epoch, every)
            if due:
                last = clock[0]
                expected.append((epoch, [w.copy() for w in best_weights]))
            for got, want in zip(backup.best, best_weights):
                np.testing.assert_array_equal(got, want)
        if not expected:
            assert not (tmp_path / f"case{case}" / checkpoint.STATE).exists()
            continue
        again = checkpoint.Backup(uri, every)
        state = again.restore()
        epoch, weights = expected[-1]
        assert state["epoch"] == epoch and state["checkpoint"] == f"checkpoint-{epoch:04d}.keras"
        assert sorted(p.name for p in (tmp_path / f"case{case}").iterdir()) == sorted(
            [state["checkpoint"], checkpoint.BEST, checkpoint.STATE]), "older checkpoints are removed"
        other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        again.load_best(other)
        for got, want in zip(other.get_weights(), weights):
            np.testing.assert_array_equal(got, want)


def test_train_input_runs_without_the_autotuning_thread(records):
    """Deleting an iterator with autotuning joins its model thread, which may be asleep for up to 60 s
    (seen as 9-59 s after the last epoch of pipeline runs): every input the train step fits on is built
    with autotuning off, and still delivers one-hot batches."""
    from imgclf.components.lib import records as rec
    from imgclf.components.train.step import _input
    from imgclf.components.train.throughput import InputStamps

    meta = RecordsMetadata.load(str(records))
    for split, stamps, repeat in (("train", InputStamps(), True), ("validation", None, False)):
        ds = _input(rec.make_dataset(str(records), meta, split, 16, shuffle=repeat, prefetch=False, repeat=repeat),
                    10, stamps)
        assert ds.options().autotune.enabled is False
        x, y = next(iter(ds))
        assert x.shape[1:] == (32, 32, 1) and y.shape[1:] == (10,)
        np.testing.assert_array_equal(np.asarray(y).sum(1), 1.0)


GAP_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import keras, numpy as np
    from imgclf.components.train import throughput

    class Pause(keras.callbacks.Callback):  # runs after Throughput: its time is in no epoch
        def __init__(self, seconds):
            super().__init__(); self.seconds = seconds
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(self.seconds)

    x, y = np.zeros((32, 4), "float32"), keras.utils.to_categorical(np.arange(32) % 2, 2)
    for case in sys.argv[1:]:
        watch, gap = case.split(":")
        os.environ[throughput.WATCH_ENV] = watch
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        net.compile("adam", "categorical_crossentropy")
        print(f"=== case {case}", file=sys.stderr, flush=True)
        try:
            net.fit(x, y, epochs=2, batch_size=16, verbose=0,
                    callbacks=[throughput.Throughput(throughput.InputStamps(), 32), Pause(float(gap))])
        finally:
            throughput.end_gap()
        time.sleep(float(watch) + 0.5)  # a watch left armed would fire here
    print("=== end", file=sys.stderr, flush=True)
""")


@pytest.mark.parametrize("cases", [["0.3:1.2", "2.5:0", "0:1.2"], ["4:0.1", "0.2:0.8", "1.5:0"]])
def test_a_long_gap_in_fit_dumps_every_threads_stack_and_nothing_else_does(cases):
    """Generated watches and gaps in one process: a gap longer than the watch dumps the stacks once per gap
    (naming the line that waits), shorter gaps, a watch of 0 and the time after fit returns dump nothing."""
    proc = subprocess.run([sys.executable, "-c", GAP_SCRIPT, *cases], cwd=REPO, env=QUIET, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = proc.stderr.split("=== case ")[1:]
    assert len(parts) == len(cases) and parts[-1].rstrip().endswith("=== end")
    for case, text in zip(cases, parts):
        watch, gap = map(float, case.split(":"))
        dumps = text.count("Timeout (")
        # Two epochs, so two gaps (between them and after the last), each dumped at most once.
        assert dumps == (2 if 0 < watch < gap else 0), (case, text[-2000:])
        if dumps:
            assert "in on_epoch_end" in text and "in fit" in text


def test_a_bad_fit_watch_is_refused_before_any_work(records, tmp_path, monkeypatch):
    from imgclf.components.train import throughput

    for bad in ("ten", "5s", "1e"):
        monkeypatch.setenv(throughput.WATCH_ENV, bad)
        with pytest.raises(ValueError, match=throughput.WATCH_ENV):
            train(str(records), str(tmp_path / "m"), epochs=1, batch_size=32, width=8, depth=2)
        assert not (tmp_path / "m").exists()
    for good, expected in (("0", 0.0), ("-1", 0.0), ("2.5", 2.5), ("", 10.0)):
        monkeypatch.setenv(throughput.WATCH_ENV, good)
        assert throughput.watch_seconds() == expected
