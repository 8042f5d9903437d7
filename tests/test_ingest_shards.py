"""Ingest spread over shard tasks (plan -> shards -> merge) writes what one ingest task writes, byte for
byte: the manifest, the quarantine, classes.json, relabels.csv, a zip's extracted files, and the same
summary (less timings), whatever the task count (1, 2, 3, automatic, more tasks than files), for
folders, buckets, zips and tables; duplicates and label conflicts across shards are found; the
whole-dataset checks fail the merge with one task's message."""
from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest

from imgclf.components.contracts import DatasetError
from imgclf.components.ingest import shards
from imgclf.components.ingest.shards import merge, plan, write_part
from imgclf.components.ingest.step import ingest
from imgclf.components.lib import sharding, storage
from tests.conftest import TEN, sample_files, tree_digest

OUTPUTS = ("manifest.csv", "quarantine.csv", "classes.json", "relabels.csv")


def sharded(data: str, tmp: Path, tasks: int, rng: random.Random | None = None, **opts):
    """plan, every shard task (in a random order: tasks finish in any order), merge."""
    indices = plan(data, str(tmp / "plan"), ingest_tasks=tasks, **opts)
    parts = {i: str(tmp / f"part{i}") for i in indices}
    order = list(indices)
    (rng or random.Random(0)).shuffle(order)
    for i in order:
        write_part(str(tmp / "plan"), i, parts[i], data=data, **opts)
    collected = [parts[i] for i in order]  # dsl.Collected gives no order promise either
    return len(indices), merge(str(tmp / "plan"), collected, str(tmp / "ds"), data=data,
                               report_html=str(tmp / "report.html"), **opts)


def assert_same(one: Path, many: Path, kind: str = "") -> None:
    for name in OUTPUTS:
        assert (one / name).is_file() == (many / name).is_file(), name
        if (one / name).is_file():
            assert (one / name).read_bytes() == (many / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, many))
    for timing in ("seconds", "workers"):
        a.pop(timing), b.pop(timing)
    assert a == b
    if kind == "zip":
        assert tree_digest(one / shards.EXTRACTED) == tree_digest(many / shards.EXTRACTED)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in many.iterdir())


def generated_folder(root: Path, rng: random.Random) -> Path:
    """Real images in 2-4 classes, maybe pre-split, with exact duplicates inside a class, the same image
    under two labels (a label conflict, possibly far apart in the listing), a copy in test/ of a
    training image, truncated files, a text file, and litter."""
    classes = rng.sample(TEN, rng.randint(2, 4))
    pre_split = rng.random() < 0.5
    written: list[Path] = []
    for cls in classes:
        for i, f in enumerate(sample_files(cls, rng.randint(11, 16), skip=rng.randint(0, 10))):
            split = ("train" if i % 4 else "test") if pre_split else ""
            dest = root / split / cls / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
            written.append(dest)
    for _ in range(rng.randint(1, 4)):
        kind, victim = rng.choice(["dup", "conflict", "truncated", "text", "litter"]), rng.choice(written)
        cls_dir = victim.parent
        if kind == "dup":
            shutil.copy(victim, cls_dir / f"copy{rng.randint(0, 999)}_{victim.name}")
        elif kind == "conflict":
            other = cls_dir.parent / rng.choice([c for c in classes if c != cls_dir.name])
            other.mkdir(parents=True, exist_ok=True)
            shutil.copy(victim, other / f"z{rng.randint(0, 999)}_{victim.name}")
        elif kind == "truncated":
            victim.write_bytes(victim.read_bytes()[: rng.randint(10, 200)])
        elif kind == "text":
            (cls_dir / f"notes{rng.randint(0, 99)}.png").write_text("not an image")
        else:
            (cls_dir / ".DS_Store").write_bytes(b"\0" * 8)
    return root


