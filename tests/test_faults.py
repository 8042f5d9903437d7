"""Faults end a step or are refused by mechanism: a store outage is never quarantined as bad files, a
diverged (NaN) model never gets past train, the gate or publish, and training data reaches the model
class-mixed."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from components.contracts import Evaluation, RecordsMetadata
from components.ingest.step import ingest
from components.lib import records, storage
from components.preprocess.step import preprocess
from tests import stores as st
from tests.conftest import TEN, make_folder


@pytest.mark.parametrize("after", [3, 12, 30])
def test_a_store_outage_mid_ingest_ends_the_step_naming_the_uri(bucket, stores, tmp_path, monkeypatch, after):
    """Before: every file not yet read was retried, then quarantined as "unreadable", and ingest
    succeeded on a smaller, imbalanced dataset. Now the storage error ends the step."""
    s3, _ = bucket
    src = make_folder(tmp_path / "src", TEN[:4], 12)
    storage.upload_dir(str(src), f"{s3}/src")
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    proxy = st.OutageProxy(stores["s3"].port, requests=after)
    monkeypatch.setenv("IMGCLF_S3_ENDPOINT_URL", proxy.url)
    storage.reset()
    try:
        with pytest.raises(storage.StorageError, match=rf"{s3}/src.*failed"):
            ingest(f"{s3}/src", str(tmp_path / "ds"), workers=2)
    finally:
        proxy.stop()
        storage.reset()
    assert not (tmp_path / "ds").exists()  # nothing partial stays visible


def test_a_store_outage_mid_preprocess_ends_the_step_instead_of_quarantining(bucket, stores, tmp_path,
                                                                             monkeypatch):
    s3, _ = bucket
    storage.upload_dir(str(make_folder(tmp_path / "src", TEN[:4], 12)), f"{s3}/src")
    ingest(f"{s3}/src", str(tmp_path / "ds"))  # preprocess reads the images from the store again
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    proxy = st.OutageProxy(stores["s3"].port, requests=10)
    monkeypatch.setenv("IMGCLF_S3_ENDPOINT_URL", proxy.url)
    storage.reset()
    try:
        with pytest.raises(storage.StorageError, match=rf"{s3}/src/.*failed"):
            preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, workers=2)
    finally:
        proxy.stop()
        storage.reset()
    assert not (tmp_path / "pp").exists()


def test_a_diverged_loss_stops_training_whatever_the_value():
    from components.train.step import TrainingDiverged, _finite_loss_guard

    guard = _finite_loss_guard()
    rng = random.Random(3)
    for _ in range(200):
        value = rng.choice([math.nan, math.inf, -math.inf, rng.uniform(0, 50)])
        key = rng.choice(["loss", "val_loss"])
        logs = {key: value, "accuracy": 0.5}
        if math.isfinite(value):
            guard.on_epoch_end(0, logs)
        else:
            with pytest.raises(TrainingDiverged, match=f"{key} {value} at epoch 1: the model diverged"):
                guard.on_epoch_end(0, logs)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_model_with_non_finite_metrics_never_passes_the_gate_nor_is_published(tmp_path, bad):
    from components.lib import registry
    from components.release.gate import gate

    pred = tmp_path / "pred"
    pred.mkdir()
    Evaluation(["a", "b"], {"accuracy": bad, "macro_f1": bad, "test_images": 10}, [], [[5, 0], [0, 5]]).save(pred)
    result = gate(str(tmp_path / "pp"), str(pred))  # no thresholds, no registry: only the NaN can refuse
    assert result.decision == "refuse" and result.reasons[0].startswith("FAIL: accuracy")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"pb")
    with pytest.raises(registry.RegistryError, match="non-finite metrics"):
        registry.publish(str(tmp_path / "sm"), str(tmp_path / "m"), str(tmp_path / "reg"), "fm",
                         {"metrics": {"accuracy": bad}}, lambda r: "")
    assert not (tmp_path / "reg").exists()


def test_every_shard_and_the_first_batches_hold_most_classes(ten_class_folder, tmp_path):
    """Before: splits were written in the class-sorted listing order (each 40-image shard held 2-3 classes)."""
    import tensorflow as tf

    ingest(str(ten_class_folder), str(tmp_path / "ds"))
    preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, color_mode="grayscale",
               images_per_shard=40, seed=5)
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    spec = {records.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    shards = meta.shard_paths(str(tmp_path / "pp"), "train")
    assert len(shards) == 4
    for shard in shards:
        labels = [int(tf.io.parse_single_example(r, spec)[records.LABEL]) for r in tf.data.TFRecordDataset(shard)]
        assert len(set(labels)) >= 7, (shard, Counter(labels))
    for seed in range(3):
        ds = records.make_dataset(str(tmp_path / "pp"), meta, "train", 32, shuffle=True, seed=seed)
        first = next(iter(ds))[1].numpy()
        assert len(set(first.tolist())) >= 7, Counter(first.tolist())
