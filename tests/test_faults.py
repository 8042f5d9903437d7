"""Faults end a step or are refused by mechanism: a store outage is never quarantined as bad files, a
diverged (NaN) model never gets past train, the gate or publish, and training data reaches the model
class-mixed."""
from __future__ import annotations

import math
import os
import random
from collections import Counter

import pytest

from imgclf.components.contracts import Evaluation, RecordsMetadata
from imgclf.components.ingest.step import ingest
from imgclf.components.lib import records, storage
from imgclf.components.preprocess.step import preprocess
from tests import stores as st
from tests.conftest import TEN, make_folder


@pytest.mark.slow  # retries and back-off against a real server that went away: seconds per case
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


@pytest.mark.slow
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


@pytest.mark.unit
def test_a_diverged_loss_stops_training_whatever_the_value():
    from imgclf.components.train.step import TrainingDiverged, _finite_loss_guard

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
@pytest.mark.unit
def test_a_model_with_non_finite_metrics_never_passes_the_gate_nor_is_published(tmp_path, bad):
    from imgclf.components.lib import registry
    from imgclf.components.release.gate import gate

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
    assert len(shards) == -(-meta.count("train") // 40) >= 4
    for shard in shards:
        labels = [int(tf.io.parse_single_example(r, spec)[records.LABEL]) for r in tf.data.TFRecordDataset(shard)]
        assert len(set(labels)) >= 7, (shard, Counter(labels))
    for seed in range(3):
        ds = records.make_dataset(str(tmp_path / "pp"), meta, "train", 32, shuffle=True, seed=seed)
        first = next(iter(ds))[1].numpy()
        assert len(set(first.tolist())) >= 7, Counter(first.tolist())


def _seed_images() -> list[bytes]:
    """Real images in every format ingest admits, an animated GIF among them."""
    import io

    from PIL import Image

    from tests.conftest import sample_files

    out = []
    for i, path in enumerate(sample_files("Bag", 8) + sample_files("Coat", 4)):
        img = Image.open(path).convert("RGB" if i % 2 else "L").resize((40, 40))
        for fmt in ("PNG", "JPEG", "BMP", "GIF"):
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            out.append(buf.getvalue())
    frames = [Image.open(p).convert("P") for p in sample_files("Sandal", 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out.append(buf.getvalue())
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # truncated anywhere
        return data[:rng.randrange(len(data))]
    b = bytearray(data)
    if kind == 1:  # a few flipped bytes
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    elif kind == 2:  # the header rewritten
        for j in range(min(len(b), rng.randint(2, 40))):
            b[j] = rng.randrange(256)
    elif kind == 3:  # a chunk cut out of the middle
        a = rng.randrange(len(b))
        del b[a:a + rng.randint(1, 200)]
    else:  # junk appended, or the file emptied
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 500))) if rng.random() < 0.9 else b""
    return bytes(b)


@pytest.mark.unit
def test_ingest_and_preprocess_never_raise_on_mutated_real_images(tmp_path):
    """300 seeded mutations (truncations, byte flips, header edits, cut chunks, junk) of real PNG, JPEG,
    BMP, GIF and animated GIF files: every file ends up in the manifest or the quarantine with a cause,
    and preprocess decodes every admitted one."""
    from imgclf.components.contracts import read_manifest, read_quarantine

    rng = random.Random(19)
    seeds = _seed_images()
    src = make_folder(tmp_path / "src", ["Bag", "Coat"], 15)  # enough clean images for the dataset checks
    for n in range(300):
        data = _mutate(rng.choice(seeds), rng)
        (src / ("Bag", "Coat")[n % 2] / f"m{n:03d}.{rng.choice(['png', 'jpg', 'gif', 'bmp'])}").write_bytes(data)
    s = ingest(str(src), str(tmp_path / "ds"), max_quarantined_share=1.0, max_imbalance=1000)
    rows, _ = read_manifest(str(tmp_path / "ds"))
    quarantine = read_quarantine(str(tmp_path / "ds"))
    assert len(rows) + len(quarantine) == 330 and s.images == len(rows)  # nothing lost silently
    assert all(q["reason"] and q["detail"] for q in quarantine)
    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28, val_fraction=0.1, test_fraction=0.1)
    # Everything ingest admits, preprocess (the serving decoder) decodes.
    assert p.quarantined == 0 and sum(p.counts.values()) == len(rows)
    assert not [q for q in quarantine if "Graph execution" in q["detail"]]


