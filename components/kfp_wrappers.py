"""Thin KFP v2 components: unpack artifacts, call the step function, fill outputs. No step logic here.

Each body imports its step inside the function because KFP ships only the function's source to the
container; the image (or, under kfp.local's SubprocessRunner, this virtualenv) provides the package.
No `from __future__ import annotations` here: KFP reads the real annotation objects.
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import __version__

# One setting names the image every task runs in; point it at your registry for KFP/Vertex.
IMAGE = os.environ.get("IMGCLF_IMAGE", f"imgclf:{__version__}")
component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def ingest(source: str, dataset: Output[Dataset], metrics: Output[Metrics], report: Output[HTML],
           base_uri: str = "", max_pixels: int = 40_000_000, animated: str = "first_frame",
           min_images_per_class: int = 10, max_imbalance: float = 100.0, max_quarantined_share: float = 0.5):
    """List and decode-check every image of a labelled folder, bucket, archive or table; write the manifest."""
    from components.ingest import ingest as run

    s = run(source, dataset.path, base_uri=base_uri, max_pixels=max_pixels, animated=animated,
            min_images_per_class=min_images_per_class, max_imbalance=max_imbalance,
            max_quarantined_share=max_quarantined_share, report_html=report.path)
    dataset.metadata.update({"classes": s.classes, "images": s.images, "layout": s.layout})
    metrics.log_metric("images", s.images)
    metrics.log_metric("classes", len(s.classes))
    metrics.log_metric("quarantined", s.quarantined)
    for reason, n in s.quarantine_reasons.items():
        metrics.log_metric(f"quarantined: {reason}", n)
    for cls, n in s.per_class.items():
        metrics.log_metric(f"images: {cls}", n)


@component
def preprocess(dataset: Input[Dataset], records: Output[Dataset], metrics: Output[Metrics], image_size: int = 160,
               color_mode: str = "rgb", val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42,
               near_duplicate_bits: int = 10, drop_near_duplicates: bool = False):
    """Seeded stratified split, decode + resize, sharded TFRecords with metadata."""
    from components.preprocess import preprocess as run

    s = run(dataset.path, records.path, image_size=image_size, color_mode=color_mode,
            val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
            near_duplicate_bits=near_duplicate_bits, drop_near_duplicates=drop_near_duplicates)
    records.metadata.update({"counts": s.counts, "fingerprint": s.fingerprint,
                             "data_fingerprint": s.data_fingerprint, "classes": s.classes})
    for split, n in s.counts.items():
        metrics.log_metric(f"images: {split}", n)
    metrics.log_metric("quarantined", s.quarantined)
    metrics.log_metric("near-duplicates of training images", s.near_duplicates)


@component
def train(records: Input[Dataset], model: Output[Model], metrics: Output[Metrics], curves: Output[HTML],
          model_name: str = "baseline", epochs: int = 20, batch_size: int = 32, learning_rate: float = 0.001,
          width: int = 32, depth: int = 3, dropout: float = 0.3, augment: bool = True, patience: int = 5,
          seed: int = 42, weights: str = "auto", fine_tune_layers: int = 0, fine_tune_epochs: int = 10,
          fine_tune_lr_factor: float = 0.1, label_smoothing: float = 0.0, class_weight: str = "auto",
          lr_schedule: str = "cosine", precision: str = "auto", distribute: str = "auto",
          jit_compile: str = "auto", warm_start: str = "", tensorboard_uri: str = ""):
    """Fit a Keras 3 model (baseline CNN or a transfer family), resumable after a retry; save `.keras`,
    history, TensorBoard logs and learning curves."""
    from dataclasses import asdict

    from components.train import load_history
    from components.train import train as run

    # Next to the output in the artifact store (not the local output folder, which KFP uploads only on
    # success): a retried attempt has the same output URI and finds the state there.
    backup = model.uri.rstrip("/") + ".backup"
    r = run(records.path, model.path, model=model_name, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, width=width, depth=depth, dropout=dropout, augment=augment,
            patience=patience, seed=seed, weights=weights, fine_tune_layers=fine_tune_layers,
            fine_tune_epochs=fine_tune_epochs, fine_tune_lr_factor=fine_tune_lr_factor,
            label_smoothing=label_smoothing, class_weight=class_weight, lr_schedule=lr_schedule,
            precision=precision, distribute=distribute, jit_compile=jit_compile, warm_start=warm_start,
            backup_uri=backup, tensorboard_uri=tensorboard_uri, curves_html=curves.path)
    model.metadata.update({"framework": "keras", "model": model_name, **asdict(r)})
    for k, v in asdict(r).items():
        metrics.log_metric(k, v)
    history = load_history(model.path)
    for i, (ips, secs) in enumerate(zip(history["images_per_second"], history["epoch_seconds"]), start=1):
        metrics.log_metric(f"epoch {i:02d}: images/s", round(ips, 1))
        metrics.log_metric(f"epoch {i:02d}: seconds", round(secs, 2))


@component
def evaluate(records: Input[Dataset], model: Input[Model], predictions: Output[Dataset],
             metrics: Output[Metrics], classification: Output[ClassificationMetrics],
             report: Output[HTML]) -> float:
    """Score the test split: metrics, confusion matrix, ROC, predictions and an HTML report."""
    from components.evaluate import evaluate as run

    r = run(records.path, model.path, predictions.path, report_html=report.path)
    for k, v in r.metrics.items():
        metrics.log_metric(k, v)
    for row in r.per_class:
        metrics.log_metric(f"f1: {row['class']}", row["f1"])
    classification.log_confusion_matrix(r.classes, r.confusion_matrix)
    if r.roc:
        classification.log_roc_curve(*r.roc)
    return r.metrics["accuracy"]


@component
def export(model: Input[Model], records: Input[Dataset], predictions: Input[Dataset],
           saved_model: Output[Model], export_to: str = "", tflite: bool = False):
    """Write the raw-bytes SavedModel, verify it against evaluate in a fresh process, publish it."""
    from components.export import export as run

    r = run(model.path, records.path, predictions.path, saved_model.path, export_to=export_to, tflite=tflite)
    saved_model.metadata.update({"framework": "tensorflow", "format": "SavedModel",
                                 "signature": "serving_default", "input": "image_bytes",
                                 "checked_images": r.checked_images, "published_to": r.published_to,
                                 "rest_images": r.rest_images, "warmup_requests": r.warmup_requests,
                                 "tflite_max_diff": r.tflite_max_diff})


@component
def champion(records: Input[Dataset], registry: str = "", model_name: str = "imgclf", skip_unchanged: bool = True,
             warm_start: bool = False) -> NamedTuple("Lookup", action=str, reason=str, champion_version=int,
                                                     warm_start=str):
    """Read the registry's champion; decide whether this run trains (not on the champion's own data)."""
    from collections import namedtuple

    from components.registry import lookup

    r = lookup(records.path, registry, model_name, skip_unchanged=skip_unchanged, warm_start=warm_start)
    return namedtuple("Lookup", "action reason champion_version warm_start")(
        r.action, r.reason, r.champion_version, r.warm_start)


@component
def gate(records: Input[Dataset], predictions: Input[Dataset], reasons: Output[Markdown], metrics: Output[Metrics],
         registry: str = "", model_name: str = "imgclf", min_accuracy: float = 0.0, min_macro_f1: float = 0.0,
         margin: float = 0.0, compare_metric: str = "accuracy") -> NamedTuple("Gate", decision=str, summary=str):
    """Thresholds, and the champion re-scored on this test split: publish, refuse, or no registry."""
    from collections import namedtuple

    from components.gate import gate as run

    r = run(records.path, predictions.path, registry, model_name, min_accuracy=min_accuracy,
            min_macro_f1=min_macro_f1, margin=margin, compare_metric=compare_metric, decision_md=reasons.path)
    metrics.log_metric("passed", int(r.decision != "refuse"))
    for k, v in r.challenger.items():
        metrics.log_metric(f"challenger {k}", v)
    for k in ("accuracy", "macro_f1"):
        if k in r.champion:
            metrics.log_metric(f"champion v{r.champion['version']} {k}", r.champion[k])
    return namedtuple("Gate", "decision summary")(r.decision, r.summary())


@component
def publish(saved_model: Input[Model], model: Input[Model], records: Input[Dataset], predictions: Input[Dataset],
            registry: str, model_name: str, gate_summary: str, source_run: str = "") -> int:
    """Copy the checked SavedModel into the registry as the next version and make it the champion."""
    from components.publish import publish as run

    return run(saved_model.path, model.path, records.path, predictions.path, registry, model_name,
               gate_summary=gate_summary, source_run=source_run)


@component
def not_published(summary: str) -> str:
    """The visible end of a run whose model is not published (refused by the gate, or no registry)."""
    import json

    outcome = json.loads(summary)
    print(f"not published ({outcome['decision']}):\n" + "\n".join(outcome["reasons"]), flush=True)
    return outcome["decision"]


@component
def training_skipped(reason: str, champion_version: int, note: Output[Markdown]) -> str:
    """The visible end of a run on unchanged data: why nothing was trained."""
    from components.gate import skipped

    return skipped(reason, champion_version, note.path)


@component
def predict(model: str, images: str, predictions: Output[Dataset], metrics: Output[Metrics], top_k: int = 3,
            output_format: str = "csv"):
    """Batch prediction: a folder or bucket of images in, one row per image (top-k) out."""
    import os

    from components.predict import predict as run

    os.makedirs(predictions.path, exist_ok=True)
    r = run(model, [images], output=os.path.join(predictions.path, f"predictions.{output_format}"), top_k=top_k)
    predictions.metadata.update({"format": output_format, "predicted": r.predicted, "failed": r.failed,
                                 "model": model, "images": images})
    metrics.log_metric("predicted", r.predicted)
    metrics.log_metric("failed", r.failed)
    for cls, n in r.class_counts.items():
        metrics.log_metric(f"count: {cls}", n)
