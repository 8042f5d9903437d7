"""What each KFP component does once its arguments arrive: unpack the artifacts, call the step with
its options, fill the outputs and metrics. No step logic here, and no option is named: options are
forwarded as they come (`**options`) and validated by the step's Options class.

These run in the task's process (the container, or this virtualenv under kfp.local), imported by the
generated component functions in components/kfp_glue/generate.py.
"""
from __future__ import annotations

import dataclasses


def validate(**params) -> str:
    """The pipeline's first task: every parameter checked in seconds, before any work starts."""
    from imgclf.components.lib.options import validate as check
    from imgclf.components.steps import pipeline_options

    groups = pipeline_options(params.pop("pipeline_steps"))
    check(params, *groups, pipeline_only=True)
    print(f"validate: {len(params)} parameters accepted", flush=True)
    return "ok"


def ingest(dataset, metrics, report, **options):
    from imgclf.components.ingest.step import ingest as run

    s = run(output_dir=dataset.path, report_html=report.path, **options)
    dataset.metadata.update({"classes": s.classes, "images": s.images, "layout": s.layout})
    metrics.log_metric("images", s.images)
    metrics.log_metric("classes", len(s.classes))
    metrics.log_metric("quarantined", s.quarantined)
    for reason, n in s.quarantine_reasons.items():
        metrics.log_metric(f"quarantined: {reason}", n)
    for cls, n in s.per_class.items():
        metrics.log_metric(f"images: {cls}", n)


def preprocess_plan(dataset, plan, **options) -> list:
    from imgclf.components.preprocess.shards import plan as run

    return run(dataset.path, plan.path, **options)


def preprocess_shard(dataset, plan, part, shard: int, **options):
    from imgclf.components.preprocess.shards import write_part

    p = write_part(dataset.path, plan.path, shard, part.path, **options)
    part.metadata.update({"shard": shard, "files": len(p["files"])})


def preprocess_merge(dataset, plan, parts, records, metrics, **options):
    from imgclf.components.preprocess.shards import merge

    _records_outputs(merge(dataset.path, plan.path, [p.path for p in parts], records.path, **options), records,
                     metrics)


def _records_outputs(s, records, metrics) -> None:
    records.metadata.update({"counts": s.counts, "fingerprint": s.fingerprint,
                             "data_fingerprint": s.data_fingerprint, "classes": s.classes})
    for split, n in s.counts.items():
        metrics.log_metric(f"images: {split}", n)
    metrics.log_metric("quarantined", s.quarantined)
    metrics.log_metric("near-duplicates of training images", s.near_duplicates)


def train(records, model, metrics, curves, **options):
    from imgclf.components.contracts import load_history
    from imgclf.components.train.step import train as run

    # Next to the output in the artifact store (not the local output folder, which KFP uploads only on
    # success): a retried attempt has the same output URI and finds the state there.
    backup = model.uri.rstrip("/") + ".backup"
    r = run(records.path, model.path, backup_uri=backup, curves_html=curves.path, **options)
    result = dataclasses.asdict(r)
    model.metadata.update({"framework": "keras", "architecture": options.get("architecture", ""), **result})
    for k, v in result.items():
        metrics.log_metric(k, v)
    history = load_history(model.path)
    for i, (ips, secs) in enumerate(zip(history["images_per_second"], history["epoch_seconds"]), start=1):
        metrics.log_metric(f"epoch {i:02d}: images/s", round(ips, 1))
        metrics.log_metric(f"epoch {i:02d}: seconds", round(secs, 2))


def trial(records, model, metrics, curves, trial: str, **options) -> str:
    from imgclf.components.train.trial import run_trial

    backup = model.uri.rstrip("/") + ".backup"  # as train: a retried attempt resumes from it
    r = run_trial(records.path, model.path, trial, backup_uri=backup, curves_html=curves.path, **options)
    model.metadata.update({"trial": r.index, "status": r.status, "options": r.options})
    metrics.log_metric("ok", int(r.status == "ok"))
    for k in ("val_accuracy", "val_loss"):
        if getattr(r, k) is not None:
            metrics.log_metric(k, getattr(r, k))
    return r.to_json()