@pytest.mark.parametrize("seed", range(8))
def test_generated_folders_give_one_tasks_outputs_for_every_task_count(tmp_path, seed, monkeypatch):
    rng = random.Random(seed)
    src = generated_folder(tmp_path / "src", rng)
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0, "workers": rng.choice([0, 1, 2])}
    ingest(str(src), str(tmp_path / "one"), report_html=str(tmp_path / "one.html"), **opts)
    files = sum(1 for p in src.rglob("*") if p.is_file() and p.name != ".DS_Store")
    monkeypatch.setattr(shards, "FILES_PER_TASK", rng.randint(5, 40))  # automatic: several tasks
    expected_auto = sharding.task_count(files, files, 0, shards.FILES_PER_TASK, shards.AUTO_MAX)
    for tasks, expected in ((1, 1), (2, 2), (3, 3), (0, expected_auto), (files + 7, files)):
        work = tmp_path / f"t{tasks}"
        n, _ = sharded(str(src), work, tasks, rng, **opts)
        assert n == expected, (tasks, files)
        assert_same(tmp_path / "one", work / "ds")
        assert (work / "report.html").read_bytes() == (tmp_path / "one.html").read_bytes().replace(
            str(tmp_path / "one").encode(), str(work / "ds").encode())


def test_tasks_in_series_take_one_task_unless_asked(tmp_path, monkeypatch):
    src = generated_folder(tmp_path / "src", random.Random(99))
    monkeypatch.setattr(shards, "FILES_PER_TASK", 5)
    monkeypatch.setenv(sharding.IN_SERIES_ENV, "1")
    assert plan(str(src), str(tmp_path / "p1"), min_images_per_class=1) == [0]
    assert plan(str(src), str(tmp_path / "p2"), ingest_tasks=3, min_images_per_class=1) == [0, 1, 2]


def test_a_label_conflict_split_across_shards_is_found(tmp_path):
    """The two copies sit in the first and the last task's runs: only the merge can see both."""
    src = tmp_path / "src"
    for cls in TEN[:2]:
        (src / cls).mkdir(parents=True)
        for f in sample_files(cls, 12):
            shutil.copy(f, src / cls / f.name)
    first = sorted((src / TEN[0]).iterdir())[0]
    shutil.copy(first, src / TEN[1] / "zz_last.png")
    ingest(str(src), str(tmp_path / "one"))
    n, summary = sharded(str(src), tmp_path / "w", 4)
    assert n == 4 and summary.quarantine_reasons == {"label conflict": 2}
    assert_same(tmp_path / "one", tmp_path / "w" / "ds")


def test_the_dataset_checks_fail_the_merge_with_one_tasks_message(tmp_path):
    src = tmp_path / "src"
    for cls, n in ((TEN[0], 12), (TEN[1], 4)):
        (src / cls).mkdir(parents=True)
        for f in sample_files(cls, n):
            shutil.copy(f, src / cls / f.name)
    with pytest.raises(DatasetError) as single:
        ingest(str(src), str(tmp_path / "one"))
    with pytest.raises(DatasetError) as spread:
        sharded(str(src), tmp_path / "w", 3)
    assert str(spread.value) == str(single.value) and "fewer than 10" in str(single.value)
    assert not (tmp_path / "w" / "ds").exists()  # nothing partial left visible


def test_refusals_before_reading_happen_in_the_plan(tmp_path):
    src = tmp_path / "src"
    for cls in ("Cat", "cat"):
        (src / cls).mkdir(parents=True)
        shutil.copy(sample_files(TEN[0], 1)[0], src / cls / "a.png")
    with pytest.raises(DatasetError, match="differ only by case"):
        plan(str(src), str(tmp_path / "plan"))
    assert not (tmp_path / "plan").exists()


def test_a_part_missing_or_a_stray_shard_is_refused(tmp_path):
    src = generated_folder(tmp_path / "src", random.Random(3))
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0}
    assert plan(str(src), str(tmp_path / "plan"), ingest_tasks=2, **opts) == [0, 1]
    write_part(str(tmp_path / "plan"), 0, str(tmp_path / "p0"), data=str(src), **opts)
    with pytest.raises(ValueError, match="1 parts for a plan of 2"):
        merge(str(tmp_path / "plan"), [str(tmp_path / "p0")], str(tmp_path / "ds"), data=str(src), **opts)
    with pytest.raises(ValueError, match="shard 2: the plan has shard tasks 0 to 1"):
        write_part(str(tmp_path / "plan"), 2, str(tmp_path / "p2"), data=str(src), **opts)


