"""What evaluate's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def evaluate(records, model, predictions, metrics, classification, report, **options) -> float:
    from imgclf.components.evaluate.step import evaluate as run

    # The temperature, ECE before and after, and the abstention threshold are in r.metrics.
    r = run(records.path, model.path, predictions.path, report_html=report.path, **options)
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
