"""What the audit's KFP component does in its task, once its arguments arrive: unpack the collected fold
predictions, call the step with its options, fill the outputs and metrics. Called by the generated face
beside it (component.py)."""
from __future__ import annotations


def audit(dataset, predictions, suspects, metrics, report, **options) -> int:
    import shutil
    from pathlib import Path

    from imgclf.components.audit.step import SUSPECTS_HTML
    from imgclf.components.audit.step import audit as run

    r = run(dataset.path, [p.path for p in predictions], suspects.path, **options)
    metrics.log_metric("images", r.images)
    metrics.log_metric("suspects", r.suspects)
    metrics.log_metric("out-of-fold accuracy", r.out_of_fold_accuracy)
    for kind, n in r.kinds.items():
        metrics.log_metric(kind, n)
    shutil.copyfile(Path(suspects.path) / SUSPECTS_HTML, report.path)
    return r.suspects
