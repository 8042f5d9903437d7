"""What train's KFP components do in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations

import dataclasses


def train(records, model, metrics, curves, **options):
    from imgclf.components.contracts import TrainedModel, load_history
    from imgclf.components.train import cluster_jobs
    from imgclf.components.train.step import train as run

    # Next to the output in the artifact store (not the local output folder, which KFP uploads only on
    # success): a retried attempt has the same output URI and finds the state there.
    backup = model.uri.rstrip("/") + ".backup"
    if int(options.get("train_workers", 1)) > 1 and cluster_jobs.ClusterSettings.from_env() is not None:
        # A pipeline compiled for KFP or Vertex: the workers run as a cluster job, the chief's model comes
        # back as this task's output. Elsewhere (kfp.local) the step starts its workers on this machine.
        cluster_jobs.train_on_cluster(options, records_uri=records.uri, model_uri=model.uri, backup_uri=backup,
                                      model_path=model.path, curves_path=curves.path)
        result = TrainedModel.load(model.path).result
    else:
        result = dataclasses.asdict(run(records.path, model.path, backup_uri=backup, curves_html=curves.path,
                                        **options))
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
