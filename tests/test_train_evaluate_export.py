"""Train -> evaluate -> export on real images, two-class and ten-class, and the raw-bytes serving contract."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imgclf.components.contracts import load_history, read_predictions
from imgclf.components.export.step import ServingMismatch, export


@pytest.fixture(params=["two", "ten"], ids=["two-class", "ten-class"])
def chain(request, chain_factory):
    return chain_factory(request.param)


def test_training_outputs(chain):
    tmp, _, tr, _, _ = chain
    hist = load_history(str(tmp / "model"))
    assert len(hist["loss"]) == tr.epochs_run <= 3 and 1 <= tr.best_epoch <= tr.epochs_run
    assert hist["val_loss"][tr.best_epoch - 1] == pytest.approx(tr.best_val_loss)
    assert "data:image/png;base64," in (tmp / "curves.html").read_text()


def test_evaluation_metrics_are_consistent(chain):
    tmp, classes, _, ev, _ = chain
    cm = np.array(ev.confusion_matrix)
    n = cm.sum()
    assert n == ev.metrics["test_images"] == len(read_predictions(str(tmp / "pred")))
    assert ev.metrics["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert [r["support"] for r in ev.per_class] == cm.sum(1).tolist()
    assert 0.0 <= ev.metrics["roc_auc"] <= 1.0
    if len(classes) == 2:
        fpr, tpr, thr = ev.roc
        assert fpr[0] == 0.0 and tpr[-1] == 1.0 and max(thr) <= 1.0
    else:
        assert ev.roc is None  # KFP's ROC widget is binary; multi-class AUC is one-vs-rest in metrics
    report = (tmp / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "Per class" in report
    assert all(c in report for c in classes)


SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    paths = json.loads(sys.stdin.read())
    blobs = [open(p, "rb").read() for p in paths]
    out = fn(image_bytes=tf.constant(blobs))
    print(json.dumps({"class_name": [c.decode() for c in out["class_name"].numpy()],
                      "probabilities": out["probabilities"].numpy().tolist()}))
""")


