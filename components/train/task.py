"""What train's KFP components do in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations

import dataclasses


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
