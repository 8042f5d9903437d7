"""imgclf predict and the batch-prediction pipeline, on a model exported from real images."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from imgclf.components.contracts import read_predictions
from imgclf.components.lib.images import served_decoder_problem
from imgclf.components.predict.step import predict
from imgclf.pipelines.cli.main import main


@pytest.fixture
def exported(chain_factory):
    return chain_factory("ten")


def test_predictions_match_evaluate_on_every_test_image(exported, tmp_path):
    tmp, classes, _, _, _ = exported
    expected = read_predictions(str(tmp / "pred"))
    out = tmp_path / "p.csv"
    r = predict(str(tmp / "saved_model"), [e["location"] for e in expected], output=str(out), top_k=3)
    assert r.predicted == len(expected) and r.failed == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == [e["predicted"] for e in expected]
    for row, e in zip(rows, expected):
        assert float(row["probability"]) == pytest.approx(float(e["probability"]), abs=1e-5)
        assert row["top_k"].split(";")[0].split(":")[0] == row["class"] and row["top_k"].count(";") == 2
    assert sum(r.class_counts.values()) == len(expected)


def test_folder_with_a_broken_file_still_predicts_the_rest(exported, tmp_path):
    tmp, classes, _, _, _ = exported
    folder = tmp_path / "incoming"
    shutil.copytree(tmp / "src" / classes[0], folder)
    n = len(list(folder.iterdir()))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (folder / "readme.txt").write_text("not an image")
    # Litter is not classified (an older Jupyter copy of an image, Finder's settings), unless named.
    checkpoint = folder / ".ipynb_checkpoints" / "x-checkpoint.png"
    checkpoint.parent.mkdir()
    shutil.copy(next(p for p in sorted(folder.iterdir()) if p.suffix == ".png" and p.name != "broken.png"), checkpoint)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    out = tmp_path / "p.jsonl"
    r = predict(str(tmp / "saved_model"), [str(folder)], output=str(out))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert r.predicted == n and r.failed == 2 and len(lines) == n + 2
    assert not any(".ipynb_checkpoints" in x["file"] or ".DS_Store" in x["file"] for x in lines)
    assert predict(str(tmp / "saved_model"), [str(checkpoint)], keep_rows=True).predicted == 1
    errors = {x["file"].rsplit("/", 1)[1]: x["error"] for x in lines if "error" in x}
    assert set(errors) == {"broken.png", "readme.txt"}
    assert errors["readme.txt"].startswith("not an image")
    good = [x for x in lines if "error" not in x]
    assert all(set(x["probabilities"]) == set(classes) and len(x["top_k"]) == 3 for x in good)


def test_undecodable_files_anywhere_in_any_batch_are_named_and_the_rest_answered(exported, tmp_path):
    """Generated cases: damaged files (truncated JPEG and PNG, garbage after a valid header) at random
    positions, in batches of several sizes. Only those files fail, each with TensorFlow's cause, and
    every other file gets the answer it gets on its own."""
    import random

    tmp, classes, _, _, _ = exported
    good = sorted(p for c in classes for p in (tmp / "src" / c).iterdir())[:40]
    alone = {p.name: predict(str(tmp / "saved_model"), [str(p)], keep_rows=True).rows[0]["class"] for p in good}
    rng = random.Random(7)
    for case in range(6):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        for p in good:
            shutil.copy(p, folder / p.name)
        bad = set()
        for i in range(rng.randint(1, 4)):
            src = rng.choice(good).read_bytes()
            name = f"bad{i}{rng.choice(['.png', '.jpg'])}"
            data = rng.choice([src[:len(src) // 2], src[:40] + bytes(rng.randrange(256) for _ in range(200))])
            (folder / name).write_bytes(data)
            bad.add(name)
        r = predict(str(tmp / "saved_model"), [str(folder)], keep_rows=True, batch_size=rng.choice([1, 3, 8, 64]))
        errors = {row["file"].rsplit("/", 1)[1]: row["error"] for row in r.rows if "error" in row}
        assert set(errors) <= bad and r.predicted == len(good), (case, errors)
        # A file PIL's header check already refuses is named by it; the rest by TensorFlow.
        assert all(e.startswith(("TensorFlow cannot decode it", "not an image", "truncated")) for e in errors.values())
        # TensorFlow's own reason, as its eager decoder states it for the same bytes (the served graph's
        # message wraps it in a node trace, "<stack traces unavailable>" in a loaded SavedModel).
        for name, e in errors.items():
            if e.startswith("TensorFlow cannot decode it"):
                assert e == f"TensorFlow cannot decode it: {served_decoder_problem((folder / name).read_bytes())}", e
                assert "<" not in e and "Op:" not in e and "node" not in e, e
        assert {row["file"].rsplit("/", 1)[1]: row["class"] for row in r.rows if "error" not in row
                and not row["file"].rsplit("/", 1)[1].startswith("bad")} == alone


def test_a_bucket_and_a_local_folder_in_one_run_give_each_file_its_own_answer(exported, tmp_path, bucket):
    """Local batches are read by one task and a store's files by a task each; batches that hold both
    kinds, broken files among them, must still answer every file as it is answered alone, in order."""
    from imgclf.components.lib import storage

    tmp, classes, _, _, _ = exported
    s3, gs = bucket
    good = sorted(p for c in classes for p in (tmp / "src" / c).iterdir())[:24]
    alone = predict(str(tmp / "saved_model"), [str(p) for p in good], keep_rows=True, batch_size=64).rows
    local = tmp_path / "here"
    local.mkdir()
    for p in good[:12]:
        shutil.copy(p, local / p.name)
    (local / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    remote = storage.join(s3, "incoming")
    for p in good[12:]:
        storage.put_file(str(p), storage.join(remote, p.name))
    storage.write_text(storage.join(remote, "zz-bad.jpg"), "garbage")
    expected = {p.name: row["class"] for p, row in zip(good, alone)}
    listed = [e.uri.rsplit("/", 1)[1] for root in (str(local), remote) for e in storage.walk_files(root)]
    assert len(listed) == 26
    for batch_size in (1, 5, 13, 64):
        r = predict(str(tmp / "saved_model"), [str(local), remote], keep_rows=True, batch_size=batch_size)
        names = [row["file"].rsplit("/", 1)[1] for row in r.rows]
        assert names == listed, batch_size  # the order the inputs list them in, remote last
        got = {n: row.get("class") for n, row in zip(names, r.rows) if "error" not in row}
        errors = {n for n, row in zip(names, r.rows) if "error" in row}
        assert got == expected and errors == {"bad.png", "zz-bad.jpg"}, batch_size
        assert r.rows[-1]["file"] == storage.join(remote, "zz-bad.jpg")


@pytest.mark.slow  # retries and back-off against a real server that went away
@pytest.mark.parametrize("after", [2, 9])
def test_a_store_outage_mid_predict_ends_it_naming_the_uri_and_writes_nothing(exported, tmp_path, bucket, stores,
                                                                             monkeypatch, after):
    """Two batches are in flight at once: a store failure in either still ends the run, never becomes
    a row per file, and leaves no predictions file."""
    from imgclf.components.lib import storage
    from tests import stores as st

    tmp, classes, _, _, _ = exported
    s3, _ = bucket
    good = sorted(p for c in classes for p in (tmp / "src" / c).iterdir())[:30]
    for p in good:
        storage.put_file(str(p), storage.join(s3, "in", p.name))
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    proxy = st.OutageProxy(stores["s3"].port, requests=after)
    monkeypatch.setenv("IMGCLF_S3_ENDPOINT_URL", proxy.url)
    storage.reset()
    out = tmp_path / "p.csv"
    try:
        with pytest.raises(storage.StorageError, match=rf"{s3}/in.*failed"):
            predict(str(tmp / "saved_model"), [f"{s3}/in"], output=str(out), batch_size=4)
    finally:
        proxy.stop()
        storage.reset()
    assert not out.exists()


@pytest.mark.unit
def test_batches_in_flight_are_handed_out_in_order_and_never_more_at_once():
    """Generated cases: work items that finish in random order, some raising; the results come back
    in the items' order, at most IN_FLIGHT run at once, and the first failure in order is raised."""
    import random
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from imgclf.components.predict import step

    rng = random.Random(3)
    for case in range(40):
        n = rng.randint(0, 12)
        delays = [rng.random() * 0.004 for _ in range(n)]
        fail_at = rng.choice([None, None, rng.randrange(n)] if n else [None])
        running, peak, lock = [0], [0], threading.Lock()

        def work(i, lock=lock, running=running, peak=peak, delays=delays, fail_at=fail_at):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(delays[i])
            with lock:
                running[0] -= 1
            if i == fail_at:
                raise OSError(f"item {i}")
            return i * i

        got = []
        with ThreadPoolExecutor(max_workers=step.IN_FLIGHT) as pool:
            try:
                for item, result in step._in_order(pool, work, list(range(n))):
                    got.append((item, result))
            except OSError as e:
                assert fail_at is not None and str(e) == f"item {fail_at}", case
        stop = n if fail_at is None else fail_at
        assert got == [(i, i * i) for i in range(stop)], case
        assert peak[0] <= step.IN_FLIGHT, case


