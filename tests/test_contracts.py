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


@pytest.mark.unit
def test_the_model_card_shows_hostile_class_names_as_text():
    """Class names are folder names the user chose: in the card they must neither run (HTML), format
    (Markdown) nor break the per-class table. Rendered with Python-Markdown (what mkdocs uses) and read
    back as text, each name appears exactly as given."""
    import html.parser

    import markdown

    names = ["<img src=x onerror=alert(1)>", "a|b", "**bold**", "[x](javascript:alert(1))", "back\\slash", "T_shirt"]
    record = {"schema_version": 2, "model_name": "fm<script>", "version": 1, "created": "2026-11-01T03:00:00+00:00",
              "model": "baseline", **SPEC, "classes": names, "data_fingerprint": "d" * 64, "params": {},
              "split_counts": {}, "metrics": {"accuracy": 0.5, "macro_f1": 0.5, "test_images": 6},
              "per_class": [{"class": n, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for n in names],
              "gate": {"reasons": [f"FAIL: recall dropped for {names[0]}"]}}
    page = markdown.markdown(render(record), extensions=["tables"])

    class Reader(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.cells, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)
            if self.tags and self.tags[-1] == "td":
                self.cells.append(data)

    reader = Reader()
    reader.feed(page)
    assert not {"img", "script", "strong", "a"} & set(reader.tags), reader.tags
    text = "".join(reader.text)
    assert all(n in text for n in names) and "fm<script>" in text
    assert [c for c in reader.cells if c in names] == names  # one row each, the name in its own cell
