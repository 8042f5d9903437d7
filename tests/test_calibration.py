"""Calibration and abstaining: the arithmetic against independent hand computations on generated
probability sets (unit), then on real trained models from `chain_factory`: the temperature fitted on
validation, the SavedModel serving softmax(log p / T), the gate's max_ece rule, the abstention threshold
and predict's `uncertain` rows."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from imgclf.components.lib import calibration


def _probability_set(rng: random.Random, n: int, k: int, sharp: float) -> tuple[np.ndarray, np.ndarray]:
    """n softmax rows over k classes from random logits (scaled by `sharp`) and labels that agree with the
    top class more often than chance, so accuracy and confidence are both spread out."""
    z = np.array([[rng.gauss(0, 1) * sharp for _ in range(k)] for _ in range(n)])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([int(row.argmax()) if rng.random() < 0.6 else rng.randrange(k) for row in p])
    return p, labels


def _ece_by_hand(p: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s loop: for each bin (lower, upper], |accuracy - confidence| weighted by its share."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        lower, upper = edges[b], edges[b + 1]
        members = [i for i in range(len(p)) if lower < p[i].max() <= upper]
        if members:
            acc = sum(int(p[i].argmax() == labels[i]) for i in members) / len(members)
            conf = sum(float(p[i].max()) for i in members) / len(members)
            total += len(members) / len(p) * abs(acc - conf)
    return total


def _nll_by_hand(p: np.ndarray, labels: np.ndarray, t: float) -> float:
    out = 0.0
    for row, y in zip(p, labels):
        z = [math.log(max(v, calibration.TINY)) / t for v in row]
        top = max(z)
        out += top + math.log(sum(math.exp(v - top) for v in z)) - z[y]
    return out / len(p)


@pytest.mark.unit
def test_ece_equals_a_hand_binning_on_generated_sets():
    rng = random.Random(38)
    for case in range(60):
        n, k = rng.randint(1, 120), rng.randint(2, 12)
        p, labels = _probability_set(rng, n, k, sharp=rng.choice([0.3, 1.0, 3.0, 8.0]))
        if case % 10 == 0:  # confidences exactly on bin edges go to the lower bin, as Guo et al.'s code puts them
            p = np.zeros((n, 2))
            p[:, 0] = rng.choice([8 / 15, 9 / 15, 1.0])
            p[:, 1] = 1 - p[:, 0]
            labels = np.array([rng.randrange(2) for _ in range(n)])
        assert calibration.ece(p, labels) == pytest.approx(_ece_by_hand(p, labels), abs=1e-12), case


@pytest.mark.unit
def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_of_a_certain_wrong_answer_one():
    p = np.array([[0.75, 0.25]] * 4)
    assert calibration.ece(p, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert calibration.ece(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(1.0)


@pytest.mark.unit
def test_scaling_keeps_the_top_class_and_t_one_keeps_the_probabilities():
    rng = random.Random(7)
    for _ in range(30):
        p, _ = _probability_set(rng, rng.randint(1, 50), rng.randint(2, 8), sharp=rng.choice([0.5, 4.0]))
        t = rng.uniform(0.2, 5.0)
        assert (calibration.scale(p, t).argmax(1) == p.argmax(1)).all()
        assert np.allclose(calibration.scale(p, 1.0), p, atol=1e-12)
        assert np.allclose(calibration.scale(p, t).sum(1), 1.0)


@pytest.mark.unit
def test_fitted_temperature_is_the_grid_minimiser_of_the_nll():
    """The bounded search over 1/T against a brute-force grid of T (steps of 0.1 %), the NLL computed by
    a separate loop: the fitted T lies within one grid step of the grid's best, and is no worse."""
    rng = random.Random(2017)
    grid = np.exp(np.arange(math.log(0.05), math.log(20), 0.001))
    for case in range(8):
        p, labels = _probability_set(rng, rng.randint(40, 90), rng.randint(2, 6), sharp=rng.choice([0.5, 2.0, 6.0]))
        t = calibration.fit_temperature(p, labels)
        losses = [calibration.nll(p, labels, g) for g in grid]
        best = float(grid[int(np.argmin(losses))])
        assert abs(math.log(t) - math.log(best)) <= 0.0011, (case, t, best)
        assert _nll_by_hand(p, labels, t) <= _nll_by_hand(p, labels, best) + 1e-9, case
        assert calibration.nll(p, labels, t) == pytest.approx(_nll_by_hand(p, labels, t), rel=1e-9)


