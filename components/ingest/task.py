"""What ingest's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def ingest_plan(plan, **options) -> list:
    from imgclf.components.ingest.shards import plan as run

    return run(plan_dir=plan.path, **options)


def ingest_shard(plan, part, shard: int, **options):
    from imgclf.components.ingest.shards import write_part

    p = write_part(plan_dir=plan.path, shard=shard, part_dir=part.path, **options)
    part.metadata.update({"shard": shard, "files": p["files"], "admitted": p["admitted"]})


def ingest(plan, parts, dataset, metrics, report, **options):
    from imgclf.components.ingest.shards import merge

    s = merge(plan_dir=plan.path, part_dirs=[p.path for p in parts], output_dir=dataset.path,
              report_html=report.path, **options)
    dataset.metadata.update({"classes": s.classes, "images": s.images, "layout": s.layout})
    metrics.log_metric("images", s.images)
    metrics.log_metric("classes", len(s.classes))
    metrics.log_metric("quarantined", s.quarantined)
    metrics.log_metric("ignored", s.ignored)  # litter, not data (lib/litter.py): apart from quarantined
    for reason, n in s.quarantine_reasons.items():
        metrics.log_metric(f"quarantined: {reason}", n)
    for cls, n in s.per_class.items():
        metrics.log_metric(f"images: {cls}", n)
