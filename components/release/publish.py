"""Publish: put a gate-passing model into the registry as a new version with its record and model card.

Everything in the record comes from the run's own artifacts (train's parameters, evaluate's metrics,
preprocess's fingerprint, split sizes and split membership, the gate's reasons), never from the source
data. The version also keeps which images the model trained and validated on (release/seen.py), so the
gate of every later run can compare against it only on images it never saw.
"""
from __future__ import annotations

import dataclasses
import json

from imgclf.components.contracts import SPLITS, Evaluation, RecordsMetadata, SplitImages, TrainedModel
from imgclf.components.lib import registry as layout
from imgclf.components.lib.options import takes
from imgclf.components.release import model_card, seen
from imgclf.components.release.options import PublishOptions


@takes(PublishOptions)
def publish(saved_model_dir: str, model_dir: str, dataset_dir: str, predictions_dir: str,
            opts: PublishOptions) -> int:
    """Publish as the next version of `model_name` and move the champion pointer; returns the version."""
    if not opts.registry:
        raise ValueError("publish needs a registry location (local folder, gs:// or s3://)")
    info = TrainedModel.load(model_dir)
    meta = RecordsMetadata.load(dataset_dir)
    evaluated = Evaluation.load(predictions_dir)
    learned_from = SplitImages.load(dataset_dir).hashes("train", "validation")
    record = {"source_run": opts.source_run, "architecture": info.architecture, "params": info.params,
              "train_options_fingerprint": info.options_fingerprint,
              "input": dataclasses.asdict(info.input), "data_fingerprint": meta.data_fingerprint,
              "fingerprint": meta.fingerprint, "preprocess": meta.params, "data": meta.source,
              "split_counts": {s: meta.count(s) for s in SPLITS},
              "seen_images": {"file": seen.SEEN_IMAGES, "count": len(learned_from), "splits": ["train", "validation"]},
              "libraries": info.hardware.get("libraries", {}),
              "metrics": evaluated.metrics, "intervals": evaluated.intervals, "per_class": evaluated.per_class,
              "gate": json.loads(opts.gate_summary)}
    return layout.publish(saved_model_dir, model_dir, opts.registry, opts.model_name, record, model_card.render,
                          extra_files={seen.SEEN_IMAGES: seen.encode(learned_from)})