def test_cli_prints_a_table_and_exits_nonzero_when_nothing_could_be_read(exported, tmp_path, capsys):
    tmp, classes, _, _, _ = exported
    img = sorted((tmp / "src" / classes[1]).iterdir())[0]
    assert main(["predict", "--model", str(tmp / "saved_model"), str(img), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "file" in out and "top-k" in out and img.name in out and "1 classified, 0 failed" in out
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert main(["predict", "--model", str(tmp / "saved_model"), str(bad)]) == 1
    assert "empty file" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path), str(img)]) == 1
    assert "saved_model.pb missing" in capsys.readouterr().err


@pytest.mark.slow
def test_batch_prediction_pipeline_runs_locally(exported, tmp_path):
    from kfp import components

    from imgclf.pipelines.definitions.prediction import prediction_pipeline
    from imgclf.pipelines.local.run import run_pipeline

    tmp, classes, _, _, _ = exported
    folder = tmp_path / "batch"
    shutil.copytree(tmp / "src" / classes[2], folder)
    task, timings, _ = run_pipeline(prediction_pipeline, {"model": str(tmp / "saved_model"), "images": str(folder),
                                                          "output_format": "jsonl"}, str(tmp_path / "runs"))
    rows = [json.loads(x) for x in open(f"{task.output.path}/predictions.jsonl")]
    assert len(rows) == len(list(folder.iterdir())) and set(timings) == {"validate", "predict"}
    direct = predict(str(tmp / "saved_model"), [str(folder)], keep_rows=True)
    assert [r["class"] for r in rows] == [r["class"] for r in direct.rows]
    assert main(["compile", "--allow-local-image", "--pipeline", "predict", "-o", str(tmp_path / "predict.yaml")]) == 0
    assert components.load_component_from_file(str(tmp_path / "predict.yaml")).name == "imgclf-predict"