def _serve(saved_model, paths):
    proc = subprocess.run([sys.executable, "-c", SERVE, str(saved_model)], input=json.dumps(paths),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_saved_model_answers_raw_png_and_jpeg_like_evaluate(chain):
    tmp, classes, _, _, ex = chain
    preds = read_predictions(str(tmp / "pred"))
    assert {p["location"].rsplit(".", 1)[1] for p in preds} == {"png", "jpg"}
    out = _serve(tmp / "saved_model", [p["location"] for p in preds])
    assert out["class_name"] == [p["predicted"] for p in preds]
    assert ex.checked_images == len(preds)
    probs = np.array(out["probabilities"])
    assert probs.shape == (len(preds), len(classes))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_saved_model_takes_any_size_and_mode(chain, tmp_path):
    from PIL import Image
    tmp, classes, _, _, _ = chain
    src = sorted((tmp / "src" / classes[0]).glob("*.png"))[0]
    img = Image.open(src)
    paths = []
    for name, im, fmt in [("rgba.png", img.convert("RGBA"), "PNG"), ("big.jpg", img.convert("RGB").resize((300, 200)), "JPEG"),
                          ("gray.bmp", img.convert("RGB"), "BMP")]:
        im.save(tmp_path / name, fmt)
        paths.append(str(tmp_path / name))
    a, b = _serve(tmp / "saved_model", paths), _serve(tmp / "saved_model", paths)
    assert a == b and all(c in classes for c in a["class_name"])


@pytest.mark.slow
def test_export_refuses_a_model_that_disagrees_with_evaluate(chain, tmp_path):
    tmp, classes, _, _, _ = chain
    rows = read_predictions(str(tmp / "pred"))
    rows[0]["predicted"] = next(c for c in classes if c != rows[0]["predicted"])
    bad = tmp_path / "pred"
    bad.mkdir()
    (bad / "metrics.json").write_bytes((tmp / "pred" / "metrics.json").read_bytes())  # the temperature
    with open(bad / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ServingMismatch, match="disagrees with evaluate on 1 test image"):
        export(str(tmp / "model"), str(tmp / "pp"), str(bad), str(tmp_path / "sm"))
    assert not (tmp_path / "sm").exists()


@pytest.mark.slow
def test_export_refuses_probabilities_of_another_temperature(chain, tmp_path):
    """Same top-1 everywhere, but evaluate's metrics say another temperature than its probabilities were
    scaled with: the parity check on the calibrated probabilities catches it."""
    import shutil

    tmp, *_ = chain
    bad = tmp_path / "pred"
    shutil.copytree(tmp / "pred", bad)
    doc = json.loads((bad / "metrics.json").read_text())
    doc["metrics"]["temperature"] *= 3
    (bad / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(ServingMismatch, match="served probability"):
        export(str(tmp / "model"), str(tmp / "pp"), str(bad), str(tmp_path / "sm"))


def test_report_names_the_files_of_its_error_grids(chain_factory):
    """Each most confident error's whole location is in the report's table (and its end under its tile),
    so a user can open the file and fix its label."""
    from imgclf.components.evaluate.step import short_path

    tmp, *_ = chain_factory("ten")
    report = (tmp / "report.html").read_text()
    wrong = sorted((r for r in read_predictions(str(tmp / "pred")) if r["label"] != r["predicted"]),
                   key=lambda r: -float(r["probability"]))
    assert wrong, "the three-epoch ten-class model makes errors to show"
    assert wrong[0]["location"] in report and "<td>1</td>" in report
    assert short_path("/data/pets/cat/img_0042.png", 20) == ".../cat/img_0042.png"
    assert short_path("a/b.png") == "a/b.png"


FORKED_EXPORT = textwrap.dedent("""
    import json, sys
    import tensorflow  # imported, runtime not started: as in a task forked from the local zygote
    from imgclf.components.export import step
    seen = []
    original = step.FreshChecker.check
    def check(self, *args):
        seen.append(self.forked)
        return original(self, *args)
    step.FreshChecker.check = check
    model, pp, pred, out, refuse = sys.argv[1:]
    if refuse:  # the fresh process's own verdict fails, as a bad SavedModel would make it
        from imgclf.components.export import serving_check
        def main(argv, show=True):
            sys.exit(refuse)
        serving_check.main = main
    try:
        checked, failure = step.export(model, pp, pred, out).checked_images, ""
    except step.ServingMismatch as e:
        checked, failure = 0, str(e)
    print(json.dumps({"forked": seen, "checked": checked, "failure": failure}))
""")


def _export_in_new_process(model, pp, pred, out, refuse="") -> dict:
    proc = subprocess.run([sys.executable, "-c", FORKED_EXPORT, str(model), str(pp), str(pred), str(out), refuse],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_fresh_check_forks_where_it_can_and_spawns_where_it_cannot(chain, tmp_path):
    """A fork taken before the model loads checks as a new interpreter does, and its refusal fails the
    step with its own cause."""
    tmp, _, _, _, ex = chain
    from imgclf.components.contracts import ExportInfo
    from imgclf.components.export import step

    assert not step._can_fork(), "this test process's TensorFlow runs thread pools: no fork"
    got = _export_in_new_process(tmp / "model", tmp / "pp", tmp / "pred", tmp_path / "sm")
    assert got == {"forked": [True], "checked": ex.checked_images, "failure": ""}
    assert ExportInfo.load(tmp_path / "sm") == ExportInfo.load(tmp / "saved_model")
    got = _export_in_new_process(tmp / "model", tmp / "pp", tmp / "pred", tmp_path / "sm-bad", "refused: probe")
    assert got["forked"] == [True] and "in a fresh process failed" in got["failure"], got
    assert "refused: probe" in got["failure"] and not (tmp_path / "sm-bad").exists()
