"""Registry, gate and publish on real trained models: champion/challenger, atomic publish, serving checks."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imgclf.components.contracts import RecordsMetadata, read_predictions
from imgclf.components.evaluate.step import evaluate
from imgclf.components.export.step import export
from imgclf.components.lib import registry, storage
from imgclf.components.release import champion, gate
from imgclf.components.release.publish import publish
from imgclf.components.train.step import train

# Trains three models for the champion/challenger flow: the full suite only.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(chain_factory, tmp_path_factory):
    """The shared ten-class chain (3 epochs) as the first model, plus a deliberately weak one (1 epoch at a
    tiny learning rate) and a better one (more epochs, wider), all on the same preprocessed data."""
    tmp, classes, _, _, _ = chain_factory("ten")
    out = {"first": (tmp / "model", tmp / "pred", tmp / "saved_model")}
    root = tmp_path_factory.mktemp("challengers")
    for name, kw in {"weak": dict(epochs=1, learning_rate=1e-5), "better": dict(epochs=25, width=16, patience=6)}.items():
        d = root / name
        train(str(tmp / "pp"), str(d / "model"), batch_size=16, depth=2, **{"width": 8, **kw})
        evaluate(str(tmp / "pp"), str(d / "model"), str(d / "pred"))
        export(str(d / "model"), str(tmp / "pp"), str(d / "pred"), str(d / "saved_model"))
        out[name] = (d / "model", d / "pred", d / "saved_model")
    return tmp / "pp", out


def _accuracy(pred_dir) -> float:
    return json.loads((pred_dir / "metrics.json").read_text())["metrics"]["accuracy"]


def _publish_if_passed(pp, reg, model, **kw):
    model_dir, pred, sm = model
    kw.setdefault("min_compared_images", 20)  # the shared chain's test split holds about 40 images
    g = gate.gate(str(pp), str(pred), registry=str(reg), model_name="fm", **kw)
    version = publish(str(sm), str(model_dir), str(pp), str(pred), registry=str(reg), model_name="fm",
                      gate_summary=g.summary(), source_run="test-run") \
        if g.passed else None
    return g, version


def test_first_publishes_v1_weaker_is_refused_better_publishes_v2(models, tmp_path, capsys):
    pp, m = models
    reg = tmp_path / "reg"
    assert _accuracy(m["weak"][1]) < _accuracy(m["first"][1]) < _accuracy(m["better"][1])

    g1, v1 = _publish_if_passed(pp, reg, m["first"])
    assert (g1.decision, v1) == ("publish", 1) and "no champion yet" in g1.reasons[-1]
    assert registry.versions(str(reg), "fm") == [1]
    record = registry.read_record(str(reg), "fm", 1)
    assert record["metrics"]["accuracy"] == _accuracy(m["first"][1]) and record["source_run"] == "test-run"
    assert record["split_counts"]["test"] == record["metrics"]["test_images"] and record["params"]["epochs"] == 3
    card = (reg / "fm" / "1" / registry.MODEL_CARD).read_text()
    assert "# Model card: fm version 1" in card and "Intended use" in card and "first version" in card
    # The data source (from ingest, through preprocess), libraries, weakest classes and named class weights.
    source = RecordsMetadata.load(str(pp)).source
    from imgclf.components.lib.reports import markdown_text as md  # the card shows user text escaped, as text

    assert source and record["data"] == source and f"- source {md(source)}" in card
    assert record["libraries"]["keras"].startswith("3.") and "keras 3." in card
    assert set(record["params"]["class_weight"]) == set(record["input"]["classes"])
    weakest = min(record["per_class"], key=lambda r: (r["f1"], r["class"]))
    assert "## Limitations" in card and f"- {md(weakest['class'])}: F1 {weakest['f1']:.3f}" in card
    assert f"Class weights in the loss: {weakest['class']} " in card or f", {weakest['class']} " in card
    m1 = record["metrics"]  # the temperature and both ECEs, from evaluate through the record
    assert f"T = {m1['temperature']:.4f}" in card and f"{m1['ece_uncalibrated']:.4f} before, {m1['ece']:.4f} after" in card

    g2, v2 = _publish_if_passed(pp, reg, m["weak"])
    assert g2.decision == "refuse" and v2 is None
    # The champion was re-scored through its published serving signature on the same test images:
    # it must score exactly what evaluate measured for it.
    assert g2.champion["version"] == 1 and g2.champion["accuracy"] == pytest.approx(_accuracy(m["first"][1]))
    assert any(r.startswith("FAIL: accuracy") and "vs champion v1" in r for r in g2.reasons)
    assert "REFUSED" in gate.markdown(g2, "fm")
    assert registry.versions(str(reg), "fm") == [1] and registry.champion(str(reg), "fm")["version"] == 1

    g3, v3 = _publish_if_passed(pp, reg, m["better"], margin=0.01)
    assert (g3.decision, v3) == ("publish", 2)
    assert registry.versions(str(reg), "fm") == [1, 2] and registry.champion(str(reg), "fm")["version"] == 2
    assert registry.read_record(str(reg), "fm", 2)["gate"]["champion"]["version"] == 1
    card = (reg / "fm" / "2" / registry.MODEL_CARD).read_text()
    assert "Compared with champion v1, re-scored here on" in card and "95 % CI" in card

    # The same model again is not better than itself: refused, even with no margin.
    g4, _ = _publish_if_passed(pp, reg, m["better"])
    assert g4.decision == "refuse" and "+0.0000" in g4.reasons[-1]
    # Absolute thresholds refuse on their own, with the reason.
    g5 = gate.gate(str(pp), str(m["better"][1]), registry="", model_name="fm", min_accuracy=0.99)
    assert g5.decision == "refuse" and g5.reasons[0].startswith("FAIL: accuracy")

    # Unchanged data and options: the champion lookup skips training, unless told not to; other training
    # options train; warm start points at v2's Keras model.
    v2_options = json.dumps({"epochs": 25, "width": 16, "patience": 6, "batch_size": 16, "depth": 2})
    assert champion.lookup(str(pp), registry=str(reg), model_name="fm", train_options=v2_options).action == "skip"
    other = champion.lookup(str(pp), registry=str(reg), model_name="fm", train_options=json.dumps({"epochs": 24}))
    assert other.action == "train" and other.reason.startswith("the training options changed since champion v2")
    again = champion.lookup(str(pp), registry=str(reg), model_name="fm", skip_unchanged=False, warm_start=True)
    assert again.action == "train" and again.champion_version == 2
    assert again.warm_start_from == str(reg / "fm" / "2" / registry.KERAS_DIR)
    assert (reg / "fm" / "2" / registry.KERAS_DIR / "model.keras").is_file()
    assert registry.resolve(str(reg / "fm")) == str(reg / "fm" / "2")
    # ... which the train step takes as it is: the new model starts from the champion's weights.
    train(str(pp), str(tmp_path / "warm"), epochs=1, width=16, depth=2, batch_size=16,
          warm_start_from=again.warm_start_from)
    assert f"train: warm start from {again.warm_start_from}" in capsys.readouterr().out


KILL = textwrap.dedent("""
    import os, signal, sys, shutil
    from imgclf.components.lib import storage
    from imgclf.components.release.publish import publish
    calls = {"n": 0}
    def dying(real):
        def wrapper(*a, **kw):
            if ".partial-" in str(a[1]) or sys.argv[1] == "s3":
                calls["n"] += 1
                if calls["n"] == 3:
                    os.kill(os.getpid(), signal.SIGKILL)   # as if the node died mid-publish
            return real(*a, **kw)
        return wrapper
    if sys.argv[1] == "s3":
        fs, _ = storage.filesystem(sys.argv[2])
        fs.copy = dying(fs.copy)                 # the server-side copies from staging to <version>/
    else:
        real_copytree, copy2 = shutil.copytree, dying(shutil.copy2)
        # the copy into the hidden folder that is renamed into place
        def copytree(src, dst, *a, **kw):   # nested folders come back here with copy_function positional
            return real_copytree(src, dst, *a, **kw) if a else real_copytree(src, dst, **{**kw, "copy_function": copy2})
        shutil.copytree = copytree
    publish(*sys.argv[3:7], registry=sys.argv[2], model_name="fm", source_run="killed-run")
