"""Publish: put a gate-passing model into the registry as a new version with its record and model card.

Everything in the record comes from the run's own artifacts (train's parameters, evaluate's metrics,
preprocess's fingerprint and split sizes, the gate's reasons), never from the source data.
"""
from __future__ import annotations

import dataclasses
import json

from components.contracts import SPLITS, Evaluation, RecordsMetadata, TrainedModel
from components.lib import registry as layout
from components.lib.options import takes
from components.release import model_card
from components.release.options import PublishOptions


@takes(PublishOptions)
def publish(saved_model_dir: str, model_dir: str, dataset_dir: str, predictions_dir: str,
            opts: PublishOptions) -> int:
    """Publish as the next version of `model_name` and move the champion pointer; returns the version."""
    if not opts.registry:
        raise ValueError("publish needs a registry location (local folder, gs:// or s3://)")
    info = TrainedModel.load(model_dir)
    meta = RecordsMetadata.load(dataset_dir)
    evaluated = Evaluation.load(predictions_dir)
    record = {"source_run": opts.source_run, "architecture": info.architecture, "params": info.params,
              "input": dataclasses.asdict(info.input), "data_fingerprint": meta.data_fingerprint,
              "fingerprint": meta.fingerprint, "data": meta.source, "split_counts": {s: meta.count(s) for s in SPLITS},
              "libraries": info.hardware.get("libraries", {}),
              "metrics": evaluated.metrics, "per_class": evaluated.per_class, "gate": json.loads(opts.gate_summary)}
    return layout.publish(saved_model_dir, model_dir, opts.registry, opts.model_name, record, model_card.render)
