"""Preprocess spread over shard tasks: the same records as one task, byte for byte, whatever the number
of tasks; the split fixed before any partitioning; and a 2-shard preprocess through kfp.local."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from imgclf.components.ingest.step import ingest
from imgclf.components.lib import sharding
from imgclf.components.preprocess.shards import merge, plan, task_count, write_part
from imgclf.components.preprocess.step import preprocess
from tests.conftest import TEN, make_folder

OPTS = {"image_size": 16, "color_mode": "grayscale", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 5,
        "images_per_shard": 7}


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """60 real images in 3 classes; two changed after ingest (quarantined by preprocess)."""
    tmp = tmp_path_factory.mktemp("shards")
    src = make_folder(tmp / "src", TEN[:3], 20, jpeg_every=4)
    ingest(str(src), str(tmp / "ds"))
    for victim in sorted(src.rglob("*.png"))[5:7]:
        victim.write_bytes(victim.read_bytes()[:-10])
    return tmp / "ds"


def sharded(ds, tmp, tasks: int, **opts):
    items = plan(str(ds), str(tmp / "plan"), shard_tasks=tasks, **opts)
    parts = [str(tmp / f"part{i}") for i in items]
    for i in reversed(items):  # any order: the files, not the tasks, decide the layout
        write_part(str(ds), str(tmp / "plan"), i, parts[i], **opts)
    return len(items), merge(str(ds), str(tmp / "plan"), parts, str(tmp / "records"), **opts)


@pytest.mark.parametrize("tasks", [1, 2, 3, 0, 40])
def test_sharded_records_equal_one_tasks_byte_for_byte(manifest, tmp_path, tasks):
    one = preprocess(str(manifest), str(tmp_path / "one"), **OPTS)
    (tmp_path / "n").mkdir()
    n, many = sharded(manifest, tmp_path / "n", tasks, **OPTS)
    files = 6 + 2 + 2  # 36 train / 12 validation / 12 test images, less the quarantined, 7 a file
    assert n == {0: 1, 40: files}.get(tasks, tasks)  # auto: 1 per 10,000 images; never more tasks than files
    assert digest(tmp_path / "one") == digest(tmp_path / "n" / "records")  # every file, metadata.json included
    assert (one.counts, one.quarantined, one.fingerprint, one.data_fingerprint) == \
        (many.counts, many.quarantined, many.fingerprint, many.data_fingerprint)
    assert one.quarantined == 2
    meta = json.loads((tmp_path / "one" / "metadata.json").read_text())
    assert "shard_tasks" not in meta["params"]  # how the work was spread is not what the records hold


def test_a_split_left_empty_and_near_duplicates_dropped_come_out_the_same(manifest, tmp_path):
    opts = {**OPTS, "test_fraction": 0.0, "near_duplicate_bits": 256, "drop_near_duplicates": True}
    preprocess(str(manifest), str(tmp_path / "one"), **opts)
    (tmp_path / "n").mkdir()
    sharded(manifest, tmp_path / "n", 2, **opts)
    assert digest(tmp_path / "one") == digest(tmp_path / "n" / "records")
    meta = json.loads((tmp_path / "one" / "metadata.json").read_text())
    assert meta["splits"]["test"]["shards"] == [] and meta["splits"]["validation"]["count"] == 0


@pytest.mark.unit
def test_the_task_count_follows_the_image_count_and_is_capped():
    assert [task_count(images, 1000, 0) for images in (1, 10_000, 10_001, 70_000, 10_000_000)] == [1, 1, 2, 7, 32]
    assert task_count(70_000, 35, 4) == 4 and task_count(100, 1, 4) == 1 and task_count(70_000, 3, 0) == 3


@pytest.mark.parametrize("images, files, requested", [(1, 1, 0), (70_000, 35, 0), (10_000_000, 5000, 0),
                                                      (70_000, 35, 4), (70_000, 3, 9), (100, 1, 4)])
@pytest.mark.unit
def test_tasks_in_series_get_one_shard_task_unless_asked_for_more(images, files, requested):
    """Where tasks run one after another (imgclf run's preloaded tasks), the automatic count is one; a
    count the user asked for is kept, within the files there are."""
    assert task_count(images, files, requested, in_series=True) == (min(requested, files) if requested else 1)
    assert task_count(images, files, requested, in_series=False) == task_count(images, files, requested)


def test_the_plan_reads_the_in_series_variable(manifest, tmp_path, monkeypatch):
    from imgclf.components.preprocess import shards

    monkeypatch.setattr(shards, "IMAGES_PER_TASK", 10)  # 60 images: 6 automatic tasks
    assert plan(str(manifest), str(tmp_path / "a"), shard_tasks=0, **OPTS) == list(range(6))
    monkeypatch.setenv(sharding.IN_SERIES_ENV, "1")
    assert plan(str(manifest), str(tmp_path / "b"), shard_tasks=0, **OPTS) == [0]
    assert plan(str(manifest), str(tmp_path / "c"), shard_tasks=3, **OPTS) == [0, 1, 2]


def test_a_shard_index_outside_the_plan_and_missing_parts_are_refused(manifest, tmp_path):
    plan(str(manifest), str(tmp_path / "plan"), shard_tasks=2, **OPTS)
    with pytest.raises(ValueError, match="shard 2: the plan has shard tasks 0 to 1"):
        write_part(str(manifest), str(tmp_path / "plan"), 2, str(tmp_path / "p2"), **OPTS)
    write_part(str(manifest), str(tmp_path / "plan"), 0, str(tmp_path / "p0"), **OPTS)
    with pytest.raises(ValueError, match="1 parts for a plan of 2 shard tasks"):
        merge(str(manifest), str(tmp_path / "plan"), [str(tmp_path / "p0")], str(tmp_path / "r"), **OPTS)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_2_shard_preprocess_through_kfp_local_equals_one_task(manifest, tmp_path):
    from benchmarks.preprocess_shards import run_sharded

    one = preprocess(str(manifest), str(tmp_path / "one"), **OPTS)
    records, seconds, tasks = run_sharded(str(manifest), 2, str(tmp_path / "runs"), **OPTS)
    assert digest(tmp_path / "one") == digest(Path(records))
    assert seconds > tasks["plan"] > 0 and tasks["merge"] > 0 and one.counts["train"] > 0
    run_dir = next((tmp_path / "runs").iterdir())
    parts = sorted(run_dir.glob("*-iteration-*/preprocess-shard/part/part.json"))
    assert [json.loads(p.read_text())["shard"] for p in parts] == [0, 1]
