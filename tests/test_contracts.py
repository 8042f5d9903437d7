"""The typed contracts read what earlier releases wrote: records metadata, train.json, imgclf.json and
registry records of schema 1 (the input spec at the top level, the network under "model")."""
from __future__ import annotations

import json

import pytest

from imgclf.components.contracts import ExportInfo, InputSpec, RecordsMetadata, TrainedModel
from imgclf.components.release.model_card import render

pytestmark = pytest.mark.unit

SPEC = {"classes": ["Bag", "Trouser"], "image_size": 28, "channels": 1, "color_mode": "grayscale"}


def test_schema_1_artifacts_load_into_the_typed_contracts(tmp_path):
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp" / "metadata.json").write_text(json.dumps({
        "schema_version": 1, **SPEC, "splits": {s: {"count": 2, "shards": [f"{s}-00000-of-00001.tfrecord"],
                                                     "per_class": {"Bag": 1, "Trouser": 1}}
                                                 for s in ("train", "validation", "test")},
        "params": {"image_size": 28}, "data_fingerprint": "d" * 64, "fingerprint": "f" * 64}))
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    assert meta.input == InputSpec(**SPEC) and meta.schema_version == 1 and meta.count("test") == 2
    assert meta.shard_paths(str(tmp_path / "pp"), "train") == [str(tmp_path / "pp" / "train-00000-of-00001.tfrecord")]

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "train.json").write_text(json.dumps({
        "model": "baseline", **SPEC, "data_fingerprint": "d" * 64, "fingerprint": "f" * 64,
        "params": {"epochs": 3}, "hardware": {"backend": "tensorflow"}, "result": {"epochs_run": 3}}))
    info = TrainedModel.load(str(tmp_path / "m"))
    assert info.architecture == "baseline" and info.input == meta.input and info.params == {"epochs": 3}

    (tmp_path / "sm" / "assets.extra").mkdir(parents=True)
    (tmp_path / "sm" / "assets.extra" / "imgclf.json").write_text(json.dumps({
        "input_key": "image_bytes", "outputs": ["probabilities", "class_index", "class_name"], **SPEC,
        "model": "baseline", "data_fingerprint": "d" * 64}))
    exported = ExportInfo.load(tmp_path / "sm")
    assert exported.input == meta.input and exported.architecture == "baseline"
    assert ExportInfo.load(tmp_path / "m") is None  # a SavedModel we did not export


def test_a_schema_1_registry_record_renders_its_model_card():
    record = {"schema_version": 1, "model_name": "fm", "version": 3, "created": "2026-11-01T03:00:00+00:00",
              "model": "mobilenet_v2", **SPEC, "data_fingerprint": "d" * 64, "params": {"epochs": 5},
              "split_counts": {"train": 8, "validation": 1, "test": 1},
              "metrics": {"accuracy": 0.9, "macro_f1": 0.89, "test_images": 10}, "per_class": [], "gate": {}}
    card = render(record)
    assert "one of 2 classes: Bag, Trouser" in card and "`mobilenet_v2`" in card and "28x28" in card
