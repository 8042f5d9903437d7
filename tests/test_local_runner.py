"""The local runner's handling of a CSV/Parquet table source: `--cache` keys ingest on the images the
table's rows point to, not only on the table file; `--runner docker` mounts the folders they lie in."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import sample_files

pytestmark = pytest.mark.unit

CONTAINER = SimpleNamespace(image="imgclf:test", command=["python"], args=["-m", "x"], env=[])


def _table(folder: Path, rows: list[tuple[str, str]], name: str = "table.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / name
    table.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows), encoding="utf-8")
    return table


def _images(folder: Path, cls: str, n: int, skip: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder / src.name)) for src in sample_files(cls, n, skip)]


# ------------------------------------------------------------------------------------------- --cache
def test_the_cache_key_of_a_table_source_follows_the_images_its_rows_point_to(tmp_path):
    from imgclf.pipelines.local.cache import task_key

    bags = _images(tmp_path / "data" / "bags", "Bag", 2)
    elsewhere = _images(tmp_path / "elsewhere", "Trouser", 1)
    table = _table(tmp_path / "data", [(f"bags/{p.name}", "Bag") for p in bags]
                   + [(str(p), "Trouser") for p in elsewhere])
    args = {"data": str(table), "data_base_uri": "", "allow_outside_paths": True}
    first = task_key("comp-ingest", CONTAINER, args)
    assert first is not None and task_key("comp-ingest", CONTAINER, args) == first, "same inputs, same key"
    before = table.read_bytes()

    shutil.copy(sample_files("Bag", 1, skip=5)[0], bags[0])      # an image replaced behind the table
    assert table.read_bytes() == before
    second = task_key("comp-ingest", CONTAINER, args)
    assert second != first, "an image replaced behind an unchanged table must not be served from the cache"

    shutil.copy(sample_files("Trouser", 1, skip=5)[0], elsewhere[0])  # a row's absolute path, in another folder
    assert task_key("comp-ingest", CONTAINER, args) not in (first, second)


@pytest.mark.parametrize("source", ["folder", "table"])
@pytest.mark.parametrize("how", ["rewritten in place", "replaced by another file"])
def test_a_same_size_replacement_with_its_old_mtime_changes_the_cache_key(tmp_path, source, how):
    """What `cp -p`, `rsync -a` or `tar x` leave: other bytes, the same size, the old modification time."""
    import time

    from imgclf.pipelines.local.cache import task_key

    bags = _images(tmp_path / "data" / "bags", "Bag", 1)
    image = bags[0]
    args = {"data": str(tmp_path / "data")} if source == "folder" else \
        {"data": str(_table(tmp_path / "meta", [(str(image), "Bag")])), "allow_outside_paths": True}
    first = task_key("comp-ingest", CONTAINER, args)
    old = image.stat()
    other = bytes(b ^ 0xFF for b in image.read_bytes())
    time.sleep(0.02)  # past the kernel's coarse file clock, as any real later copy is
    if how == "rewritten in place":
        image.write_bytes(other)
    else:
        staged = image.with_name(image.name + ".part")
        staged.write_bytes(other)
        os.replace(staged, image)
    os.utime(image, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = image.stat()
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns) and image.read_bytes() == other
    assert task_key("comp-ingest", CONTAINER, args) != first, "a stale hit: the old outputs for new bytes"


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq", ".CSV"])
def test_the_cache_sees_a_table_wherever_ingest_does(tmp_path, suffix):
    """One list of table suffixes (components/ingest/sources.py): a table ingest reads whose images the
    cache did not key on would be served stale after an image changed."""
    from imgclf.components.ingest import sources
    from imgclf.pipelines.local.cache import table_rows

    assert suffix.lower() in sources.TABLE_SUFFIXES
    bags = _images(tmp_path / "data", "Bag", 1)
    table = _table(tmp_path / "data", [(bags[0].name, "Bag")])
    if suffix.lower() != ".csv":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"path": [bags[0].name], "label": ["Bag"]}), table.with_suffix(suffix))
    table = table.rename(table.with_suffix(suffix)) if suffix.lower() == ".csv" else table.with_suffix(suffix)
    assert sources.resolve(str(table), tmp_path / "out").kind == "table"
    assert table_rows(str(table)) == ([os.path.abspath(bags[0])], False)


def test_a_table_with_remote_rows_is_never_served_from_the_cache(tmp_path):
    from imgclf.pipelines.local.cache import task_key

    bags = _images(tmp_path / "data", "Bag", 1)
    table = _table(tmp_path / "data", [(bags[0].name, "Bag"), ("s3://bucket/bag.png", "Bag")])
    assert task_key("comp-ingest", CONTAINER, {"data": str(table)}) is None, "what the bucket holds is unknown"


# ------------------------------------------------------------------------------------- --runner docker
class _Engine:
    """Enough of docker.DockerClient for docker_runner's checks: an engine that answers and has the image."""

    def __init__(self):
        self.images = SimpleNamespace(get=lambda image: object())

    def ping(self):
        return True

    def close(self):
        pass


