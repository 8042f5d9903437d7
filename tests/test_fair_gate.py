"""The gate compares only on images neither model trained or validated on, even when the splits moved
(a new seed re-draws them), says how many and which, and refuses below the minimum; a champion
published before the images were recorded is compared with a warning."""
from __future__ import annotations

import csv
import json

import pytest

from imgclf.components.contracts import SplitImages, read_predictions
from imgclf.components.evaluate.step import evaluate
from imgclf.components.export.step import export
from imgclf.components.lib import registry
from imgclf.components.preprocess.step import preprocess
from imgclf.components.release import gate, seen
from imgclf.components.release.publish import publish
from imgclf.components.train.step import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def season(chain_factory, tmp_path_factory):
    """The shared ten-class chain published as v1 (seed 1), and a challenger trained on the same images
    re-split with seed 2, so that part of its test split was in the champion's training split."""
    tmp, _, _, _, _ = chain_factory("ten")
    root = tmp_path_factory.mktemp("fair")
    reg = str(root / "reg")
    g = gate.gate(str(tmp / "pp"), str(tmp / "pred"), registry=reg, model_name="fm")
    assert g.passed
    publish(str(tmp / "saved_model"), str(tmp / "model"), str(tmp / "pp"), str(tmp / "pred"), registry=reg,
            model_name="fm", gate_summary=g.summary(), source_run="v1")
    pp2 = root / "pp2"
    preprocess(str(tmp / "ds"), str(pp2), image_size=28, color_mode="grayscale", val_fraction=0.15,
               test_fraction=0.2, seed=2)
    train(str(pp2), str(root / "model"), epochs=2, batch_size=16, width=8, depth=2)
    evaluate(str(pp2), str(root / "model"), str(root / "pred"))
    export(str(root / "model"), str(pp2), str(root / "pred"), str(root / "sm"))
    return reg, tmp / "pp", pp2, root / "pred"


def test_images_the_champion_learned_from_are_left_out_of_the_comparison(season, tmp_path):
    reg, pp1, pp2, pred = season
    first, second = SplitImages.load(str(pp1)), SplitImages.load(str(pp2))
    champion_learned = first.hashes("train", "validation")
    # v1 recorded exactly those images
    assert seen.decode(registry.read_version_file(reg, "fm", 1, seen.SEEN_IMAGES)) == \
        {seen.key(h) for h in champion_learned}
    test2 = second.by_split["test"]
    overlap = {loc for loc, h in test2.items() if h in champion_learned}
    assert overlap, "a new seed must put some of v1's training images into the new test split"

    csv_path = tmp_path / "compared.csv"
    g = gate.gate(str(pp2), str(pred), registry=reg, model_name="fm", min_compared_images=1,
                  decision_md=str(tmp_path / "gate.md"), compared_csv=str(csv_path))
    rows = list(csv.DictReader(open(csv_path, newline="", encoding="utf-8")))
    assert {r["location"] for r in rows} == set(test2) - overlap
    assert all(r["sha256"] == test2[r["location"]] and r["sha256"] not in champion_learned for r in rows)
    assert g.compared["images"] == len(rows) and g.compared["left_out"]["seen_by_champion"] == len(overlap)
    assert g.compared["test_images"] == len(read_predictions(str(pred)))
    # the champion's score is its answers on exactly those images, and the reason says so
    right = sum(r["champion"] == r["label"] for r in rows)
    assert g.champion["accuracy"] == pytest.approx(right / len(rows))
    line = next(r for r in g.reasons if "vs champion v1" in r)
    assert f"on the same {len(rows)} test images seen by neither model ({len(overlap)} in champion v1's " \
           "training or validation split)" in line and "one-sided p = " in line and "95 % CI" in line
    md = (tmp_path / "gate.md").read_text()
    assert f"Against champion v1 on {len(rows)} test images neither model trained or validated on" in md
    assert f"{len(overlap)} in the champion's training or validation split" in md
    # the summary (what publish records) carries the count, the digest and the intervals
    summary = json.loads(g.summary())
    assert summary["compared"]["images"] == len(rows) and len(summary["compared"]["images_sha256"]) == 64
    assert set(summary["intervals"]["compared"]) == {"challenger", "champion", "comparison"}