@pytest.mark.unit
def test_table_rows_ingest_cannot_read_are_quarantined_with_their_cause(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = make_folder(tmp_path / "imgs", ["Bag", "Coat"], 12)
    paths = [str(p) for p in sorted(src.rglob("*.png"))]
    bad = ["ftp://127.0.0.1:9/a.png", "bad\x00name.png", "nosuchscheme://x/y.png", str(tmp_path / "gone.png")]
    pq.write_table(pa.table({"path": paths + bad, "label": [p.split("/")[-2] for p in paths] + ["Bag"] * 4}),
                   tmp_path / "labels.parquet")
    s = ingest(str(tmp_path / "labels.parquet"), str(tmp_path / "ds"))
    assert s.images == 24 and s.quarantined == 4
    from imgclf.components.contracts import read_quarantine

    reasons = {q["location"]: (q["reason"], q["detail"]) for q in read_quarantine(str(tmp_path / "ds"))}
    assert reasons[str(tmp_path / "gone.png")][0] == "missing"
    assert reasons[str(tmp_path / "bad\x00name.png")] == ("unreadable", "ValueError: embedded null byte")
    for uri in bad[0], bad[2]:
        assert reasons[uri][0].startswith("row ") and "unsupported URI scheme" in reasons[uri][0], reasons[uri]


@pytest.mark.unit
def test_a_table_given_by_a_relative_path_records_locations_every_later_step_resolves(tmp_path, monkeypatch):
    """Before: `--data data/labels.csv` stored working-folder-relative locations, which preprocess
    resolved against the dataset artifact: every image was lost."""
    from imgclf.components.contracts import read_manifest

    src = make_folder(tmp_path / "work" / "data", ["Bag", "Coat"], 12)
    lines = ["path,label"] + [f"{p.relative_to(src)},{p.parent.name}" for p in sorted(src.rglob("*.png"))]
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path / "work")
    ingest("data/labels.csv", str(tmp_path / "ds"))
    rows, _ = read_manifest(str(tmp_path / "ds"))
    assert rows and all(r["location"].startswith(str(src)) for r in rows)
    monkeypatch.chdir(tmp_path)  # the next step runs elsewhere (another task, another container)
    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28)
    assert sum(p.counts.values()) == 24 and p.quarantined == 0


