"""Preprocess: exact stratified splits, seeded, pre-split respected, pixels identical to the serving decoder."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from components.lib import images, records
from components.contracts import DatasetError, RecordsMetadata
from components.ingest.step import ingest
from components.preprocess.step import assign_splits, preprocess
from tests.conftest import TWO, make_folder


def _read_split(out, meta, split):
    ds = records.make_dataset(str(out), meta, split, batch_size=1000, with_extras=True)
    pixels, labels, locs, enc = next(iter(ds))
    return pixels.numpy(), labels.numpy(), [x.decode() for x in locs.numpy()], enc.numpy()


def test_stratified_split_counts_and_pixels(ten_class_folder, tmp_path):
    ingest(str(ten_class_folder), str(tmp_path / "ds"))
    s = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=32, color_mode="grayscale",
                   val_fraction=0.1, test_fraction=0.2, seed=7, images_per_shard=50)
    assert s.counts == {"train": 140, "validation": 20, "test": 40}
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    assert meta.input.channels == 1 and meta.input.image_size == 32 and len(meta.classes) == 10
    # stratified: every class appears in every split in proportion (200 images, 20 per class)
    for split, per in (("train", 14), ("validation", 2), ("test", 4)):
        assert set(meta.splits[split].per_class.values()) == {per}, split
    assert len(meta.splits["train"].shards) == 3
    pixels, labels, locs, enc = _read_split(tmp_path / "pp", meta, "test")
    assert pixels.shape == (40, 32, 32, 1) and pixels.dtype == np.uint8
    assert Counter(labels.tolist()) == {k: 4 for k in range(10)}
    # what training sees is exactly what the serving decoder makes of the original bytes
    decode = images.decoder(32, 1)
    for i in range(0, 40, 7):
        with open(locs[i], "rb") as f:
            raw = f.read()
        assert enc[i] == raw
        np.testing.assert_array_equal(decode(tf.constant(raw)).numpy(), pixels[i])


def test_split_is_seeded(ten_class_folder, tmp_path):
    ingest(str(ten_class_folder), str(tmp_path / "ds"))
    from components.contracts import read_manifest
    rows, _ = read_manifest(str(tmp_path / "ds"))
    a = assign_splits(rows, 0.1, 0.1, seed=1)
    assert a == assign_splits(rows, 0.1, 0.1, seed=1)
    assert a["test"] != assign_splits(rows, 0.1, 0.1, seed=2)["test"]
    assert not set(a["train"]) & set(a["test"]) and not set(a["train"]) & set(a["validation"])
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(len(rows)))


def test_pre_split_folders_are_kept_and_validation_carved_from_train(tmp_path):
    root = tmp_path / "src"
    make_folder(root / "train", TWO, 20)
    make_folder(root / "test", TWO, 6, skip=20)
    ingest(str(root), str(tmp_path / "ds"))
    s = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, color_mode="rgb",
                   val_fraction=0.1, seed=3)
    assert s.counts == {"train": 36, "validation": 4, "test": 12}
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    _, _, locs, _ = _read_split(tmp_path / "pp", meta, "test")
    assert all("/test/" in loc for loc in locs)
    assert meta.input.channels == 3


def test_impossible_split_is_a_clear_error_with_no_output(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 3)
    ingest(str(root), str(tmp_path / "ds"), min_images_per_class=1)
    with pytest.raises(DatasetError, match="stratified"):
        preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, test_fraction=0.1)
    assert not (tmp_path / "pp").exists()


def test_file_changed_after_ingest_is_quarantined_not_fatal(two_class_folder, tmp_path):
    ingest(str(two_class_folder), str(tmp_path / "ds"))
    victim = sorted((two_class_folder / "Bag").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    s = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28)
    assert s.quarantined == 1 and sum(s.counts.values()) == 59
    meta = json.loads((tmp_path / "pp" / "metadata.json").read_text())
    assert meta["quarantined"][0]["location"] == str(victim)
    assert "changed since ingest" in meta["quarantined"][0]["reason"]


def test_fingerprint_tracks_data_not_paths(tmp_path):
    a = make_folder(tmp_path / "a", TWO, 11)
    b = make_folder(tmp_path / "b", TWO, 11)
    fps = []
    for src in (a, b):
        ingest(str(src), str(tmp_path / f"ds-{src.name}"))
        fps.append(preprocess(str(tmp_path / f"ds-{src.name}"), str(tmp_path / f"pp-{src.name}"),
                              image_size=28, test_fraction=0.2, val_fraction=0.2).data_fingerprint)
    assert fps[0] == fps[1]
    (a / "Bag" / sorted(p.name for p in (a / "Bag").iterdir())[0]).unlink()
    ingest(str(a), str(tmp_path / "ds-a2"))
    fp2 = preprocess(str(tmp_path / "ds-a2"), str(tmp_path / "pp-a2"), image_size=28, test_fraction=0.2,
                     val_fraction=0.2).data_fingerprint
    assert fp2 != fps[0]


def test_relative_source_path_works_from_another_directory(tmp_path, monkeypatch):
    make_folder(tmp_path / "rel", TWO, 10)
    monkeypatch.chdir(tmp_path)
    ingest("rel", str(tmp_path / "ds"))
    monkeypatch.chdir("/")
    s = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, test_fraction=0.2,
                   val_fraction=0.2)
    assert s.quarantined == 0 and sum(s.counts.values()) == 20


def test_nearest_hash_matches_xor_popcount_over_every_pair(monkeypatch):
    """Generated hash sets (random, with planted near copies, duplicated training hashes for ties, all-zero
    backgrounds) across block boundaries: the matrix-product search finds the same nearest training
    hash, first on ties, at the same distance as XOR and popcount over every pair."""
    from components.preprocess import step

    rng = np.random.default_rng(11)
    monkeypatch.setattr(step, "TRAIN_CHUNK", 7)
    for case in range(20):
        n_train, n_query = int(rng.integers(1, 40)), int(rng.integers(1, 25))
        train = (rng.random((n_train, 256)) < rng.uniform(0.02, 0.5)).astype(np.uint8)
        if case % 3 == 0:
            train[rng.integers(0, n_train, n_train // 2)] = train[0]  # ties
        query = (rng.random((n_query, 256)) < 0.3).astype(np.uint8)
        planted = rng.integers(0, n_train, n_query)
        near = rng.random(n_query) < 0.6
        for q in np.flatnonzero(near):
            query[q] = train[planted[q]]
            query[q, rng.choice(256, int(rng.integers(0, 12)), replace=False)] ^= 1
        if case % 4 == 0:
            query[0] = 0
        best, dist = step.nearest(query, train)
        every = (query[:, None, :] != train[None, :, :]).sum(-1)
        np.testing.assert_array_equal(best, every.argmin(1), err_msg=f"case {case}")
        np.testing.assert_array_equal(dist, every.min(1), err_msg=f"case {case}")
