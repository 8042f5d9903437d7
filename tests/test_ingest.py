"""Ingest on real images: both folder layouts, broken files quarantined with reasons, source untouched."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
from PIL import Image

from imgclf.components.contracts import DatasetError, read_manifest, read_quarantine
from imgclf.components.ingest.step import ingest
from tests.conftest import TWO, make_folder, sample_files, tree_digest

pytestmark = pytest.mark.unit


def test_class_per_subfolder(two_class_folder, tmp_path):
    s = ingest(str(two_class_folder), str(tmp_path / "out"))
    assert s.layout == "class-per-subfolder"
    assert s.classes == ["Bag", "Trouser"]
    assert s.per_class == {"Bag": 30, "Trouser": 30}
    rows, classes = read_manifest(str(tmp_path / "out"))
    assert classes == ["Bag", "Trouser"] and len(rows) == 60
    row = next(r for r in rows if r["location"].endswith(".jpg"))
    assert row["format"] == "JPEG" and row["split"] == "" and int(row["width"]) == 28
    with open(row["location"], "rb") as f:
        data = f.read()
    import hashlib
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and int(row["bytes"]) == len(data)


@pytest.mark.parametrize("val_name", ["validation", "val"])
def test_pre_split_layout(tmp_path, val_name):
    root = tmp_path / "src"
    make_folder(root / "train", TWO, 12)
    make_folder(root / val_name, TWO, 4, skip=12)
    make_folder(root / "test", TWO, 5, skip=16)
    s = ingest(str(root), str(tmp_path / "out"))
    assert s.layout == "pre-split"
    assert s.per_split == {"test": 10, "train": 24, "validation": 8}
    rows, _ = read_manifest(str(tmp_path / "out"))
    assert {r["split"] for r in rows if f"/{val_name}/" in r["location"]} == {"validation"}


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_broken_files_are_quarantined_with_reasons(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 10, jpeg_every=2)
    good_png = sample_files("Bag", 1, skip=50)[0].read_bytes()
    jpeg = io.BytesIO()
    Image.open(sample_files("Bag", 1, skip=51)[0]).convert("RGB").save(jpeg, "JPEG")
    tiff = io.BytesIO()
    Image.open(sample_files("Bag", 1, skip=52)[0]).save(tiff, "TIFF")
    broken = {
        "Bag/empty.png": b"",
        "Bag/truncated.png": _truncate(good_png),
        "Bag/truncated.jpg": _truncate(jpeg.getvalue()),
        "Trouser/notes.png": b"this is not an image\n" * 10,
        "Trouser/scan.tiff": tiff.getvalue(),
        "Trouser/.DS_Store": b"\0\0\0\1Bud1",
        "stray.png": good_png,
    }
    for rel, data in broken.items():
        (root / rel).write_bytes(data)
    outside = tmp_path / "outside.png"
    outside.write_bytes(good_png)
    os.symlink(outside, root / "Bag" / "link-outside.png")
    before = tree_digest(root)

    s = ingest(str(root), str(tmp_path / "out"))

    assert s.images == 20 and s.per_class == {"Bag": 10, "Trouser": 10}
    assert s.quarantine_reasons == {
        "empty file": 1, "truncated or corrupt": 2, "not an image": 1, "unsupported format": 1,
        "not inside a class folder": 1, "symlink pointing outside the source folder": 1}
    # .DS_Store is litter, not a broken file: ignored and counted on its own, never quarantined
    assert s.ignored == 1 and s.ignored_kinds == {".DS_Store": 1}
    q = {os.path.basename(r["location"]): r for r in read_quarantine(str(tmp_path / "out"))}
    assert q["truncated.png"]["reason"] == "truncated or corrupt"
    assert "TIFF" in q["scan.tiff"]["detail"]
    assert tree_digest(root) == before, "ingest must never modify the user's source"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["quarantined"] == 7 and summary["ignored"] == 1


def test_pixel_limit_refuses_large_images(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 10)
    Image.new("L", (400, 300)).save(root / "Bag" / "big.png")
    s = ingest(str(root), str(tmp_path / "out"), max_pixels=100_000)
    assert s.quarantine_reasons == {"too many pixels": 1}
    (q,) = read_quarantine(str(tmp_path / "out"))
    assert q["detail"] == "400x300 = 120,000 pixels exceed the limit of 100,000 pixels (max_pixels)"


def test_pixel_bomb_reason_quotes_our_limit_even_when_pil_refuses_first(tmp_path):
    """100 M pixels trip PIL's own guard (89 M) before our check: the reason still names max_pixels."""
    root = make_folder(tmp_path / "src", TWO, 10)
    Image.new("1", (10_000, 10_000)).save(root / "Bag" / "bomb.png")  # a few kB on disk
    ingest(str(root), str(tmp_path / "out"))
    (q,) = read_quarantine(str(tmp_path / "out"))
    assert q["reason"] == "too many pixels"
    assert q["detail"] == "100,000,000 pixels exceed the limit of 40,000,000 pixels (max_pixels)"


def test_single_class_is_a_clear_error_and_leaves_no_output(tmp_path):
    root = make_folder(tmp_path / "src", ["Bag"], 5)
    with pytest.raises(DatasetError, match="at least 2 class"):
        ingest(str(root), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_manifest_is_valid_csv_with_awkward_names(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 10)
    names = ["with space.png", "ünïcødé.png", "-leading-dash.png", "comma,in,name.png"]
    for name, src in zip(names, sample_files("Bag", 4, skip=40)):
        (root / "Bag" / name).write_bytes(src.read_bytes())
    ingest(str(root), str(tmp_path / "out"))
    with open(tmp_path / "out" / "manifest.csv", newline="", encoding="utf-8") as f:
        names = {os.path.basename(r["location"]) for r in csv.DictReader(f)}
    assert {"with space.png", "ünïcødé.png", "-leading-dash.png", "comma,in,name.png"} <= names


def test_reader_batches_are_bounded_by_files_and_bytes():
    """Forked readers pass each file's bytes back: a batch holds at most `files` files and `max_bytes` of
    them (a larger file alone), and the batches are the items in order, none lost or repeated. 300
    generated listings, sizes from empty files to ones larger than a batch."""
    import random

    from imgclf.components.ingest.sources import Item
    from imgclf.components.ingest.step import batched
    from imgclf.components.lib.storage import Entry

    rng = random.Random(11)
    for case in range(300):
        files, max_bytes = rng.randint(1, 70), rng.randint(1, 5000)
        sizes = [rng.choice([0, rng.randint(1, 200), rng.randint(1, 2 * max_bytes)]) for _ in range(rng.randint(0, 400))]
        items = [Item(Entry(f"{k}.png", f"/x/{k}.png", size), f"/x/{k}.png", "a", "") for k, size in enumerate(sizes)]
        out = list(batched(items, files, max_bytes))
        assert [i for b in out for i in b] == items, case
        for b in out:
            assert 1 <= len(b) <= files, case
            assert len(b) == 1 or sum(i.entry.size for i in b) <= max_bytes, case
        # greedy: a batch ends only when the next file would break a bound
        for b, nxt in zip(out, out[1:]):
            assert len(b) == files or sum(i.entry.size for i in b) + nxt[0].entry.size > max_bytes, case
