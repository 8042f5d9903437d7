"""What preprocess's KFP components do in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


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