def _zip_of(folder: Path, wrap: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{wrap}/{p.relative_to(folder).as_posix()}")
        zf.writestr("__MACOSX/._x", b"litter")
    return buf.getvalue()


@pytest.mark.parametrize("seed", range(3))
def test_zips_extract_once_and_the_dataset_holds_the_files(tmp_path, seed):
    rng = random.Random(100 + seed)
    archive = tmp_path / "data.zip"
    archive.write_bytes(_zip_of(generated_folder(tmp_path / "src", rng), "wrapped"))
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0}
    ingest(str(archive), str(tmp_path / "one"), **opts)
    for tasks in (1, 2, 3):
        n, summary = sharded(str(archive), tmp_path / f"t{tasks}", tasks, rng, **opts)
        assert n == tasks and summary.ignored_kinds["__MACOSX"] == 1
        assert_same(tmp_path / "one", tmp_path / f"t{tasks}" / "ds", kind="zip")


def test_tables_with_missing_rows_and_a_relabel(tmp_path):
    rng = random.Random(7)
    src = generated_folder(tmp_path / "src", rng)
    rows = [(p.relative_to(src).as_posix(), p.parent.name) for p in sorted(src.rglob("*.*")) if p.name != ".DS_Store"]
    rows += [("gone/missing.png", rows[0][1]), ("../outside.png", rows[0][1])]
    rng.shuffle(rows)
    table = src / "t.csv"
    table.write_text("path,label\n" + "".join(f"{p},{lbl}\n" for p, lbl in rows))
    relabel = tmp_path / "fix.csv"
    relabel.write_text(f"location,label\n{src / rows[1][0]},drop\n")
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0, "relabel": str(relabel)}
    ingest(str(table), str(tmp_path / "one"), **opts)
    assert (tmp_path / "one" / "relabels.csv").is_file()
    for tasks in (1, 2, 3):
        sharded(str(table), tmp_path / f"t{tasks}", tasks, rng, **opts)
        assert_same(tmp_path / "one", tmp_path / f"t{tasks}" / "ds")


def test_a_bucket_source(tmp_path, bucket):
    src = generated_folder(tmp_path / "src", random.Random(11))
    uri = f"{bucket[0]}/data"
    storage.upload_dir(str(src), uri)
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0}
    ingest(uri, str(tmp_path / "one"), **opts)
    for tasks in (2, 3):
        sharded(uri, tmp_path / f"t{tasks}", tasks, **opts)
        assert_same(tmp_path / "one", tmp_path / f"t{tasks}" / "ds")


@pytest.mark.slow
def test_a_3_shard_ingest_through_kfp_local_equals_one_task(tmp_path):
    """The pipelines' form, run by kfp.local: plan, a ParallelFor of 3 shard tasks, the merge."""
    from kfp import dsl

    from imgclf.pipelines.definitions.platform import LOCAL
    from imgclf.pipelines.definitions.training import sharded_ingest
    from imgclf.pipelines.local.run import run_pipeline

    src = generated_folder(tmp_path / "src", random.Random(5))
    opts = {"min_images_per_class": 1, "max_quarantined_share": 1.0}
    ingest(str(src), str(tmp_path / "one"), **opts)

    def ingest_pipeline() -> dsl.Dataset:
        return sharded_ingest({**opts, "data": str(src), "ingest_tasks": 3}, LOCAL).outputs["dataset"]

    ingest_pipeline.__annotations__["return"] = dsl.Dataset
    task, timings, _ = run_pipeline(dsl.pipeline(name="imgclf-ingest-shards")(ingest_pipeline), {}, str(tmp_path / "runs"))
    assert_same(tmp_path / "one", Path(task.output.path))
    run_dir = next((tmp_path / "runs").iterdir())
    parts = sorted(run_dir.glob("*-iteration-*/ingest-shard/part/part.json"))
    assert sorted(json.loads(p.read_text())["shard"] for p in parts) == [0, 1, 2]
    assert {"ingest-plan", "ingest-shard", "ingest"} <= set(timings)
