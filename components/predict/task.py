"""What predict's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def predict(predictions, metrics, images: str, output_format: str, **options):
    import os

    from imgclf.components.predict.step import predict as run

    os.makedirs(predictions.path, exist_ok=True)
    r = run(inputs=[images], output=os.path.join(predictions.path, f"predictions.{output_format}"), **options)
    predictions.metadata.update({"format": output_format, "predicted": r.predicted, "failed": r.failed,
                                 "uncertain": r.uncertain,
                                 "model": options["model"], "images": images})
    metrics.log_metric("predicted", r.predicted)
    metrics.log_metric("failed", r.failed)
    metrics.log_metric("uncertain", r.uncertain)
    for cls, n in r.class_counts.items():
        metrics.log_metric(f"count: {cls}", n)
