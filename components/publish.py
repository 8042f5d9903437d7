"""Publish: put a gate-passing model into the registry as a new version with its record and model card.

Everything in the record comes from the run's own artifacts (train's parameters, evaluate's metrics,
preprocess's fingerprint and split sizes, the gate's reasons), never from the source data.
"""
from __future__ import annotations

import json

from components import model_card, records, registry
from components.evaluate import load_metrics
from components.train import load_train_info


def publish(saved_model_dir: str, model_dir: str, dataset_dir: str, predictions_dir: str, registry_uri: str,
            model_name: str = "imgclf", gate_summary: str = "{}", source_run: str = "") -> int:
    """Publish as the next version of `model_name` and move the champion pointer; returns the version."""
    if not registry_uri:
        raise ValueError("publish needs a registry location (local folder, gs:// or s3://)")
    info = load_train_info(model_dir)
    meta = records.load_metadata(dataset_dir)
    evaluated = load_metrics(predictions_dir)
    record = {"source_run": source_run, "model": info["model"], "params": info["params"],
              "classes": info["classes"], "image_size": info["image_size"], "channels": info["channels"],
              "color_mode": info["color_mode"], "data_fingerprint": meta["data_fingerprint"],
              "fingerprint": meta["fingerprint"],
              "split_counts": {s: meta["splits"][s]["count"] for s in records.SPLITS},
              "metrics": evaluated["metrics"], "per_class": evaluated["per_class"],
              "gate": json.loads(gate_summary)}
    return registry.publish(saved_model_dir, model_dir, registry_uri, model_name, record, model_card.render)
