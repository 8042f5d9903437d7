"""Storage through real stores: moto's S3 server (the S3 API MinIO speaks), a GCS emulator, zip archives
over HTTP, CSV/Parquet tables, and faults (missing bucket, denied access, endpoint down, dropped
connections)."""
from __future__ import annotations

import io
import os
import zipfile

import pytest

from imgclf.components.contracts import DatasetError, read_manifest, read_quarantine
from imgclf.components.ingest.step import ingest
from imgclf.components.lib import storage
from imgclf.components.preprocess.step import preprocess
from tests import stores as st
from tests.conftest import TWO, make_folder, sample_files


@pytest.mark.parametrize("proto", ["s3", "gs", "minio"])
def test_ingest_and_preprocess_from_a_bucket_in_both_layouts(bucket, tmp_path, proto):
    # minio:// is s3:// against the configured endpoint (KFP's pipeline-root scheme)
    root = {"s3": bucket[0], "gs": bucket[1], "minio": bucket[0].replace("s3://", "minio://")}[proto]
    flat = make_folder(tmp_path / "flat", TWO, 10, jpeg_every=2)
    split = tmp_path / "split"
    make_folder(split / "train", TWO, 10)
    make_folder(split / "val", TWO, 3, skip=10)
    make_folder(split / "test", TWO, 3, skip=13)
    storage.upload_dir(str(flat), f"{root}/flat")
    storage.upload_dir(str(split), f"{root}/split")

    s = ingest(f"{root}/flat", str(tmp_path / "ds1"))
    assert s.layout == "class-per-subfolder" and s.per_class == {"Bag": 10, "Trouser": 10}
    rows, _ = read_manifest(str(tmp_path / "ds1"))
    assert all(r["location"].startswith(f"{root}/flat/") for r in rows)

    s = ingest(f"{root}/split", str(tmp_path / "ds2"))
    assert s.layout == "pre-split" and s.per_split == {"test": 6, "train": 20, "validation": 6}
    p = preprocess(str(tmp_path / "ds2"), str(tmp_path / "pp"), image_size=28)
    assert p.counts == {"train": 20, "validation": 6, "test": 6}
    # the same images from local disk give the same data fingerprint: content, not location
    ingest(str(split), str(tmp_path / "ds3"))
    assert preprocess(str(tmp_path / "ds3"), str(tmp_path / "pp3"), image_size=28).data_fingerprint == \
        p.data_fingerprint


def _zip_of(folder, wrap: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{wrap}{path.relative_to(folder).as_posix()}")
        zf.writestr("__MACOSX/._junk", b"\0")
    return buf.getvalue()


def test_zip_url_like_cats_and_dogs_filtered(tmp_path, http_dir):
    www, url = http_dir
    src = tmp_path / "src"
    make_folder(src / "train", TWO, 10)
    make_folder(src / "validation", TWO, 4, skip=10)
    (www / "cats_and_dogs_filtered.zip").write_bytes(_zip_of(src, wrap="cats_and_dogs_filtered/"))
    out = tmp_path / "ds"
    s = ingest(f"{url}/cats_and_dogs_filtered.zip", str(out))
    assert s.layout == "pre-split" and s.per_split == {"train": 20, "validation": 8}
    rows, _ = read_manifest(str(out))
    assert all(r["location"].startswith("files/cats_and_dogs_filtered/") for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".download.zip")]
    # the extracted images travel inside the artifact: preprocess needs nothing else
    moved = tmp_path / "moved"
    out.rename(moved)
    p = preprocess(str(moved), str(tmp_path / "pp"), image_size=28, test_fraction=0.2)
    # validation/ kept as given; test carved from train/ by the content-hash rule, every class in it
    assert p.counts["validation"] == 8 and p.counts["train"] + p.counts["test"] == 20 and p.counts["test"] >= 2