@pytest.fixture
def planned(monkeypatch):
    """docker_runner(params) -> {mounted path: read_only}, its network, and the params it returns."""
    import docker

    from imgclf.pipelines.local.docker_runner import docker_runner

    monkeypatch.setattr(docker, "from_env", _Engine)

    def plan(params: dict):
        runner, params = docker_runner(params, "imgclf:test")
        run_args = runner.container_run_args
        return {m["Source"]: m["ReadOnly"] for m in run_args["mounts"]}, run_args["network_mode"], params

    return plan


def test_docker_mounts_the_folders_a_tables_rows_point_into(tmp_path, planned):
    bags = _images(tmp_path / "data" / "bags", "Bag", 2)
    shirts = _images(tmp_path / "data" / "more" / "shirts", "Shirt", 1)
    elsewhere = _images(tmp_path / "elsewhere" / "trousers", "Trouser", 1)
    table = _table(tmp_path / "data" / "tables", [(f"../bags/{p.name}", "Bag") for p in bags]
                   + [(f"../more/shirts/{shirts[0].name}", "Shirt"), (str(elsewhere[0]), "Trouser")])
    mounts, network, params = planned({"data": str(table), "allow_outside_paths": True})
    assert params["data"] == str(table.resolve())
    assert mounts == {str(table.resolve()): True, str((tmp_path / "data" / "bags").resolve()): True,
                      str((tmp_path / "data" / "more" / "shirts").resolve()): True,
                      str((tmp_path / "elsewhere" / "trousers").resolve()): True}, "each folder once, read-only"
    assert network == "none"


def test_docker_mounts_nothing_for_uri_rows_and_no_folder_twice(tmp_path, planned):
    bags = _images(tmp_path / "data" / "bags", "Bag", 2)
    table = _table(tmp_path / "data", [(f"bags/{p.name}", "Bag") for p in bags] + [("s3://bucket/a.png", "Bag")])
    mounts, network, _ = planned({"data": str(table), "data_base_uri": str(tmp_path / "data")})
    assert mounts == {str(table.resolve()): True, str((tmp_path / "data").resolve()): True}, \
        "rows inside data_base_uri's mount need no mount of their own; an s3:// row none at all"
    assert network == "host", "a row in a bucket is read over the network"


def test_docker_does_not_mount_rows_ingest_would_quarantine(tmp_path, planned):
    inside = _images(tmp_path / "data" / "bags", "Bag", 1)
    outside = _images(tmp_path / "secret", "Bag", 1)
    table = _table(tmp_path / "data", [(f"bags/{inside[0].name}", "Bag"), (str(outside[0]), "Bag")])
    mounts, _, _ = planned({"data": str(table)})
    assert str((tmp_path / "secret").resolve()) not in mounts, "outside the table's folder: never read, never mounted"
    assert str((tmp_path / "data" / "bags").resolve()) in mounts