@pytest.mark.unit
def test_overconfident_answers_get_their_true_temperature_back():
    """Labels drawn from softmax(z / 2.5) while the answers say softmax(z): over-confident by a known
    temperature, which the fit recovers from 3,000 images, and the ECE falls."""
    rng = random.Random(1)
    z = np.array([[rng.gauss(0, 3) for _ in range(4)] for _ in range(3000)])
    answered = np.exp(z - z.max(1, keepdims=True))
    answered /= answered.sum(1, keepdims=True)
    truth = calibration.scale(answered, 2.5)
    labels = np.array([rng.choices(range(4), weights=row)[0] for row in truth])
    t = calibration.fit_temperature(answered, labels)
    assert 2.5 / 1.25 < t < 2.5 * 1.25
    assert calibration.ece(calibration.scale(answered, t), labels) < calibration.ece(answered, labels) / 2
    assert calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    right = answered.argmax(1)  # no error: the NLL has no minimum (it falls as T -> 0), so no calibration
    assert calibration.fit_temperature(answered, right) == 1.0


@pytest.mark.unit
def test_abstention_threshold_reaches_the_target_with_the_most_answers():
    """On generated sets: the answers at or above the threshold are right at least the target share, and
    no lower confidence of the set would keep that precision (brute force over every candidate)."""
    rng = random.Random(11)
    for case in range(60):
        p, labels = _probability_set(rng, rng.randint(1, 80), rng.randint(2, 6), sharp=rng.choice([1.0, 4.0]))
        if case % 7 == 0:
            p = np.round(p, 1) + 1e-9  # ties: the threshold keeps all of equal confidence or none
            p /= p.sum(1, keepdims=True)
        target = rng.choice([0.5, 0.7, 0.9, 0.99])
        t = calibration.abstain_threshold(p, labels, target)
        conf, right = p.max(1), p.argmax(1) == labels

        def precision(th, conf=conf, right=right):
            kept = conf >= th
            return right[kept].mean() if kept.any() else float("nan")

        reachable = [c for c in conf if precision(c) >= target]
        if reachable:
            assert precision(t) >= target and t == min(reachable), case
        else:
            assert t == 1.0, case
    assert calibration.abstain_threshold(p, labels, 0.0) == 0.0


# --- real trained models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(chain_factory):
    return chain_factory("two")


def _validation(tmp: Path):
    """The trained model's uncalibrated validation probabilities and labels, read independently of evaluate."""
    from imgclf.components.contracts import RecordsMetadata
    from imgclf.components.lib import records
    from imgclf.components.lib.layers import load_model

    meta = RecordsMetadata.load(str(tmp / "pp"))
    model = load_model(str(tmp / "model"))
    ps, ys = [], []
    for pixels, labels in records.make_dataset(str(tmp / "pp"), meta, "validation", 32):
        ps.append(np.asarray(model.predict_on_batch(pixels), dtype=np.float64))
        ys.append(labels.numpy())
    return np.concatenate(ps), np.concatenate(ys)


@pytest.mark.parametrize("name", ["two", "ten"])
def test_temperature_fitted_on_validation_and_served_by_the_saved_model(chain_factory, name):
    """evaluate's T is the validation NLL's grid minimiser; the SavedModel answers softmax(log p / T) of the
    trained Keras model within float tolerance, records T, and evaluate's predictions.csv holds the same."""
    import tensorflow as tf

    from imgclf.components.contracts import ExportInfo, RecordsMetadata, read_predictions
    from imgclf.components.lib import records
    from imgclf.components.lib.layers import load_model

    tmp, _, _, ev, _ = chain_factory(name)
    val_p, val_y = _validation(tmp)
    t = ev.metrics["temperature"]
    if (val_p.argmax(1) == val_y).all():
        assert t == 1.0  # no validation error: nothing to fit (see calibration.fit_temperature)
    else:
        grid = np.exp(np.arange(math.log(0.05), math.log(20), 0.001))
        best = float(grid[int(np.argmin([_nll_by_hand(val_p, val_y, g) for g in grid]))])
        assert abs(math.log(t) - math.log(best)) <= 0.0011
    assert ExportInfo.load(tmp / "saved_model").temperature == t

    meta = RecordsMetadata.load(str(tmp / "pp"))
    model = load_model(str(tmp / "model"))
    fn = tf.saved_model.load(str(tmp / "saved_model")).signatures["serving_default"]
    evaluated = {r["location"]: r for r in read_predictions(str(tmp / "pred"))}
    worst = 0.0
    test_p, test_y = [], []
    for pixels, labels, locs, encoded in records.make_dataset(str(tmp / "pp"), meta, "test", 16, with_extras=True):
        raw = np.asarray(model.predict_on_batch(pixels), dtype=np.float64)
        served = fn(image_bytes=encoded)["probabilities"].numpy()
        expected = calibration.scale(raw, t)
        worst = max(worst, float(np.abs(served - expected).max()))
        for loc, row in zip(locs.numpy(), expected):
            e = evaluated[loc.decode()]
            assert [float(e[f"p_{c}"]) for c in meta.classes] == pytest.approx(row.tolist(), abs=2e-6)
        test_p.append(raw)
        test_y.append(labels.numpy())
    assert worst <= 1e-5
    raw, y = np.concatenate(test_p), np.concatenate(test_y)
    assert ev.metrics["ece_uncalibrated"] == pytest.approx(_ece_by_hand(raw, y), abs=1e-6)
    assert ev.metrics["ece"] == pytest.approx(_ece_by_hand(calibration.scale(raw, t), y), abs=1e-6)
    report = (tmp / "report.html").read_text()
    assert "Calibration" in report and f"{t:.4f}" in report and "reliability diagram" in report


