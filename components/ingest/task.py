"""What ingest's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def ingest(dataset, metrics, report, **options):
    from imgclf.components.ingest.step import ingest as run

    s = run(output_dir=dataset.path, report_html=report.path, **options)
    dataset.metadata.update({"classes": s.classes, "images": s.images, "layout": s.layout})
    metrics.log_metric("images", s.images)
    metrics.log_metric("classes", len(s.classes))
    metrics.log_metric("quarantined", s.quarantined)
    metrics.log_metric("ignored", s.ignored)  # litter, not data (lib/litter.py): apart from quarantined
    for reason, n in s.quarantine_reasons.items():
        metrics.log_metric(f"quarantined: {reason}", n)
    for cls, n in s.per_class.items():
        metrics.log_metric(f"images: {cls}", n)