def _zip(entries: dict[str, bytes], compression=None) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression or zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _image_entries(tmp_path) -> dict[str, bytes]:
    src = make_folder(tmp_path / "zsrc", ["Bag", "Coat"], 12)
    return {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*.png"))}


def test_archive_faults_name_the_url_and_leave_nothing_partial(tmp_path, http_dir):
    from imgclf.components.contracts import DatasetError

    root, url = http_dir
    entries = _image_entries(tmp_path)
    good = _zip(entries)
    (root / "good.zip").write_bytes(good)
    (root / "not.zip").write_bytes(b"<html>a login page, not an archive</html>")
    damaged = bytearray(good)
    first = next(iter(entries))
    at = damaged.index(first.encode()) + len(first) + 20  # inside the first entry's compressed stream
    damaged[at:at + 40] = bytes(40)
    (root / "damaged.zip").write_bytes(bytes(damaged))
    (root / "bomb.zip").write_bytes(_zip({**entries, **{f"Bag/zeros{i}.png": bytes(1 << 20) for i in range(40)}}))
    cases = [("missing.zip", DatasetError, rf"{url}/missing.zip: HTTP 404"),
             ("not.zip", DatasetError, rf"{url}/not.zip: not a valid zip archive"),
             ("damaged.zip", DatasetError, rf"{url}/damaged.zip: entry '.*' is damaged"),
             ("bomb.zip", DatasetError, rf"{url}/bomb.zip: expands \d+x as a whole")]
    for name, error, message in cases:
        with pytest.raises(error, match=message):
            ingest(f"{url}/{name}", str(tmp_path / "ds"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["www", "zsrc"], name  # no artifact, no download
    with pytest.raises(DatasetError, match="over the download limit"):
        ingest(f"{url}/good.zip", str(tmp_path / "ds"), max_download_bytes=len(good) // 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["www", "zsrc"]


def test_a_download_dropped_midway_is_retried(tmp_path, http_dir):
    root, url = http_dir
    port = int(url.rsplit(":", 1)[1])
    (root / "good.zip").write_bytes(_zip(_image_entries(tmp_path)))
    flaky = st.FlakyProxy(port, drops=1, cut_after=2000)
    try:
        assert ingest(f"{flaky.url}/good.zip", str(tmp_path / "ds")).images == 24
    finally:
        flaky.stop()
    assert flaky.dropped == 1


@pytest.mark.unit
def test_tables_in_other_encodings_or_damaged_name_the_file(tmp_path):
    from imgclf.components.contracts import DatasetError

    src = make_folder(tmp_path / "imgs", ["Bag", "Coat"], 12)
    text = "path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(src.rglob("*.png")))
    (tmp_path / "utf16.csv").write_bytes(text.encode("utf-16"))  # spreadsheet "Unicode text": BOM + UTF-16
    assert ingest(str(tmp_path / "utf16.csv"), str(tmp_path / "a")).images == 24
    (tmp_path / "latin1.csv").write_bytes((text + "caf\xe9.png,Bag\n").encode("latin-1"))
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'latin1.csv'}: not UTF-8 text"):
        ingest(str(tmp_path / "latin1.csv"), str(tmp_path / "b"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'broken.parquet'}: not a readable Parquet file"):
        ingest(str(tmp_path / "broken.parquet"), str(tmp_path / "c"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.unit
def test_formula_like_labels_are_neutralised_for_spreadsheets_and_exact_for_the_next_step(tmp_path):
    import csv

    from imgclf.components.contracts import read_manifest, read_quarantine
    from imgclf.components.lib import tables

    labels = ["=1+1", "=cmd|' /C calc'!A0", "@SUM(A1)", "+x", "-x", "'quoted"]
    src = make_folder(tmp_path / "imgs", TEN[:6], 10)
    rows = [f"{p},{labels[TEN.index(p.parent.name)]}" for p in sorted(src.rglob("*.png"))]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    lines = ["path,label", *[",".join(['"' + c.replace('"', '""') + '"' for c in r.rsplit(",", 1)]) for r in rows],
             f"{tmp_path / 'broken.png'},=HYPERLINK(\"http://x\")"]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    s = ingest(str(tmp_path / "labels.csv"), str(tmp_path / "ds"))
    assert sorted(s.classes) == sorted(labels) and s.quarantined == 1
    for name in ("manifest.csv", "quarantine.csv"):
        with open(tmp_path / "ds" / name, newline="", encoding="utf-8") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert not [c for c in cells if c.startswith(tables.FORMULA_STARTS[:-1])], name  # nothing a formula
    manifest, classes = read_manifest(str(tmp_path / "ds"))
    assert {r["label"] for r in manifest} == set(labels) == set(classes)
    assert read_quarantine(str(tmp_path / "ds"))[0]["label"] == '=HYPERLINK("http://x")'
    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28)
    assert sorted(RecordsMetadata.load(str(tmp_path / "pp")).classes) == sorted(labels) and p.quarantined == 0
    rng = random.Random(2)
    for _ in range(500):  # every string round-trips
        text = "".join(rng.choice("=+-@\t\r'a,\" ") for _ in range(rng.randrange(6)))
        assert tables.unescape(tables.escape(text)) == text


@pytest.mark.parametrize("names", [("Cat", "cat"), ("Caf\u00e9", "Cafe\u0301"), ("SHIRT", "Shirt", "shirt")])
@pytest.mark.unit
def test_class_names_equal_but_for_case_or_normalisation_are_refused_naming_both(tmp_path, names):
    from imgclf.components.contracts import DatasetError

    src = tmp_path / "src"
    for name, cls in zip(names, TEN):
        (src / name).mkdir(parents=True)
        for f in sorted((make_folder(tmp_path / "imgs", [cls], 10) / cls).glob("*.png")):
            (src / name / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="differ only by case or Unicode normalisation") as refused:
        ingest(str(src), str(tmp_path / "ds"))
    assert all(repr(n) in str(refused.value) for n in names)
    assert not (tmp_path / "ds").exists()


@pytest.mark.unit
def test_a_table_cannot_reach_local_files_outside_its_folder_unless_allowed(tmp_path):
    from imgclf.components.contracts import read_quarantine

    inside = make_folder(tmp_path / "t" / "imgs", ["Bag", "Coat"], 10)
    elsewhere = make_folder(tmp_path / "elsewhere", ["Bag"], 3, skip=20)
    (tmp_path / "t" / "link").symlink_to(elsewhere)
    rows = [f"{p},{p.parent.name}" for p in sorted(inside.rglob("*.png"))]
    rows += ["/etc/passwd,Bag", "../elsewhere/Bag/x.png,Bag", f"link/Bag/{next((elsewhere / 'Bag').iterdir()).name},Bag"]
    (tmp_path / "t" / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    s = ingest(str(tmp_path / "t" / "labels.csv"), str(tmp_path / "ds"))
    assert s.images == 20 and s.quarantined == 3
    assert all("outside the table's folder" in q["reason"] for q in read_quarantine(str(tmp_path / "ds")))
    allowed = ingest(str(tmp_path / "t" / "labels.csv"), str(tmp_path / "ds2"), allow_outside_paths=True)
    assert allowed.images == 21  # the linked image; /etc/passwd is no image, ../elsewhere/Bag/x.png does not exist


@pytest.mark.unit
def test_admission_follows_the_serving_decoder(tmp_path):
    """Before: WebP and camera JPEGs with an MPF segment ("MPO") were refused although the served model
    decodes them, and a PNG without its end chunk or a 1-bit BMP was admitted, then dropped by preprocess
    with "Graph execution error:"."""
    import io

    from PIL import Image

    from imgclf.components.contracts import read_quarantine

    src = make_folder(tmp_path / "src", ["Bag", "Coat"], 10)
    base = Image.open(next((src / "Bag").glob("*.png"))).convert("RGB").resize((48, 40))

    def save(name: str, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        (base.convert("1") if fmt == "BMP" else base).save(buf, fmt, **kw)
        (src / "Bag" / name).write_bytes(buf.getvalue())
        return buf.getvalue()

    save("web.webp", "WEBP")
    save("camera.jpg", "MPO", save_all=True, append_images=[base.rotate(90)])
    png = save("cut.png", "PNG")
    (src / "Bag" / "cut.png").write_bytes(png[:-12])  # the IEND chunk gone: PIL reads it, TensorFlow does not
    save("onebit.bmp", "BMP")
    s = ingest(str(src), str(tmp_path / "ds"), min_images_per_class=2)
    q = {x["location"].rsplit("/", 1)[1]: x for x in read_quarantine(str(tmp_path / "ds"))}
    assert set(q) == {"cut.png", "onebit.bmp"} and s.images == 22
    for name in q:
        assert q[name]["reason"] == "not decodable when served" and q[name]["detail"].startswith("TensorFlow: ")
        assert "Graph execution" not in q[name]["detail"]
    p = preprocess(str(tmp_path / "ds"), str(tmp_path / "pp"), image_size=28)
    assert p.quarantined == 0 and sum(p.counts.values()) == 22


def _fake_saved_model(root) -> tuple[str, str]:
    from imgclf.components.contracts import MODEL_FILE, TRAIN_FILE

    sm, model = root / "sm", root / "m"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"pb" * 100)
    model.mkdir()
    (model / MODEL_FILE).write_bytes(b"keras")
    (model / TRAIN_FILE).write_text("{}")
    return str(sm), str(model)


def _publish_concurrently(registry_uri: str, tmp_path, n: int) -> list[int]:
    import threading

    from imgclf.components.lib import registry

    sm, model = _fake_saved_model(tmp_path)
    start, got, errors = threading.Barrier(n), [], []

    def publisher(i):
        try:
            start.wait()
            got.append(registry.publish(sm, model, registry_uri, "fm", {"metrics": {"accuracy": 0.5 + i / 100},
                                                                        "source_run": f"run-{i}"}, lambda r: "card"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return got


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_publishers_take_distinct_versions_and_the_pointer_only_moves_forward(where, tmp_path, request):
    """Before: two publishers on an S3 registry both computed version N, both copied into N/ and both
    reported it: one model silently replaced the other."""
    from imgclf.components.lib import registry

    reg = str(tmp_path / "reg") if where == "local" else request.getfixturevalue("bucket")[0] + "/reg"
    got = _publish_concurrently(reg, tmp_path, 4)
    assert sorted(got) == [1, 2, 3, 4]
    assert registry.versions(reg, "fm") == [1, 2, 3, 4]
    runs = {registry.read_record(reg, "fm", v)["source_run"] for v in got}
    assert len(runs) == 4  # every publisher's model is there, none replaced
    assert registry.champion(reg, "fm")["version"] == 4
    # A slow publisher of an older version never moves the pointer back.
    assert not registry.advance_champion(reg, "fm", 2, {"version": 2})
    assert registry.champion(reg, "fm")["version"] == 4


@pytest.mark.unit
def test_a_local_create_only_write_is_never_seen_empty_or_partial(tmp_path):
    """Found when concurrent publishers failed under load: the pointer was created empty, then
    filled, and a reader in between parsed "" (json.JSONDecodeError). 300 rounds of a reader polling
    while a writer creates: the reader sees nothing, or all of it, with a tag that a write_if accepts."""
    import threading

    from imgclf.components.lib import storage

    for i in range(300):
        path = str(tmp_path / f"p{i}.json")
        data = (b'{"version": %d}' % i) * (1 + i % 50)
        seen = []

        def reader(path=path, seen=seen):
            while True:
                got = storage.read_versioned(path)
                if got is not None:
                    seen.append(got)
                    return

        t = threading.Thread(target=reader)
        t.start()
        storage.write_if(path, data, None)
        t.join(timeout=10)
        assert seen and seen[0][0] == data, (i, seen[:1])
        storage.write_if(path, b"next", seen[0][1])           # the tag read is the file's current one
        with pytest.raises(storage.PreconditionFailed):
            storage.write_if(path, b"stale", seen[0][1])     # and no longer once it was replaced
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_the_gcs_emulator_ignores_create_only_preconditions(bucket):
    """Said in the README: gcp-storage-emulator accepts a second if_generation_match=0 write, so the GCS
    path of the version claim cannot be shown here; real GCS refuses it (412)."""
    from imgclf.components.lib import storage

    _, gs = bucket
    storage.write_if(f"{gs}/claims/1", b"first", None)
    storage.write_if(f"{gs}/claims/1", b"second", None)  # real GCS: PreconditionFailed
    assert storage.read_versioned(f"{gs}/claims/1")[0] == b"second"


def test_ingest_never_raises_on_generated_table_rows(tmp_path, stores):
    """200 seeded rows of every awkward kind (other schemes, malformed bucket URIs, NUL bytes, '..',
    absolute paths, empty cells, unknown splits, odd labels): each row is an image or a quarantine entry;
    ingest never raises. s3:// rows go to the S3 server on 127.0.0.1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgclf.components.contracts import read_manifest, read_quarantine

    src = make_folder(tmp_path / "t" / "imgs", ["Bag", "Coat"], 12)
    good = [str(p) for p in sorted(src.rglob("*.png"))]
    rng = random.Random(11)
    pieces = ["imgs/Bag/", "../", "/etc/", "\x00", "ftp://127.0.0.1:9/", "s3://", "nosuch://", "~", " ", "%2e",
              "a" * 300, "\u00e9", "x.png", ".hidden.png", "", "imgs/Coat/" + os.path.basename(good[-1])]
    rows = [{"path": p, "label": p.split("/")[-2], "split": "train"} for p in good]
    for _ in range(200):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        label = rng.choice(["Bag", "Coat", "", " x", "=1+1", "a/b", "\u200b", "Bag"])
        rows.append({"path": path, "label": label, "split": rng.choice(["", "", "train", "test", "bogus"])})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t" / "labels.parquet")
    s = ingest(str(tmp_path / "t" / "labels.parquet"), str(tmp_path / "ds"), max_quarantined_share=1.0)
    manifest, _ = read_manifest(str(tmp_path / "ds"))
    assert len(manifest) + len(read_quarantine(str(tmp_path / "ds"))) == len(rows) and s.images == len(manifest)