def test_zip_from_a_bucket_and_download_limit(bucket, tmp_path):
    src = make_folder(tmp_path / "src", TWO, 10)
    data = _zip_of(src)
    fs, path = storage.filesystem(f"{bucket[0]}/d.zip")
    fs.pipe(path, data)
    assert ingest(f"{bucket[0]}/d.zip", str(tmp_path / "ds")).images == 20
    with pytest.raises(DatasetError, match="over the download limit"):
        ingest(f"{bucket[0]}/d.zip", str(tmp_path / "ds2"), max_download_bytes=len(data) // 2)
    assert not (tmp_path / "ds2").exists()


def _hostile(kind: str) -> bytes:
    buf = io.BytesIO()
    png = sample_files("Bag", 1)[0].read_bytes()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Bag/ok.png", png)
        zf.writestr("Trouser/ok.png", png)
        if kind == "dotdot":
            zf.writestr("Bag/../../evil.png", png)
        elif kind == "absolute":
            zf.writestr(zipfile.ZipInfo("/etc/evil.png"), png)
        elif kind == "symlink":
            info = zipfile.ZipInfo("Bag/link.png")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
        elif kind == "bomb":
            zf.writestr("Bag/bomb.png", b"\0" * (20 << 20))
    return buf.getvalue()


@pytest.mark.parametrize("kind,message", [("dotdot", "outside the extraction folder"), ("absolute", "absolute path"),
                                          ("symlink", "symbolic link"), ("bomb", "zip bomb")])
def test_hostile_archives_are_refused_whole(tmp_path, http_dir, kind, message):
    www, url = http_dir
    (www / "x.zip").write_bytes(_hostile(kind))
    with pytest.raises(DatasetError, match=message):
        ingest(f"{url}/x.zip", str(tmp_path / "out" / "ds"))
    assert not (tmp_path / "out" / "ds").exists() and not (tmp_path / "evil.png").exists()
    assert not list((tmp_path / "out").iterdir()), "nothing may be left behind"


def test_csv_and_parquet_tables(bucket, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = make_folder(tmp_path / "src", TWO, 12)
    storage.upload_dir(str(src), f"{bucket[0]}/imgs")
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    csv_text = "filename,class\n" + "".join(f"imgs/{n},{n.split('/')[0]}\n" for n in names) + "imgs/Bag/gone.png,Bag\n"
    fs, path = storage.filesystem(f"{bucket[0]}/labels.csv")
    fs.pipe(path, csv_text.encode())
    s = ingest(f"{bucket[0]}/labels.csv", str(tmp_path / "ds"))
    assert s.per_class == {"Bag": 12, "Trouser": 12} and s.quarantine_reasons == {"missing": 1}
    assert read_quarantine(str(tmp_path / "ds"))[0]["location"] == f"{bucket[0]}/imgs/Bag/gone.png"

    table = pa.table({"path": [str(src / n) for n in names], "label": [n.split("/")[0] for n in names],
                      "split": ["test" if i % 3 == 0 else "train" for i in range(len(names))]})
    pq.write_table(table, tmp_path / "labels.parquet")
    s = ingest(str(tmp_path / "labels.parquet"), str(tmp_path / "ds2"))
    assert s.layout == "pre-split" and s.per_split == {"test": 8, "train": 16}

    (tmp_path / "bad.csv").write_text("img,what\na.png,b\n")
    with pytest.raises(DatasetError, match="needs a header with a path column"):
        ingest(str(tmp_path / "bad.csv"), str(tmp_path / "ds3"))


def test_missing_bucket_and_prefix_name_the_uri(stores, tmp_path):
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/x"):
        ingest("s3://no-such-bucket/x", str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="gs://no-such-bucket/x"):
        ingest("gs://no-such-bucket/x", str(tmp_path / "b"))
    assert not list(tmp_path.iterdir())


@pytest.fixture
def endpoint(monkeypatch):
    """Point s3:// at another endpoint for one test."""
    def use(url: str):
        monkeypatch.setenv("IMGCLF_S3_ENDPOINT_URL", url)
        storage.reset()
    yield use
    storage.reset()


def test_denied_access_is_a_clear_error(stores, endpoint, tmp_path):
    locked = st.moto_s3(enforce_auth=True)
    try:
        endpoint(locked.url)
        with pytest.raises(PermissionError, match=r"s3://private/images: access denied"):
            ingest("s3://private/images", str(tmp_path / "ds"))
    finally:
        locked.stop()


def test_endpoint_down_fails_fast_with_the_cause(stores, endpoint, monkeypatch):
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    endpoint(f"http://127.0.0.1:{st.free_port()}")
    with pytest.raises(storage.StorageError, match=r"s3://b/k: read failed after 2 attempts.*(connect|Connect)"):
        storage.read_bytes("s3://b/k")


def test_dropped_connections_are_retried_then_reported(bucket, endpoint, stores):
    fs, path = storage.filesystem(f"{bucket[0]}/big.bin")
    payload = os.urandom(300_000)
    fs.pipe(path, payload)
    flaky = st.FlakyProxy(stores["s3"].port, drops=1, cut_after=5000)
    endpoint(flaky.url)
    assert storage.read_bytes(f"{bucket[0]}/big.bin") == payload
    assert flaky.dropped == 1
    always = st.FlakyProxy(stores["s3"].port, drops=10_000, cut_after=5000)
    endpoint(always.url)
    with pytest.raises(storage.StorageError, match=f"{bucket[0]}/big.bin: read failed after 3 attempts"):
        storage.read_bytes(f"{bucket[0]}/big.bin")
    flaky.stop()
    always.stop()


def test_publish_to_a_bucket_is_all_or_nothing(bucket, tmp_path, endpoint, stores):
    model = tmp_path / "m"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb" * 1000)
    (model / "variables" / "v.data").write_bytes(os.urandom(50_000))
    dest = f"{bucket[0]}/models/m/1"
    storage.publish_dir(str(model), dest)
    fs, path = storage.filesystem(dest)
    assert sorted(p.split("/m/1/")[1] for p in fs.find(path)) == ["saved_model.pb", "variables/v.data"]
    assert not [p for p in fs.ls(f"{bucket[0][5:]}/models/m") if ".partial-" in p]
    with pytest.raises(FileExistsError, match="already exists"):
        storage.publish_dir(str(model), dest)
    always = st.FlakyProxy(stores["s3"].port, drops=10_000, cut_after=100)
    endpoint(always.url)
    with pytest.raises(storage.StorageError):
        storage.publish_dir(str(model), f"{bucket[0]}/models/m/2")
    always.stop()
    endpoint(stores["s3"].url)
    assert not storage.exists(f"{bucket[0]}/models/m/2/saved_model.pb")


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["s3", "gs"])
def test_imgclf_run_from_a_bucket_exports_to_a_bucket(bucket, tmp_path, proto):
    import subprocess
    import sys

    from imgclf.components.predict.step import predict

    root = bucket[0] if proto == "s3" else bucket[1]
    storage.upload_dir(str(make_folder(tmp_path / "d", TWO, 15, jpeg_every=3)), f"{root}/images")
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", f"{root}/images", "--export-to", f"{root}/models/m",
         "--image-size", "28", "--color-mode", "grayscale", "--epochs", "1", "--batch-size", "16", "--width", "8",
         "--depth", "2", "--val-fraction", "0.2", "--test-fraction", "0.2", "--pipeline-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"export: published to {root}/models/m" in proc.stdout
    assert "testing-secret" not in proc.stdout + proc.stderr, "credentials must never be logged"
    r = predict(f"{root}/models/m", [f"{root}/images/Bag"], output=f"{root}/results/bags.jsonl")
    assert r.predicted == 15 and r.failed == 0
    lines = storage.read_bytes(f"{root}/results/bags.jsonl").decode().splitlines()
    assert len(lines) == 15 and all(f"{root}/images/Bag/" in x for x in lines)


@pytest.mark.unit
def test_compiled_yaml_maps_a_secret_and_holds_no_credentials(tmp_path, monkeypatch):
    import yaml

    from imgclf.pipelines.cli.main import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-VISIBLE-IF-LEAKED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    out = tmp_path / "kfp.yaml"
    assert main(["compile", "--allow-local-image", "-o", str(out), "--s3-endpoint", "http://minio-service.kubeflow:9000"]) == 0
    text = out.read_text()
    assert "AKIA-VISIBLE-IF-LEAKED" not in text and "very-secret-value-123" not in text
    pipeline, platform = yaml.safe_load_all(text)
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # every task: validate, ingest's and preprocess's plan/shard/merge, and the registry's
    # champion/gate/publish/deploy/skip/not-published
    assert len(execs) == 16
    for spec in execs.values():
        (sec,) = spec["secretAsEnv"]
        assert sec["secretName"] == "mlpipeline-minio-artifact"
        assert {(m["secretKey"], m["envVar"]) for m in sec["keyToEnv"]} == {
            ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}
    for ex in pipeline["deploymentSpec"]["executors"].values():
        assert {"name": "IMGCLF_S3_ENDPOINT_URL", "value": "http://minio-service.kubeflow:9000"} in ex["container"]["env"]
    assert main(["compile", "--allow-local-image", "-o", str(tmp_path / "plain.yaml"), "--s3-secret", "my-minio"]) == 0
    assert "secretName: my-minio" in (tmp_path / "plain.yaml").read_text()


def _os_walk_listing(root: str) -> list[tuple]:
    """What a local listing must be, written with os.walk: each folder's symlinked subfolders (reported,
    not followed), then its files sorted (a symlink leaving the folder, or broken, reported), then its
    subfolders in sorted order."""
    from pathlib import Path

    base, real, found = Path(root), Path(root).resolve(), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                found.append(((here / d).relative_to(base).as_posix(), str(here / d), 0, "symlinked folder not followed"))
        for name in sorted(filenames):
            p = here / name
            if p.is_symlink() and (not p.resolve().is_relative_to(real) or not p.resolve().is_file()):
                found.append((p.relative_to(base).as_posix(), str(p), 0, "symlink pointing outside the source folder"))
                continue
            found.append((p.relative_to(base).as_posix(), str(p), p.stat().st_size, ""))
    return found


@pytest.mark.unit
def test_local_listing_matches_os_walk_on_generated_trees(tmp_path):
    import random
    from dataclasses import astuple

    rng, outside = random.Random(17), tmp_path / "outside.png"
    outside.write_bytes(b"o")
    listed = 0
    for case in range(60):
        root = tmp_path / f"tree{case}"
        root.mkdir()
        folders, files = [root], []
        for _ in range(rng.randint(0, 6)):
            d = rng.choice(folders) / rng.choice(["a", "B", "c d", "é", "z", "_x"])
            d.mkdir(exist_ok=True)
            folders.append(d)
        for i in range(rng.randint(0, 15)):
            f = rng.choice(folders) / f"{rng.choice(['f', 'G', '.h', 'ü'])}{i}.png"
            f.write_bytes(b"x" * rng.randint(0, 50))
            files.append(f)
        for i in range(rng.randint(0, 4)):
            kind, link = rng.choice(["in", "out", "broken", "folder"]), rng.choice(folders) / f"link{i}"
            target = {"in": rng.choice(files) if files else outside, "out": outside, "broken": root / "gone",
                      "folder": rng.choice(folders)}[kind]
            os.symlink(target, link)
        got = [astuple(e) for e in storage.walk_files(str(root))]
        assert got == _os_walk_listing(str(root)), case
        listed += len(got)
    assert listed > 300


KILLED_INSIDE = """
import os, signal, sys
from imgclf.components.lib import storage
with storage.atomic_dir(sys.argv[1]) as out:
    (out / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)   # as if the step's pod were killed mid-write
"""

HELD_INSIDE = """
import os, sys
from imgclf.components.lib import storage
os.replace = lambda *a: (print("writing", flush=True), sys.stdin.read())  # stays inside, holding its partial
storage.atomic_write_text(sys.argv[1], "the other writer")
"""


def test_a_step_killed_inside_atomic_dir_leaves_a_partial_the_next_attempt_removes(tmp_path):
    """Before: a SIGKILLed step's `.<output>.partial-*` folder stayed next to its output forever."""
    import signal
    import subprocess
    import sys

    dest = tmp_path / "task" / "model"
    left = []
    for _ in range(2):  # each attempt removes what the one before left, then leaves its own
        proc = subprocess.run([sys.executable, "-c", KILLED_INSIDE, str(dest)], capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        [partial] = [p for p in dest.parent.iterdir() if p.name.startswith(".model.partial-")]
        assert (partial / "half.bin").is_file() and not dest.exists() and partial not in left
        left.append(partial)
    (dest.parent / ".other.partial-1234").mkdir()                 # another output's: not ours to judge
    with storage.atomic_dir(str(dest)) as out:
        (out / "model.keras").write_bytes(b"ok")
    assert sorted(p.name for p in dest.parent.iterdir()) == [".other.partial-1234", "model"]
    assert (dest / "model.keras").read_bytes() == b"ok"


def test_atomic_write_text_removes_a_killed_writers_partial_and_keeps_a_live_ones(tmp_path):
    import subprocess
    import sys

    page = tmp_path / "report.html"
    live = subprocess.Popen([sys.executable, "-c", HELD_INSIDE, str(page)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "writing\n"
        [held] = [p for p in tmp_path.iterdir() if p.name.startswith(".report.html.partial-")]
        storage.atomic_write_text(str(page), "mine")
        assert page.read_text() == "mine" and held.exists()         # a live writer's partial is left alone
    finally:
        live.kill()
        live.wait()
    storage.atomic_write_text(str(page), "mine again")                  # its writer is gone now: removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"] and page.read_text() == "mine again"


GCS_AFTER_EARLY_IMPORT = """
import os, sys, time
os.environ.pop("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", None)
emulator = os.environ.pop("STORAGE_EMULATOR_HOST")
import gcsfs  # imported before the emulator is configured: gcsfs picks its experimental gRPC class
from imgclf.components.lib import storage
storage.reset()
os.environ["STORAGE_EMULATOR_HOST"] = emulator
start = time.monotonic()
storage.write_text(sys.argv[1], "payload")
assert storage.read_text(sys.argv[1]) == "payload"
print(round(time.monotonic() - start, 1))
"""


def test_gcs_through_an_emulator_does_not_depend_on_when_gcsfs_was_imported(bucket, tmp_path):
    """Before: gcsfs imported before STORAGE_EMULATOR_HOST was set (an earlier test, a notebook cell)
    chose its gRPC class, and the first access to the emulator hung for a minute on TLS handshakes."""
    import subprocess
    import sys

    env = {**os.environ}
    env.pop("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", None)
    done = subprocess.run([sys.executable, "-c", GCS_AFTER_EARLY_IMPORT, f"{bucket[1]}/x.bin"], env=env,
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 20, done.stdout