def test_gate_refuses_when_ece_is_above_max_ece(two, tmp_path):
    from imgclf.components.release.gate import gate

    tmp, *_, ev, _ = two
    ece = ev.metrics["ece"]
    refused = gate(str(tmp / "pp"), str(tmp / "pred"), max_ece=ece / 2, decision_md=str(tmp_path / "gate.md"))
    assert refused.decision == "refuse"
    assert any(r.startswith("FAIL: expected calibration error") for r in refused.reasons)
    assert f"{ece:.4f}" in (tmp_path / "gate.md").read_text()
    allowed = gate(str(tmp / "pp"), str(tmp / "pred"), max_ece=min(1.0, ece + 0.01))
    assert allowed.decision == "no-registry" and allowed.challenger["ece"] == ece
    assert any(r.startswith("PASS: expected calibration error") for r in allowed.reasons)


def test_abstention_threshold_exported_and_predict_marks_uncertain_rows(two, tmp_path):
    """evaluate with abstain_precision: the threshold reaches the target on validation; export records it;
    predict marks exactly the images whose served top probability is below it, and keeps their class."""
    from imgclf.components.contracts import ExportInfo
    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.export.step import export
    from imgclf.components.predict.step import predict

    tmp, classes, *_ = two
    val_p, val_y = _validation(tmp)
    target = 0.8
    ev = evaluate(str(tmp / "pp"), str(tmp / "model"), str(tmp_path / "pred"), abstain_precision=target,
                  report_html=str(tmp_path / "report.html"))
    threshold, t = ev.metrics["abstain_threshold"], ev.metrics["temperature"]
    assert 0 < threshold <= 1
    if threshold < 1:  # reachable on validation: the answers kept there are right at least 80 % of the time
        precision, coverage = calibration.precision_coverage(calibration.scale(val_p, t), val_y, threshold)
        assert precision >= target and coverage > 0
    assert "Abstaining" in (tmp_path / "report.html").read_text()
    export(str(tmp / "model"), str(tmp / "pp"), str(tmp_path / "pred"), str(tmp_path / "sm"))
    assert ExportInfo.load(tmp_path / "sm").abstain_below == threshold

    out = tmp_path / "out.csv"
    r = predict(str(tmp_path / "sm"), [str(tmp / "src")], output=str(out), keep_rows=True)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == r.predicted > 0
    for row in rows:
        assert row["class"] in classes
        assert row["uncertain"] == ("true" if float(row["probability"]) < threshold - calibration.SLACK else "false")
    assert r.uncertain == sum(row["uncertain"] == "true" for row in rows)
    jl = tmp_path / "out.jsonl"
    predict(str(tmp_path / "sm"), [str(tmp / "src")], output=str(jl))
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert all(x["uncertain"] is (x["probability"] < threshold - calibration.SLACK) for x in lines)
    assert sum(x["uncertain"] for x in lines) == r.uncertain


def test_the_calibrated_keras_model_converts_to_tflite_and_answers_the_scaled_probabilities(two, tmp_path):
    """export's TFLite file is made from the calibrated model (a temperature layer on top of the trained
    one): it must convert, and answer softmax(log p / T) of the trained model."""
    import tensorflow as tf

    from imgclf.components.export.step import calibrated
    from imgclf.components.lib.layers import load_model

    tmp, *_ = two
    model = load_model(str(tmp / "model"))
    x = np.random.default_rng(0).integers(0, 256, (4, *model.input_shape[1:])).astype("float32")
    want = calibration.scale(np.asarray(model.predict_on_batch(x), dtype=np.float64), 1.7)
    wrapped = calibrated(model, 1.7)
    assert np.abs(np.asarray(wrapped.predict_on_batch(x)) - want).max() < 1e-5
    assert calibrated(model, 1.0) is model
    interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(wrapped).convert())
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    assert np.abs(interpreter.get_tensor(out["index"]) - want).max() < 1e-4
