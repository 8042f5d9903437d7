"""The typed artifact contracts between steps: what each step writes for the next, in one place.

Steps import these (and the shared libraries), never each other. Every artifact stays self-describing:
a small JSON beside the data that a test or a person can open without the step that wrote it. The
input spec (classes, image size, channels, colour mode) is declared once here, written by preprocess
and carried unchanged by train, export and the registry record; every later step reads it from there.

| artifact (writer)          | files                                                   | typed view          |
|----------------------------|---------------------------------------------------------|---------------------|
| Dataset (ingest)           | manifest.csv, classes.json, quarantine.csv, summary.json | `ManifestRow`       |
| Dataset (preprocess)       | <split>-NNNNN-of-NNNNN.tfrecord, metadata.json, images.csv | `RecordsMetadata`, `SplitImages` |
| Model (train)              | model.keras, history.json, train.json, tensorboard/      | `TrainedModel`      |
| Model (trial, a sweep's)   | train's files (if it trained) + trial.json               | `TrialResult`       |
| Model (select)             | the winner's train files + sweep.json                    | `SweepResult`       |
| Dataset (evaluate)         | predictions.csv, metrics.json                            | `Evaluation`        |
| Model (export)             | SavedModel + assets.extra/imgclf.json                    | `ExportInfo`        |
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.components.lib import tables

SPLITS = ("train", "validation", "test")


class DatasetError(ValueError):
    """The data as a whole cannot be used (as opposed to one bad file, which is quarantined)."""


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _read_json(path: Path, what: str):
    if not path.exists():
        raise FileNotFoundError(f"{path.parent}: no {path.name}; is this {what}?")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: written once by preprocess, read by every later step from its artifact."""
    classes: list[str]
    image_size: int
    channels: int
    color_mode: str

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        d = d.get("input", d)  # records before schema 2 kept the four keys at the top level
        return cls(list(d["classes"]), int(d["image_size"]), int(d["channels"]), d["color_mode"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


# --- ingest's Dataset --------------------------------------------------------------------------------
MANIFEST, CLASSES, QUARANTINE, INGEST_SUMMARY = "manifest.csv", "classes.json", "quarantine.csv", "summary.json"
MANIFEST_FIELDS = ["location", "label", "split", "bytes", "sha256", "width", "height", "mode", "format", "frames",
                   "dhash"]
QUARANTINE_FIELDS = ["location", "label", "reason", "detail"]


class ManifestRow:
    """The manifest fields later steps need, with slots and interned labels instead of a dict per row:
    per-image metadata is what grows with the dataset, so keep it small."""
    __slots__ = ("location", "label", "split", "sha256", "dhash")

    def __init__(self, location: str, label: str, split: str, sha256: str, dhash: str):
        self.location, self.label, self.split = location, sys.intern(label), sys.intern(split)
        self.sha256, self.dhash = sha256, dhash

    def __getitem__(self, key: str) -> str:
        return getattr(self, key)


def location_uri(dataset_dir: str, location: str) -> str:
    """Manifest locations of files extracted from an archive are relative to the dataset artifact."""
    if "://" in location or os.path.isabs(location):
        return location
    return str(Path(dataset_dir) / location)


def read_manifest(dataset_dir: str) -> tuple[list[dict], list[str]]:
    d = Path(dataset_dir)
    with open(d / MANIFEST, newline="", encoding="utf-8") as f:
        rows = list(tables.read_rows(f))
    return rows, _read_json(d / CLASSES, "an ingest output")


def load_manifest(dataset_dir: str) -> tuple[list[ManifestRow], list[str]]:
    d = Path(dataset_dir)
    with open(d / MANIFEST, newline="", encoding="utf-8") as f:
        rows = [ManifestRow(r["location"], r["label"], r["split"], r["sha256"], r["dhash"]) for r in tables.read_rows(f)]
    return rows, _read_json(d / CLASSES, "an ingest output")


def ingest_source(dataset_dir: str) -> str:
    """The `data` an ingest output was made from ("" for an older output without summary.json)."""
    path = Path(dataset_dir) / INGEST_SUMMARY
    return json.loads(path.read_text(encoding="utf-8")).get("data", "") if path.exists() else ""


def read_quarantine(dataset_dir: str) -> list[dict]:
    with open(Path(dataset_dir) / QUARANTINE, newline="", encoding="utf-8") as f:
        return list(tables.read_rows(f))


# --- preprocess's Dataset ----------------------------------------------------------------------------
RECORDS_METADATA = "metadata.json"
RECORDS_SCHEMA = 2


@dataclass
class SplitInfo:
    count: int
    shards: list[str]
    per_class: dict[str, int]


@dataclass
class RecordsMetadata:
    input: InputSpec
    splits: dict[str, SplitInfo]
    params: dict
    data_fingerprint: str
    """Content identity of the images, labels and splits: what caching and the registry key on."""
    fingerprint: str
    """data_fingerprint plus the preprocessing parameters."""
    quarantined: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    near_duplicates_dropped: bool = False
    schema_version: int = RECORDS_SCHEMA
    source: str = ""
    """The data the images came from (ingest's `data`), for reports, the model card and the registry."""

    @property
    def classes(self) -> list[str]:
        return self.input.classes

    def count(self, split: str) -> int:
        return self.splits[split].count

    def shard_paths(self, dataset_dir: str, split: str) -> list[str]:
        return [str(Path(dataset_dir) / s) for s in self.splits[split].shards]

    def save(self, dataset_dir: str | Path) -> None:
        _write_json(Path(dataset_dir) / RECORDS_METADATA, dataclasses.asdict(self))

    @classmethod
    def load(cls, dataset_dir: str) -> RecordsMetadata:
        d = _read_json(Path(dataset_dir) / RECORDS_METADATA, "a preprocess output")
        return cls(InputSpec.from_dict(d), {k: SplitInfo(**v) for k, v in d["splits"].items()}, d["params"],
                   d["data_fingerprint"], d["fingerprint"], d.get("quarantined", []), d.get("near_duplicates", []),
                   d.get("near_duplicates_dropped", False), d.get("schema_version", 1), d.get("source", ""))


SPLIT_IMAGES = "images.csv"
SPLIT_IMAGES_FIELDS = ["split", "sha256", "location"]


@dataclass
class SplitImages:
    """images.csv: which image (by content hash) went to which split. The gate keeps a comparison to the
    test images neither model trained or validated on, and publish records the hashes a model learned
    from, so later comparisons can leave them out."""
    by_split: dict[str, dict[str, str]]
    """split -> {location: sha256}."""

    def save(self, dataset_dir: str | Path) -> None:
        with open(Path(dataset_dir) / SPLIT_IMAGES, "w", newline="", encoding="utf-8") as f:
            w = tables.Writer(f)
            w.writerow(SPLIT_IMAGES_FIELDS)
            for split in SPLITS:
                for location, sha in self.by_split.get(split, {}).items():
                    w.writerow([split, sha, location])

    @classmethod
    def load(cls, dataset_dir: str) -> SplitImages:
        path = Path(dataset_dir) / SPLIT_IMAGES
        if not path.exists():
            raise FileNotFoundError(f"{dataset_dir}: no {SPLIT_IMAGES}; preprocess it again with this version of "
                                    "imgclf (older records do not say which image went to which split)")
        out: dict[str, dict[str, str]] = {s: {} for s in SPLITS}
        with open(path, newline="", encoding="utf-8") as f:
            for r in tables.read_rows(f):
                out[r["split"]][r["location"]] = r["sha256"]
        return cls(out)

    def hashes(self, *splits: str) -> set[str]:
        return {sha for s in splits for sha in self.by_split.get(s, {}).values()}


# --- train's Model -----------------------------------------------------------------------------------
MODEL_FILE, HISTORY_FILE, TRAIN_FILE, TENSORBOARD_DIR = "model.keras", "history.json", "train.json", "tensorboard"


@dataclass
class TrainedModel:
    """train.json: what was trained on what, with which options, on which hardware, and how it went."""
    architecture: str
    input: InputSpec
    data_fingerprint: str
    fingerprint: str
    params: dict
    """Every train option (TrainOptions.to_dict()), with `weights` and `class_weight` as resolved: the
    weights actually loaded (auto -> imagenet or none) and the class weights by class name."""
    hardware: dict
    result: dict
    options_fingerprint: str = ""
    """Digest of the options that describe the model (imgclf.components.lib.options.fingerprint): the registry
    keeps it, and a run on unchanged data is skipped only when its options have the same digest."""

    def save(self, model_dir: str | Path) -> None:
        _write_json(Path(model_dir) / TRAIN_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, model_dir: str) -> TrainedModel:
        d = _read_json(Path(model_dir) / TRAIN_FILE, "a train output")
        return cls(d.get("architecture", d.get("model")), InputSpec.from_dict(d), d["data_fingerprint"],
                   d["fingerprint"], d["params"], d["hardware"], d["result"], d.get("options_fingerprint", ""))


def load_history(model_dir: str) -> dict[str, list[float]]:
    return _read_json(Path(model_dir) / HISTORY_FILE, "a train output")


# --- a sweep: each trial's Model, and select's ------------------------------------------------------
TRIAL_FILE, SWEEP_FILE = "trial.json", "sweep.json"
TRIAL_METRICS = {"val_accuracy": max, "val_loss": min}
"""What a sweep may select on, and which way is better: validation scores only, never test ones."""


@dataclass
class TrialResult:
    """trial.json: one trial of a sweep, written whether it trained or failed (a failed trial is a
    result, so one bad combination does not fail the ParallelFor and the whole sweep)."""
    index: int
    options: dict
    """The swept options' values for this trial (the rest are the pipeline's)."""
    status: str
    """"ok" or "failed"."""
    error: str = ""
    val_accuracy: float | None = None
    val_loss: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        d = json.loads(text)
        # KFP carries numbers through protobuf Structs: an int may come back as 3.0.
        return cls(int(d["index"]), d["options"], d["status"], d.get("error", ""), d.get("val_accuracy"),
                   d.get("val_loss"), int(d.get("epochs_run", 0)), float(d.get("seconds", 0.0)))

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        (Path(model_dir) / TRIAL_FILE).write_text(self.to_json(), encoding="utf-8")


@dataclass
class SweepResult:
    """sweep.json beside the winner's train files: every trial, what was selected on, and the winner."""
    metric: str
    winner: int
    trials: list[dict]

    def save(self, model_dir: str | Path) -> None:
        _write_json(Path(model_dir) / SWEEP_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, model_dir: str) -> SweepResult | None:
        """None for a model that did not come out of a sweep."""
        path = Path(model_dir) / SWEEP_FILE
        if not path.exists():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(d["metric"], int(d["winner"]), d["trials"])


# --- evaluate's Dataset ------------------------------------------------------------------------------
PREDICTIONS_FILE, METRICS_FILE = "predictions.csv", "metrics.json"


@dataclass
class Evaluation:
    """metrics.json: the challenger's scores on the test split, as gate and publish read them."""
    classes: list[str]
    metrics: dict[str, float]
    per_class: list[dict]
    confusion_matrix: list[list[int]]
    intervals: dict[str, dict] = field(default_factory=dict)
    """95 % confidence intervals of the headline metrics: {metric: {value, low, high}}."""

    def save(self, predictions_dir: str | Path) -> None:
        _write_json(Path(predictions_dir) / METRICS_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, predictions_dir: str) -> Evaluation:
        d = _read_json(Path(predictions_dir) / METRICS_FILE, "an evaluate output")
        return cls(d["classes"], d["metrics"], d["per_class"], d["confusion_matrix"], d.get("intervals", {}))


def read_predictions(predictions_dir: str) -> list[dict]:
    with open(Path(predictions_dir) / PREDICTIONS_FILE, newline="", encoding="utf-8") as f:
        return list(tables.read_rows(f))


# --- export's Model (the SavedModel) -----------------------------------------------------------------
INPUT_KEY = "image_bytes"
OUTPUTS = ("probabilities", "class_index", "class_name")
EXPORT_INFO = "assets.extra/imgclf.json"


@dataclass
class ExportInfo:
    """assets.extra/imgclf.json: how to call the SavedModel and what it was trained on."""
    input: InputSpec
    architecture: str
    data_fingerprint: str
    input_key: str = INPUT_KEY
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    temperature: float = 1.0
    """The served probabilities are softmax(log p / temperature) of the trained model's (fitted by evaluate on
    the validation split; 1.0: as trained, and every SavedModel exported before calibration)."""
    abstain_below: float = 0.0
    """predict marks an answer whose top probability is below this `uncertain` (0: never)."""

    def save(self, saved_model_dir: str | Path) -> None:
        path = Path(saved_model_dir) / EXPORT_INFO
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, saved_model_dir: str | Path) -> ExportInfo | None:
        """None for a SavedModel we did not export (no imgclf.json)."""
        path = Path(saved_model_dir) / EXPORT_INFO
        if not path.exists():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(InputSpec.from_dict(d), d.get("architecture", d.get("model", "")), d.get("data_fingerprint", ""),
                   d.get("input_key", INPUT_KEY), d.get("outputs", list(OUTPUTS)), float(d.get("temperature", 1.0)),
                   float(d.get("abstain_below", 0.0)))
