"""Train: fit a Keras 3 model on preprocess's TFRecords, keep the best epoch, save `.keras` + history."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components import records, reports, storage

MODEL_FILE, HISTORY_FILE, TRAIN_FILE = "model.keras", "history.json", "train.json"


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    train_accuracy: float
    seconds: float
    images_per_second: float


def train(dataset_dir: str, model_dir: str, model: str = "baseline", epochs: int = 20, batch_size: int = 32,
          learning_rate: float = 1e-3, width: int = 32, depth: int = 3, dropout: float = 0.3,
          augment: bool = True, patience: int = 5, seed: int = 42, curves_html: str = "") -> TrainResult:
    """Fit with EarlyStopping on validation loss, restoring the best epoch's weights.

    `curves_html`, if given, receives a self-contained learning-curve page (the KFP HTML artifact).
    """
    import keras

    from components import models

    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and learning_rate > 0; "
                         f"got {epochs}, {batch_size}, {learning_rate}")
    meta = records.load_metadata(dataset_dir)
    keras.utils.set_random_seed(seed)
    shape = (meta["image_size"], meta["image_size"], meta["channels"])
    net = models.build(model, shape, len(meta["classes"]), width=width, depth=depth, dropout=dropout,
                       augment=augment, seed=seed)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    train_ds = records.make_dataset(dataset_dir, meta, "train", batch_size, shuffle=True, seed=seed)
    has_val = meta["splits"]["validation"]["count"] > 0
    val_ds = records.make_dataset(dataset_dir, meta, "validation", batch_size) if has_val else None
    monitor = "val_loss" if has_val else "loss"
    print(f"train: {model} on {meta['splits']['train']['count']} images {shape}, "
          f"{len(meta['classes'])} classes, {net.count_params():,} parameters, "
          f"backend {keras.backend.backend()}", flush=True)
    stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True,
                                         verbose=1)
    start = time.perf_counter()
    # shuffle=False: the tf.data pipeline already reshuffles every epoch.
    hist = net.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[stop], verbose=2, shuffle=False)
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    losses = history[monitor]
    best = min(range(len(losses)), key=losses.__getitem__)
    result = TrainResult(
        epochs_run=len(losses), best_epoch=best + 1, best_val_loss=losses[best],
        best_val_accuracy=history.get("val_accuracy", history["accuracy"])[best],
        train_accuracy=history["accuracy"][best], seconds=round(seconds, 2),
        images_per_second=round(meta["splits"]["train"]["count"] * len(losses) / seconds, 1))
    with storage.atomic_dir(model_dir) as out:
        net.save(out / MODEL_FILE)
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        (out / TRAIN_FILE).write_text(json.dumps({
            "model": model, "classes": meta["classes"], "image_size": meta["image_size"],
            "channels": meta["channels"], "color_mode": meta["color_mode"],
            "data_fingerprint": meta["data_fingerprint"], "fingerprint": meta["fingerprint"],
            "params": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                       "width": width, "depth": depth, "dropout": dropout, "augment": augment,
                       "patience": patience, "seed": seed},
            "result": asdict(result)}, indent=1))
    if curves_html:
        storage.atomic_write_text(curves_html, reports.page(f"Training: {model}", [
            ("Learning curves", reports.img(reports.fig_to_data_uri(reports.learning_curves(history)))),
            ("Summary", reports.table(["", "value"], [[k, v] for k, v in asdict(result).items()]))]))
    print(f"train: {result.epochs_run} epochs in {result.seconds:.1f}s "
          f"({result.images_per_second:.0f} images/s); best epoch {result.best_epoch}: "
          f"val_accuracy {result.best_val_accuracy:.4f}", flush=True)
    return result


def load_model(model_dir: str):
    import keras

    return keras.saving.load_model(Path(model_dir) / MODEL_FILE)


def load_train_info(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / TRAIN_FILE).read_text())


def load_history(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / HISTORY_FILE).read_text())