def test_too_few_unseen_images_refuse_with_the_reason(season):
    reg, _, pp2, pred = season
    g = gate.gate(str(pp2), str(pred), registry=reg, model_name="fm", min_compared_images=10_000)
    assert g.decision == "refuse"
    assert any(r.startswith(f"FAIL: only {g.compared['images']} of {g.compared['test_images']} test images were "
                            "seen by neither model") and "min_compared_images" in r for r in g.reasons)


def test_per_class_recall_rule_names_the_classes_that_dropped(season):
    reg, _, pp2, pred = season
    g = gate.gate(str(pp2), str(pred), registry=reg, model_name="fm", min_compared_images=1,
                  max_class_recall_drop=0.0)
    rule = [r for r in g.reasons if "recall" in r]
    assert len(rule) == 1
    rows = g.rows
    dropped = []
    for c in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == c]
        if sum(r["champion"] == c for r in mine) > sum(r["challenger"] == c for r in mine):
            dropped.append(c)
    if dropped:
        assert rule[0].startswith("FAIL: recall dropped") and all(f"{c} " in rule[0] for c in dropped)
        assert g.decision == "refuse"
    else:
        assert rule[0].startswith("PASS: no class's recall dropped")


def test_a_champion_without_recorded_images_is_compared_with_a_warning(season, tmp_path):
    import shutil

    reg, _, pp2, pred = season
    old = tmp_path / "reg"
    shutil.copytree(reg, old)
    # as published by an earlier imgclf: no list of images, no list of files in the record
    (old / "fm" / "1" / seen.SEEN_IMAGES).unlink()
    record_path = old / "fm" / "1" / registry.RECORD
    record = json.loads(record_path.read_text())
    for key in ("files", "seen_images"):
        record.pop(key)
    record_path.write_text(json.dumps(record))
    g = gate.gate(str(pp2), str(pred), registry=str(old), model_name="fm", min_compared_images=1)
    assert any(r.startswith("WARN: champion v1 was published before imgclf recorded") for r in g.reasons)
    assert g.compared["images"] == g.compared["test_images"] and not g.compared["champion_seen_recorded"]


def test_the_lookup_skips_on_data_and_options_and_judges_an_older_champion_on_data_alone(season, tmp_path):
    import shutil

    from imgclf.components.release import champion

    reg, pp1, _, _ = season
    v1 = registry.read_record(reg, "fm", 1)["params"]
    same = json.dumps({k: v1[k] for k in ("epochs", "batch_size", "width", "depth", "patience")})
    assert champion.lookup(str(pp1), registry=reg, model_name="fm", train_options=same).action == "skip"
    other = champion.lookup(str(pp1), registry=reg, model_name="fm", train_options=json.dumps({"epochs": 99}))
    assert other.action == "train" and other.reason.startswith("the training options changed since champion v1")
    # logging and backups are not the model: changing them still skips
    logs = json.dumps({**json.loads(same), "backup_seconds": 5.0, "tensorboard_uri": str(tmp_path / "tb")})
    assert champion.lookup(str(pp1), registry=reg, model_name="fm", train_options=logs).action == "skip"
    # a champion published before the options were recorded: judged on data and preprocessing, as then
    old = tmp_path / "reg"
    shutil.copytree(reg, old)
    record_path = old / "fm" / "1" / registry.RECORD
    record = json.loads(record_path.read_text())
    record.pop("train_options_fingerprint")
    record_path.write_text(json.dumps(record))
    again = champion.lookup(str(pp1), registry=str(old), model_name="fm", train_options=json.dumps({"epochs": 99}))
    assert again.action == "skip" and "its training options were not recorded" in again.reason
