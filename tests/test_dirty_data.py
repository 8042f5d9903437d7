"""A dirty dataset built from real images: every kind of bad input, exact counts per reason, training
on the clean rest, and no test image with a copy in training."""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imgclf.components.contracts import DatasetError, RecordsMetadata, read_manifest, read_quarantine
from imgclf.components.ingest.step import ingest
from imgclf.components.lib import records
from imgclf.components.preprocess.step import preprocess
from imgclf.components.train.step import train
from tests.conftest import TWO, make_folder, sample_files, tree_digest


def _save(img: Image.Image, path, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    path.write_bytes(b.getvalue())
    return b.getvalue()


def _real(cls: str, k: int) -> Image.Image:
    """A real image not used by make_folder(…, 12): taken from further down the class folder."""
    return Image.open(sample_files(cls, 1, skip=100 + k)[0]).convert("RGB")


@pytest.fixture
def dirty(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 12)
    bag, trouser = root / "Bag", root / "Trouser"
    # usable after conversion: CMYK, 16-bit, palette, alpha, EXIF-rotated, animated, wrong extension,
    # awkward names
    _save(_real("Bag", 0).convert("CMYK"), bag / "cmyk.jpg", "JPEG")
    _save(Image.fromarray(np.asarray(_real("Bag", 1).convert("L")).astype(np.uint16) * 257), bag / "gray16.png", "PNG")
    _save(_real("Bag", 2).convert("P"), bag / "palette.png", "PNG")
    _save(_real("Bag", 3).convert("RGBA"), bag / "alpha.png", "PNG")
    ex = Image.Exif()
    ex[0x0112] = 6
    _save(_real("Trouser", 0), trouser / "phone photo.jpg", "JPEG", exif=ex.tobytes())
    frames = [_real("Trouser", 1), _real("Trouser", 2)]
    frames[0].save(trouser / "anim.gif", save_all=True, append_images=frames[1:])
    _save(_real("Trouser", 3), trouser / "really-a-png.jpg", "PNG")
    _save(_real("Trouser", 4), trouser / "-dash ünï.png", "PNG")
    # quarantined
    (bag / "empty.png").write_bytes(b"")
    good = _save(_real("Bag", 4), tmp_path / "scratch.jpg", "JPEG")
    (bag / "cut.jpg").write_bytes(good[: len(good) // 2])
    png = (bag / "palette.png").read_bytes()
    (bag / "cut.png").write_bytes(png[: len(png) // 2])
    (trouser / "notes.png").write_text("not an image\n")
    _save(_real("Trouser", 5), trouser / "scan.tiff", "TIFF")
    _save(_real("Trouser", 6), trouser / "modern.webp", "WEBP")
    _save(Image.new("L", (8000, 6000)), bag / "bomb.png", "PNG")                 # 48 Mpx > 40 Mpx limit
    shutil.copy(sorted(bag.glob("*.png"))[0], bag / "copy of first.png")        # exact duplicate
    conflict = _save(_real("Bag", 5), bag / "conflict.png", "PNG")                # same picture, two labels
    (trouser / "conflict.png").write_bytes(conflict)
    (bag / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "stray.png").write_bytes(conflict)
    os.symlink(tmp_path / "scratch.jpg", bag / "outside.jpg")
    (root / "\u200bBag").mkdir()                                                # invisible character
    _save(_real("Bag", 6), root / "\u200bBag" / "x.png", "PNG")
    return root


# WebP counts as usable (the served model decodes it); TIFF does not.
EXPECTED = {"truncated or corrupt": 2, "empty file": 1, "not an image": 1, "unsupported format": 1,
            "too many pixels": 1, "exact duplicate": 1, "label conflict": 2,
            "not inside a class folder": 1, "symlink pointing outside the source folder": 1,
            "invalid class name": 1}


def test_dirty_folder_exact_counts_then_training_on_the_clean_rest(dirty, tmp_path):
    before = tree_digest(dirty)
    s = ingest(str(dirty), str(tmp_path / "ds"), report_html=str(tmp_path / "ingest.html"))
    assert s.quarantine_reasons == EXPECTED
    assert s.ignored_kinds == {".DS_Store": 1}  # litter: ignored, not quarantined
    assert s.per_class == {"Bag": 12 + 4, "Trouser": 12 + 5}
    assert s.notes == {"PNG file named .jpg": 1, "animated, first frame used": 1}
    assert tree_digest(dirty) == before, "nothing in the user's source may change"
    q = read_quarantine(str(tmp_path / "ds"))
    conflict = [x for x in q if x["reason"] == "label conflict"]
    assert {x["label"] for x in conflict} == {"Bag", "Trouser"} and "Bag, Trouser" in conflict[0]["detail"]
    html = (tmp_path / "ingest.html").read_text()
    for reason in EXPECTED:
        assert reason in html
    assert html.count("data:image/png;base64,") >= 2 and "cut.jpg" in html
    assert "ignored files (OS and notebook litter, not data)" in html and "1 (.DS_Store 1)" in html

    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, color_mode="rgb",
                   val_fraction=0.15, test_fraction=0.25, seed=0)
    assert p.quarantined == 0 and sum(p.counts.values()) == 33
    tr = train(str(tmp_path / "pp"), str(tmp_path / "model"), epochs=1, batch_size=8, width=8, depth=2)
    assert tr.epochs_run == 1
    # the awkward modes really were ingested (and converted in preprocess, see test_converted_pixels)
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    rows, _ = read_manifest(str(tmp_path / "ds"))
    modes = {r["mode"] for r in rows}
    assert {"CMYK", "P", "RGBA"} <= modes and any(m.startswith("I") for m in modes), modes
    assert meta.input.channels == 3


def test_pre_split_copies_never_leak_and_near_duplicates_are_reported(tmp_path):
    root = tmp_path / "src"
    make_folder(root / "train", TWO, 12)
    make_folder(root / "test", TWO, 10, skip=12)
    leaked = sorted((root / "train" / "Bag").iterdir())[0]
    shutil.copy(leaked, root / "test" / "Bag" / "leaked-copy.png")                     # exact copy
    near_src = sorted((root / "train" / "Trouser").iterdir())[1]
    Image.open(near_src).convert("RGB").save(root / "test" / "Trouser" / "reencoded.jpg", quality=90)
    s = ingest(str(root), str(tmp_path / "ds"))
    assert s.quarantine_reasons == {"duplicate across splits": 1}
    q = read_quarantine(str(tmp_path / "ds"))
    assert q[0]["location"].endswith("test/Bag/leaked-copy.png") and "kept out of test" in q[0]["detail"]

    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, val_fraction=0.1)
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    assert p.near_duplicates >= 1
    assert any(n["location"].endswith("reencoded.jpg") and n["train_location"] == str(near_src)
               for n in meta.near_duplicates)
    # no test image has a byte-identical twin in train
    sha = {r["location"]: r["sha256"] for r in read_manifest(str(tmp_path / "ds"))[0]}
    split_sha = {}
    for split in ("train", "test"):
        ds = records.make_dataset(str(tmp_path / "pp"), meta, split, 100, with_extras=True)
        split_sha[split] = {sha[loc.decode()] for _, _, locs, _ in ds for loc in locs.numpy()}
    assert split_sha["test"] and not split_sha["test"] & split_sha["train"]

    p2 = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp2"), image_size=28, val_fraction=0.1,
                    drop_near_duplicates=True)
    assert p2.counts["test"] == p.counts["test"] - sum(n["split"] == "test" for n in meta.near_duplicates)


@pytest.mark.unit
def test_animated_images_can_be_refused(tmp_path):
    root = make_folder(tmp_path / "src", TWO, 10)
    frames = [_real("Bag", 0), _real("Bag", 1)]
    frames[0].save(root / "Bag" / "anim.gif", save_all=True, append_images=frames[1:])
    assert ingest(str(root), str(tmp_path / "a")).images == 21
    s = ingest(str(root), str(tmp_path / "b"), animated="refuse")
    assert s.images == 20 and s.quarantine_reasons == {"animated image": 1}


@pytest.mark.parametrize("kwargs,message", [
    ({"min_images_per_class": 11}, r"1 class\(es\) have fewer than 11 usable images: Bag \(10\) "),
    ({"max_imbalance": 1.5}, r"imbalanced 2x \(Trouser: 20, Bag: 10\)"),
    ({"max_quarantined_share": 0.2}, r"10 of 40 files \(25%\) were quarantined"),
])
@pytest.mark.unit
def test_dataset_checks_fail_the_run_with_a_clear_message(tmp_path, kwargs, message):
    root = make_folder(tmp_path / "src", ["Bag"], 10)
    make_folder(root, ["Trouser"], 20)
    for i in range(10):
        (root / "Bag" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DatasetError, match=message):
        ingest(str(root), str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()


def test_converted_pixels_in_records(dirty, tmp_path):
    """Alpha becomes white and EXIF rotation is applied in what training sees."""
    ingest(str(dirty), str(tmp_path / "ds"))
    preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, val_fraction=0.15, test_fraction=0.25)
    meta = RecordsMetadata.load(str(tmp_path / "pp"))
    seen = {}
    for split in ("train", "validation", "test"):
        ds = records.make_dataset(str(tmp_path / "pp"), meta, split, 100, with_extras=True)
        for pixels, _, locs, _ in ds:
            for p, loc in zip(pixels.numpy(), locs.numpy()):
                seen[os.path.basename(loc.decode())] = p
    from imgclf.components.lib import images
    for name in ("alpha.png", "phone photo.jpg", "cmyk.jpg", "gray16.png"):
        raw = next(dirty.rglob(name)).read_bytes()
        np.testing.assert_array_equal(seen[name], images.tf_decode_resize(tf.constant(raw), 28, 3).numpy())
    assert seen["alpha.png"].shape == (28, 28, 3)


def _damaged(rng: np.random.Generator, data: bytes) -> bytes:
    """A generated fault in an image file: cut short, bytes flipped, or its header smashed."""
    kind = rng.integers(3)
    if kind == 0:
        return data[: int(rng.integers(1, len(data)))]
    buf = bytearray(data)
    at = rng.integers(0, len(buf), size=int(rng.integers(1, 12))) if kind == 1 else np.arange(min(16, len(buf)))
    for i in at:
        buf[i] ^= int(rng.integers(1, 256))
    return bytes(buf)


@pytest.mark.unit
def test_forked_readers_find_exactly_what_threads_find(dirty, tmp_path):
    """Local files are checked in forked reader processes, in windows of batches; the served-decoder check
    runs in the step's own process. On the dirty folder plus 150 generated faults (cut, bit-flipped or
    header-smashed copies of real JPEGs and PNGs, and generated exact duplicates), the manifest,
    quarantine and summary are the ones a single thread writes, row for row, in the same order."""
    rng = np.random.default_rng(17)
    for k, src in enumerate(sample_files("Bag", 50, skip=200) + sample_files("Trouser", 50, skip=200)):
        data = src.read_bytes()
        if k % 2:
            data = _save(Image.open(src).convert("RGB"), tmp_path / "scratch.jpg", "JPEG", quality=int(rng.integers(50, 95)))
        cls = dirty / src.parent.name
        (cls / f"gen{k:03d}.{'jpg' if k % 2 else 'png'}").write_bytes(_damaged(rng, data) if k % 3 else data)
        if k % 7 == 0:
            (cls / f"gen{k:03d} copy.{'jpg' if k % 2 else 'png'}").write_bytes(data)
    outs = {}
    for workers in (1, 3):
        s = ingest(str(dirty), str(tmp_path / f"w{workers}"), workers=workers)
        assert s.workers == workers
        outs[workers] = {name: (tmp_path / f"w{workers}" / name).read_text()
                         for name in ("manifest.csv", "quarantine.csv", "classes.json")}
        summary = json.loads((tmp_path / f"w{workers}" / "summary.json").read_text())
        outs[workers]["summary"] = {k: v for k, v in summary.items() if k not in ("seconds", "workers")}
    assert outs[1] == outs[3]
    reasons = outs[3]["summary"]["quarantine_reasons"]
    assert reasons["truncated or corrupt"] + reasons.get("not decodable when served", 0) > 40, reasons
    # the fixture's own copy, and a generated copy of every undamaged image with k % 7 == 0
    assert reasons["exact duplicate"] == 1 + sum(k % 7 == 0 and k % 3 == 0 for k in range(100)), reasons


@pytest.mark.unit
def test_a_store_failure_in_a_forked_reader_ends_ingest_naming_the_file(dirty, tmp_path, monkeypatch):
    """A failure of the store itself, raised in a reader process, ends the step with the URI, and no
    output is left: not one quarantined file among many."""
    from imgclf.components.lib import storage

    real = storage.read_bytes

    def failing(uri, *a, **kw):
        if uri.endswith("palette.png"):
            raise storage.StorageError(f"{uri}: the disk went away")
        return real(uri, *a, **kw)

    monkeypatch.setattr(storage, "read_bytes", failing)  # the forked readers inherit it
    with pytest.raises(storage.StorageError, match=r"palette\.png: the disk went away"):
        ingest(str(dirty), str(tmp_path / "ds"), workers=2)
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]