def select(models, model, report, results: list, metric: str) -> str:
    from imgclf.components.sweep.select import select as run

    s = run(list(results), [m.path for m in models], model.path, metric=metric, report_html=report.path)
    model.metadata.update({"framework": "keras", "trial": s.winner.index, "options": s.winner.options,
                           "trials": len(s.trials), "failed_trials": s.failed})
    return s.winner.to_json()


def evaluate(records, model, predictions, metrics, classification, report) -> float:
    from imgclf.components.evaluate.step import evaluate as run

    r = run(records.path, model.path, predictions.path, report_html=report.path)
    for k, v in r.metrics.items():
        metrics.log_metric(k, v)
    for k, ci in r.intervals.items():
        metrics.log_metric(f"{k} 95% CI low", ci["low"])
        metrics.log_metric(f"{k} 95% CI high", ci["high"])
    for row in r.per_class:
        metrics.log_metric(f"f1: {row['class']}", row["f1"])
    classification.log_confusion_matrix(r.classes, r.confusion_matrix)
    if r.roc:
        classification.log_roc_curve(*r.roc)
    return r.metrics["accuracy"]


def export(model, records, predictions, saved_model, **options):
    from imgclf.components.contracts import INPUT_KEY
    from imgclf.components.export.step import export as run

    r = run(model.path, records.path, predictions.path, saved_model.path, **options)
    saved_model.metadata.update({"framework": "tensorflow", "format": "SavedModel", "signature": "serving_default",
                                 "input": INPUT_KEY, "checked_images": r.checked_images,
                                 "published_to": r.published_to, "rest_images": r.rest_images,
                                 "warmup_requests": r.warmup_requests, "tflite_max_diff": r.tflite_max_diff})


def champion(records, **options):
    from collections import namedtuple

    from imgclf.components.release.champion import lookup
    from imgclf.components.release.options import ChampionOptions

    # The train options come along so that a change of them is a reason to train (skip_unchanged).
    import json

    own = ChampionOptions.pick(options)
    r = lookup(records.path, **own, train_options=json.dumps({k: v for k, v in options.items() if k not in own}))
    return namedtuple("Lookup", "action reason champion_version warm_start_from")(
        r.action, r.reason, r.champion_version, r.warm_start_from)


def gate(records, predictions, reasons, compared, metrics, **options):
    from collections import namedtuple

    from imgclf.components.release.gate import gate as run

    r = run(records.path, predictions.path, decision_md=reasons.path, compared_csv=compared.path, **options)
    metrics.log_metric("compared images", r.compared.get("images", 0))
    metrics.log_metric("passed", int(r.decision != "refuse"))
    for k, v in r.challenger.items():
        metrics.log_metric(f"challenger {k}", v)
    from imgclf.components.release.options import COMPARE_METRICS

    for k in COMPARE_METRICS:
        if k in r.champion:
            metrics.log_metric(f"champion v{r.champion['version']} {k}", r.champion[k])
    return namedtuple("Gate", "decision summary")(r.decision, r.summary())


def publish(saved_model, model, records, predictions, **options) -> int:
    from imgclf.components.release.publish import publish as run

    return run(saved_model.path, model.path, records.path, predictions.path, **options)


def deploy(deployment, **options) -> str:
    from imgclf.components.deploy.step import deploy as run

    d = run(deployment.path, **options)
    deployment.metadata.update({"target": d.target, "version": d.version})
    return d.summary()


def not_published(summary: str) -> str:
    import json

    outcome = json.loads(summary)
    print(f"not published ({outcome['decision']}):\n" + "\n".join(outcome["reasons"]), flush=True)
    return outcome["decision"]


def training_skipped(reason: str, champion_version: int, note) -> str:
    from imgclf.components.release.gate import skipped

    return skipped(reason, champion_version, note.path)


def predict(predictions, metrics, images: str, output_format: str, **options):
    import os

    from imgclf.components.predict.step import predict as run

    os.makedirs(predictions.path, exist_ok=True)
    r = run(inputs=[images], output=os.path.join(predictions.path, f"predictions.{output_format}"), **options)
    predictions.metadata.update({"format": output_format, "predicted": r.predicted, "failed": r.failed,
                                 "model": options["model"], "images": images})
    metrics.log_metric("predicted", r.predicted)
    metrics.log_metric("failed", r.failed)
    for cls, n in r.class_counts.items():
        metrics.log_metric(f"count: {cls}", n)