""")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_publish_killed_midway_leaves_the_registry_readable_and_unchanged(models, tmp_path, where, request):
    pp, m = models
    reg = str(tmp_path / "reg") if where == "local" else request.getfixturevalue("bucket")[0] + "/reg"
    model_dir, pred, sm = m["first"]
    args = [str(sm), str(model_dir), str(pp), str(pred)]
    assert publish(*args, registry=reg, model_name="fm", source_run="run-1") == 1
    before = registry.champion(reg, "fm")
    proc = subprocess.run([sys.executable, "-c", KILL, where, reg, *args], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert registry.versions(reg, "fm") == [1]
    assert registry.champion(reg, "fm") == before
    # The champion is intact: every file its record lists, and a SavedModel that loads and answers.
    assert registry.version_problem(reg, "fm", 1) == ""
    import tensorflow as tf

    from imgclf.components.lib import serving

    with serving.local_model(before["uri"]) as path:
        assert "serving_default" in tf.saved_model.load(str(path)).signatures
    # The next publish works, and never reuses the number the interrupted one claimed.
    v = publish(*args, registry=reg, model_name="fm", source_run="run-3")
    assert registry.versions(reg, "fm") == [1, v] and registry.champion(reg, "fm")["version"] == v
    assert v == 3 and registry.serving_config_version(reg, "fm") == 3
    # What the killed publish left is gone once the grace period allows (at once locally: its lock died).
    assert registry.check(reg, "fm", repair=True, grace_s=0).clean and registry.check(reg, "fm").clean


def test_published_model_answers_a_base64_rest_body_in_a_fresh_process(models, tmp_path):
    pp, m = models
    model_dir, pred, sm = m["first"]
    reg = tmp_path / "reg"
    publish(str(sm), str(model_dir), str(pp), str(pred), registry=str(reg), model_name="fm")
    rows = read_predictions(str(pred))[:6]
    assert {r["location"].rsplit(".", 1)[1] for r in rows} == {"png", "jpg"}
    blobs = [open(r["location"], "rb").read() for r in rows]
    for body in ({"instances": [{"b64": base64.b64encode(b).decode()} for b in blobs]},
                 {"signature_name": "serving_default",
                  "instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in blobs]},
                 {"inputs": {"image_bytes": [{"b64": base64.b64encode(b).decode()} for b in blobs]}}):
        proc = subprocess.run([sys.executable, "-m", "imgclf.components.export.serving_rest", str(reg / "fm" / "1")],
                              input=json.dumps(body), capture_output=True, text=True, check=True)
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        got = [p["class_name"] for p in answer["predictions"]] if "predictions" in answer \
            else answer["outputs"]["class_name"]
        assert got == [r["predicted"] for r in rows]
    probs = answer["outputs"]["probabilities"]
    np.testing.assert_allclose([max(p) for p in probs], [float(r["probability"]) for r in rows], atol=1e-5)


def test_warmup_file_parses_as_tf_serving_prediction_logs_and_runs(models):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from imgclf.components.export.warmup import WARMUP_FILE

    _, m = models
    sm = m["first"][2]
    logs = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(str(sm / WARMUP_FILE)).as_numpy_iterator()]
    assert len(logs) == 1
    request = logs[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default" and list(request.inputs) == ["image_bytes"]
    blobs = tf.make_ndarray(request.inputs["image_bytes"])
    assert {bytes(b[:4]) for b in blobs} >= {b"\x89PNG", b"\xff\xd8\xff\xe0"}  # a PNG and a JPEG
    out = tf.saved_model.load(str(sm)).signatures["serving_default"](image_bytes=tf.constant(blobs))
    assert out["probabilities"].shape[0] == len(blobs)
    cli = (sm / "assets.extra" / "saved_model_cli.txt").read_text()
    assert "signature_def['serving_default']" in cli and "dtype: DT_STRING" in cli


def test_tflite_export_agrees_with_keras(chain_factory, tmp_path):
    tmp, _, _, _, _ = chain_factory("two")
    r = export(str(tmp / "model"), str(tmp / "pp"), str(tmp / "pred"), str(tmp_path / "sm"), tflite=True)
    assert r.tflite_max_diff is not None and r.tflite_max_diff < 1e-4
    assert (tmp_path / "sm" / "assets.extra" / "model.tflite").stat().st_size > 1000


def _run(data, reg, root, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--image-size", "28", "--color-mode",
         "grayscale", "--batch-size", "16", "--depth", "2", "--test-fraction", "0.2", "--registry", reg,
         "--model-name", "fm", "--pipeline-root", str(root), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    return out[out.index("=== imgclf run finished"):]


def test_retraining_runs_publish_skip_and_refuse_through_kfp_local_on_s3(bucket, tmp_path):
    from tests.conftest import TEN, make_folder

    reg = bucket[0] + "/models"
    data = make_folder(tmp_path / "data", TEN, 12, jpeg_every=4)
    first = _run(data, reg, tmp_path / "runs", "--epochs", "12", "--width", "16", "--deploy", "tf-serving")
    assert f"published fm version 1 at {reg}/fm/1 (now the champion)" in first
    assert registry.versions(reg, "fm") == [1]
    # The optional deploy task ran after publish, on the version publish returned.
    assert "  deploy " in first
    [config] = (tmp_path / "runs").glob("*/deploy/deployment/models.config")
    # The champion, pinned: the config is the registry's own (a copy), which a server follows.
    assert config.read_text() == registry.serving_config("fm", 1) == storage.read_text(f"{reg}/fm/models.config")
    assert 'name: "fm"' in config.read_text() and 'base_path: "/mnt/models"' in config.read_text()

    unchanged = _run(data, reg, tmp_path / "runs", "--epochs", "12", "--width", "16")
    assert "training skipped" in unchanged and "training options are what champion v1 was trained with" in unchanged
    assert "  train " not in unchanged and "  training-skipped " in unchanged

    new_data = make_folder(tmp_path / "data2", TEN, 12, jpeg_every=4, skip=12)
    weak = _run(new_data, reg, tmp_path / "runs", "--epochs", "1", "--learning-rate", "0.00001", "--width", "8",
                "--min-compared-images", "20")
    assert "refused by the gate; the champion stays" in weak, weak
    assert "FAIL: accuracy" in weak and "vs champion v1" in weak
    assert "  publish " not in weak and "  not-published " in weak
    assert registry.versions(reg, "fm") == [1] and registry.champion(reg, "fm")["version"] == 1
