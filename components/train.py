"""Train: fit a Keras 3 model on preprocess's TFRecords, keep the best epoch, save `.keras` + history.

Transfer-learning families train in two phases, as in the classic tutorials: a new head on the frozen
pretrained backbone, then (with `fine_tune_layers`) the backbone's top layers at a lower learning
rate. The training state goes to `backup_uri` after every epoch, so a retried task resumes.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components import records, reports, storage

MODEL_FILE, HISTORY_FILE, TRAIN_FILE, TENSORBOARD_DIR = "model.keras", "history.json", "train.json", "tensorboard"
LR_SCHEDULES = ("cosine", "constant", "plateau")


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    train_accuracy: float
    seconds: float
    images_per_second: float
    first_epoch_images_per_second: float
    epoch_seconds: float
    input_wait_share: float
    replicas: int
    resumed_from_epoch: int


def class_weights(spec: str, classes: list[str], counts: dict[str, int]) -> dict[int, float] | None:
    """auto: weight each class by total / (classes x its count), so every class weighs the same in the
    loss (1.0 everywhere on balanced data); none; or explicit "name=weight,..." (others 1.0)."""
    spec = spec.strip()
    if spec == "none":
        return None
    if spec == "auto":
        total = sum(counts.values())
        return {i: round(total / (len(classes) * max(1, counts.get(c, 0))), 4) for i, c in enumerate(classes)}
    weights = {i: 1.0 for i in range(len(classes))}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in classes:
            raise ValueError(f"class_weight: {item!r} is not name=weight for a class of {classes}")
        weights[classes.index(name)] = float(value)
    return weights


def _schedule(kind: str, learning_rate: float, steps: int):
    import keras

    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps), alpha=0.01)
    return learning_rate


def _compile(net, lr, kind: str, steps: int, label_smoothing: float, jit_compile):
    import keras

    net.compile(optimizer=keras.optimizers.Adam(_schedule(kind, lr, steps)),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                metrics=["accuracy"], jit_compile=jit_compile)


def _local(uri: str, tmp: str) -> str:
    """TensorFlow and Keras read local files only: stage a bucket object first."""
    if storage.is_local(uri):
        return storage.local_path(uri)
    dest = str(Path(tmp) / Path(uri.rstrip("/")).name)
    storage.download_file(uri, dest)
    return dest


def warm_start_from(net, source: str, tmp: str) -> int:
    """Copy weights layer by layer (same name, same shapes) from an earlier model: a champion with the
    same classes gives everything; with other classes all but the head."""
    import keras

    from components import models  # noqa: F401 - registers the custom layers the file may hold

    if not source.endswith(".keras"):
        source = storage.join(source, MODEL_FILE)
    old = keras.saving.load_model(_local(source, tmp), compile=False)
    copied = 0
    for layer in net.layers:
        try:
            match = old.get_layer(layer.name)
        except ValueError:
            continue
        w_old, w_new = match.get_weights(), layer.get_weights()
        if w_new and len(w_old) == len(w_new) and all(a.shape == b.shape for a, b in zip(w_old, w_new)):
            layer.set_weights(w_old)
            copied += 1
    if not copied:
        raise ValueError(f"warm_start {source}: no layer of that model fits this one ({net.name})")
    return copied


class _SyncDir:
    """Mirror a local folder (TensorBoard logs) to a store after each epoch, so runs can be watched live."""

    def __init__(self, local: Path, uri: str):
        self.local, self.uri, self.sizes = local, uri, {}

    def __call__(self, *_):
        for f in self.local.rglob("*"):
            if f.is_file() and self.sizes.get(f) != f.stat().st_size:
                storage.copy_file(str(f), storage.join(self.uri, f.relative_to(self.local).as_posix()))
                self.sizes[f] = f.stat().st_size


def train(dataset_dir: str, model_dir: str, model: str = "baseline", epochs: int = 20, batch_size: int = 32,
          learning_rate: float = 1e-3, width: int = 32, depth: int = 3, dropout: float = 0.3,
          augment: bool = True, patience: int = 5, seed: int = 42, weights: str = "auto",
          fine_tune_layers: int = 0, fine_tune_epochs: int = 10, fine_tune_lr_factor: float = 0.1,
          label_smoothing: float = 0.0, class_weight: str = "auto", lr_schedule: str = "cosine",
          precision: str = "auto", distribute: str = "auto", jit_compile: str = "auto",
          warm_start: str = "", backup_uri: str = "", tensorboard_uri: str = "",
          curves_html: str = "") -> TrainResult:
    """Fit with EarlyStopping on validation loss and keep the best epoch's weights.

    `batch_size` is per device: with N replicas the global batch is N x batch_size. `weights`: auto
    (ImageNet for the transfer families, none for baseline), imagenet, none, or a weights file of the
    backbone without its top, by path or bucket URI. `curves_html`, if given, receives a learning-curve
    page (the KFP HTML artifact).
    """
    import keras
    import numpy as np

    from components import accelerate, checkpoint, models, throughput

    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and learning_rate > 0; "
                         f"got {epochs}, {batch_size}, {learning_rate}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if model not in models.MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(models.MODELS)}")
    meta = records.load_metadata(dataset_dir)
    classes, n_train = meta["classes"], meta["splits"]["train"]["count"]
    keras.utils.set_random_seed(seed)
    shape = (meta["image_size"], meta["image_size"], meta["channels"])
    tmp = tempfile.mkdtemp(prefix="imgclf-train-")
    backup = checkpoint.Backup(backup_uri)
    resume = backup.restore()
    if weights == "auto":
        weights = "imagenet" if models.is_transfer(model) else "none"
    weights_arg = None if weights == "none" else weights if weights == "imagenet" else _local(weights, tmp)
    fine_tune = models.is_transfer(model) and weights_arg is not None and fine_tune_layers > 0
    cw = class_weights(class_weight, classes, meta["splits"]["train"]["per_class"])
    fit_cw = cw if cw and len(set(cw.values())) > 1 else None  # all equal: skip the per-batch lookup

    with accelerate.setup(precision, distribute, jit_compile) as hw:
        global_batch = batch_size * hw.replicas
        steps = -(-n_train // global_batch)
        stamps = throughput.InputStamps()
        train_ds = _input(records.make_dataset(dataset_dir, meta, "train", global_batch, shuffle=True, seed=seed,
                                               prefetch=False, repeat=True), len(classes), stamps)
        has_val = meta["splits"]["validation"]["count"] > 0
        val_ds = _input(records.make_dataset(dataset_dir, meta, "validation", global_batch, prefetch=False),
                        len(classes)) if has_val else None
        monitor = "val_loss" if has_val else "loss"
        if resume:
            net = keras.saving.load_model(backup.checkpoint_file)
            print(f"train: resuming from epoch {resume['epoch']} (phase {resume['phase']}) saved at "
                  f"{backup_uri}", flush=True)
        else:
            net = models.build(model, shape, len(classes), weights=weights_arg, width=width, depth=depth,
                               dropout=dropout, augment=augment, seed=seed)
            if warm_start:
                print(f"train: warm start from {warm_start}: {warm_start_from(net, warm_start, tmp)} layers "
                      "copied", flush=True)
            _compile(net, learning_rate, lr_schedule, epochs * steps, label_smoothing, hw.jit_compile)
        print(f"train: {model} on {n_train} images {shape}, {len(classes)} classes, {net.count_params():,} "
              f"parameters ({sum(int(np.prod(w.shape)) for w in net.trainable_weights):,} trainable), weights {weights}; "
              f"{hw.describe()}; global batch {global_batch}", flush=True)
        state = resume or {"phase": 1, "epoch": 0, "history": {}, "best": None, "wait": 0, "best_epoch": 0,
                           "phase1_epochs": None}
        history = state["history"]
        tb_local = Path(tmp) / TENSORBOARD_DIR
        extra = _extra_callbacks(tb_local, tensorboard_uri, lr_schedule, monitor, patience)
        start = time.perf_counter()

        def fit(phase: int, total_epochs: int, initial_epoch: int, resumed: dict | None):
            stopper = checkpoint.ResumableEarlyStopping(monitor, patience, resumed)
            saver = checkpoint.Checkpoint(backup, phase, history, monitor, state["best"], stopper,
                                          {"phase1_epochs": state.get("phase1_epochs")})
            callbacks = [throughput.Throughput(stamps, n_train), stopper, saver, *extra]
            # shuffle=False: the tf.data pipeline already reshuffles every epoch.
            net.fit(train_ds, validation_data=val_ds, epochs=total_epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=steps, class_weight=fit_cw, callbacks=callbacks, verbose=2, shuffle=False)
            state["best"] = saver.best

        if state["phase"] == 1:
            fit(1, epochs, state["epoch"], resume)
            state["phase1_epochs"] = len(history.get("loss", []))
        if fine_tune:
            phase1 = state["phase1_epochs"]
            resumed_in_phase2 = bool(resume and resume["phase"] == 2 and resume["epoch"] > phase1)
            if not resumed_in_phase2:
                net.load_weights(backup.best_file)
                opened = models.unfreeze_top(net, fine_tune_layers)
                _compile(net, learning_rate * fine_tune_lr_factor, lr_schedule, fine_tune_epochs * steps,
                         label_smoothing, hw.jit_compile)
                print(f"train: fine-tuning the top {fine_tune_layers} backbone layers ({opened} trainable, "
                      f"BatchNormalization frozen) at learning rate {learning_rate * fine_tune_lr_factor:g}",
                      flush=True)
            fit(2, phase1 + fine_tune_epochs, resume["epoch"] if resumed_in_phase2 else phase1,
                resume if resumed_in_phase2 else None)
        seconds = time.perf_counter() - start
        net.load_weights(backup.best_file)

    losses = history[monitor]
    best = min(range(len(losses)), key=losses.__getitem__)
    speed = throughput.summary(history)
    result = TrainResult(
        epochs_run=len(losses), best_epoch=best + 1, best_val_loss=losses[best],
        best_val_accuracy=history.get("val_accuracy", history["accuracy"])[best],
        train_accuracy=history["accuracy"][best], seconds=round(seconds, 2),
        images_per_second=speed["images_per_second"],
        first_epoch_images_per_second=speed["first_epoch_images_per_second"],
        epoch_seconds=speed["epoch_seconds"], input_wait_share=speed["input_wait_share"],
        replicas=hw.replicas, resumed_from_epoch=resume["epoch"] if resume else 0)
    with storage.atomic_dir(model_dir) as out:
        net.save(out / MODEL_FILE)
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        if tb_local.exists():
            shutil.copytree(tb_local, out / TENSORBOARD_DIR)
        (out / TRAIN_FILE).write_text(json.dumps({
            "model": model, "classes": classes, "image_size": meta["image_size"],
            "channels": meta["channels"], "color_mode": meta["color_mode"],
            "data_fingerprint": meta["data_fingerprint"], "fingerprint": meta["fingerprint"],
            "params": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                       "width": width, "depth": depth, "dropout": dropout, "augment": augment,
                       "patience": patience, "seed": seed, "weights": weights, "fine_tune_layers": fine_tune_layers,
                       "fine_tune_epochs": fine_tune_epochs, "fine_tune_lr_factor": fine_tune_lr_factor,
                       "label_smoothing": label_smoothing, "class_weight": cw, "lr_schedule": lr_schedule,
                       "warm_start": warm_start},
            "hardware": {"backend": hw.backend, "devices": hw.devices, "precision": hw.precision,
                         "replicas": hw.replicas, "global_batch": global_batch, "jit_compile": str(hw.jit_compile)},
            "result": asdict(result)}, indent=1))
    backup.clear()
    shutil.rmtree(tmp, ignore_errors=True)
    if curves_html:
        storage.atomic_write_text(curves_html, reports.page(f"Training: {model}", [
            ("Learning curves", reports.img(reports.fig_to_data_uri(reports.learning_curves(history)))),
            ("Summary", reports.table(["", "value"], [[k, v] for k, v in asdict(result).items()]))]))
    print(f"train: {result.epochs_run} epochs in {result.seconds:.1f}s; steady {result.images_per_second:.0f} "
          f"images/s (first epoch {result.first_epoch_images_per_second:.0f}), input wait "
          f"{result.input_wait_share:.1%} of step time; best epoch {result.best_epoch}: "
          f"val_accuracy {result.best_val_accuracy:.4f}", flush=True)
    return result


def _input(ds, num_classes: int, stamps=None):
    """One-hot labels (label smoothing needs them), the throughput stamp, then prefetch."""
    import tensorflow as tf

    ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    if stamps is not None:
        ds = stamps.attach(ds)
    return ds.prefetch(tf.data.AUTOTUNE)


def _extra_callbacks(tb_local: Path, tensorboard_uri: str, lr_schedule: str, monitor: str, patience: int) -> list:
    import keras

    extra = []
    if lr_schedule == "plateau":
        extra.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.2, patience=max(1, patience // 2),
                                                       verbose=1))
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401 - Keras' TensorBoard writer needs both, whatever the backend
    except ImportError:
        print("train: TensorFlow/TensorBoard not installed; no TensorBoard logs", flush=True)
        return extra
    extra.append(keras.callbacks.TensorBoard(log_dir=str(tb_local), write_graph=False))
    if tensorboard_uri:
        extra.append(keras.callbacks.LambdaCallback(on_epoch_end=_SyncDir(tb_local, tensorboard_uri)))
    return extra


def load_model(model_dir: str):
    import keras

    from components import models  # noqa: F401 - registers the custom layers the model may hold

    return keras.saving.load_model(Path(model_dir) / MODEL_FILE)


def load_train_info(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / TRAIN_FILE).read_text())


def load_history(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / HISTORY_FILE).read_text())
