"""The label audit: fold assignment, the cleanlab merge on planted label errors, the relabel round trip,
and (slow) `imgclf audit` end to end."""
from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

import pytest

from imgclf.components.contracts import MANIFEST, MANIFEST_FIELDS, DatasetError, Evaluation, read_manifest
from imgclf.components.lib import tables
from tests.conftest import TWO, make_folder, tree_digest


def _rows(rng: random.Random, n: int, classes: list[str], split: str = "") -> list[dict]:
    return [{"location": f"/d/{i}.png", "label": rng.choice(classes), "split": split,
             "sha256": hashlib.sha256(f"{rng.random()}".encode()).hexdigest(), "dhash": ""} for i in range(n)]


# --- folds ------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_every_train_and_validation_image_is_in_exactly_one_fold_and_test_images_never():
    from imgclf.components.preprocess.step import assign_splits, audit_splits

    rng = random.Random(11)
    for case in range(30):
        n, folds, seed = rng.randint(60, 400), rng.randint(2, 7), rng.randint(0, 10**6)
        rows = _rows(rng, n, ["a", "b", "c"])
        base = assign_splits(rows, 0.1, 0.15, seed)
        pool = set(base["train"]) | set(base["validation"])
        held = []
        for k in range(folds):
            s = audit_splits(rows, base, folds, k, 0.1, seed)
            assert set(s["train"]) | set(s["validation"]) | set(s["test"]) == pool, case
            assert not (set(s["train"]) & set(s["test"])) and not (set(s["validation"]) & set(s["test"]))
            assert not set(base["test"]) & (set(s["train"]) | set(s["validation"]) | set(s["test"]))
            assert s == audit_splits(rows, base, folds, k, 0.1, seed)  # deterministic
            held += s["test"]
        assert sorted(held) == sorted(pool), case  # every image scored once
    other = [audit_splits(rows, base, folds, 0, 0.1, seed + 1)["test"]]
    assert other != [audit_splits(rows, base, folds, 0, 0.1, seed)["test"]]  # the seed decides


@pytest.mark.unit
def test_fold_options_are_checked():
    from imgclf.components.lib.options import ParameterError
    from imgclf.components.preprocess.options import PreprocessOptions

    PreprocessOptions(audit_folds=5, audit_fold=4)
    for bad in ({"audit_folds": 1}, {"audit_folds": 5, "audit_fold": 5}, {"audit_fold": 1}):
        with pytest.raises(ParameterError):
            PreprocessOptions(**bad)


# --- the merge ----------------------------------------------------------------------------------------
def _write_manifest(d: Path, rows: list[dict], classes: list[str]) -> None:
    d.mkdir(parents=True)
    with open(d / MANIFEST, "w", newline="", encoding="utf-8") as f:
        tables.Writer(f, MANIFEST_FIELDS).writerows({k: r.get(k, "") for k in MANIFEST_FIELDS} for r in rows)
    (d / "classes.json").write_text(json.dumps(classes))


def _write_fold(d: Path, classes: list[str], rows: list[tuple[str, str, list[float]]]) -> None:
    d.mkdir(parents=True)
    Evaluation(classes, {"accuracy": 0.0}, [], []).save(d)
    with open(d / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = tables.Writer(f)
        w.writerow(["location", "label", "predicted", "probability", *[f"p_{c}" for c in classes]])
        for loc, label, p in rows:
            k = max(range(len(p)), key=p.__getitem__)
            w.writerow([loc, label, classes[k], f"{p[k]:.6f}", *[f"{v:.6f}" for v in p]])


def _planted(tmp_path: Path, seed: int, folds: int = 3):
    """A manifest and fold predictions where the model is right about every image's class: cat and dog
    images confidently, fox images hesitantly (about 0.4, the rest spread). Planted: wrong given labels
    on cat and dog images (the model confidently says another class), on fox images (the model leans to
    fox, below one half: ambiguous), and one wrong label on an image that nearly equals one of its true
    class (a near-duplicate across classes)."""
    rng = random.Random(seed)
    classes = ["cat", "dog", "fox"]
    n = 300
    true = [classes[i % 3] for i in range(n)]
    given = list(true)
    hashes = [f"{rng.getrandbits(256):064x}" for _ in range(n)]
    probs = []
    for i in range(n):
        if true[i] == "fox":
            p = [rng.uniform(0.25, 0.35), rng.uniform(0.25, 0.35), 0.0]
            p[2] = rng.uniform(0.36, 0.44)
        else:
            p = [rng.uniform(0.0, 0.05) for _ in classes]
            p[classes.index(true[i])] = rng.uniform(0.85, 0.98)
        probs.append(p)
    sure = rng.sample([i for i in range(n) if true[i] != "fox"], 9)
    ambiguous = rng.sample([i for i in range(n) if true[i] == "fox"], 3)
    for i in sure:  # cat <-> dog: a wrong fox label is a weaker signal (fox's own images are hesitant)
        given[i] = "dog" if true[i] == "cat" else "cat"
    for i in ambiguous:  # the model leans to fox, not beyond one half
        given[i] = rng.choice(["cat", "dog"])
        probs[i] = [0.0, 0.0, 0.48]
        probs[i][classes.index(given[i])] = 0.10
        probs[i][1 - classes.index(given[i])] = 0.42
    dup = sure[0]  # the same picture as an image of its true class, with another label
    twin = next(j for j in range(n) if given[j] == true[dup] and j not in sure)
    hashes[dup] = hashes[twin][:-1] + ("0" if hashes[twin][-1] != "0" else "1")
    probs = [[v / sum(p) for v in p] for p in probs]
    rows = [{"location": f"/data/{i:04d}.png", "label": given[i], "split": "", "sha256": f"{i:064x}",
             "dhash": hashes[i]} for i in range(n)]
    _write_manifest(tmp_path / "dataset", rows, classes)
    dirs = []
    for k in range(folds):
        d = tmp_path / f"fold{k}"
        _write_fold(d, classes, [(rows[i]["location"], given[i], probs[i]) for i in range(n) if i % folds == k])
        dirs.append(str(d))
    return rows, dirs, set(sure) | set(ambiguous), set(ambiguous), dup


@pytest.mark.unit
def test_audit_finds_planted_label_errors_and_names_their_kinds(tmp_path):
    from imgclf.components.audit.step import audit

    for seed in (1, 2):
        case = tmp_path / str(seed)
        rows, dirs, wrong, ambiguous, dup = _planted(case, seed)
        s = audit(str(case / "dataset"), dirs, str(case / "out"), audit_folds=3, thumbnails=5)
        with open(case / "out" / "suspects.csv", newline="", encoding="utf-8") as f:
            suspects = list(csv.DictReader(f))
        found = {int(Path(r["location"]).stem) for r in suspects}
        assert wrong <= found, seed
        with open(case / "out" / "scores.csv", newline="", encoding="utf-8") as f:
            ranked = [int(Path(r["location"]).stem) for r in csv.DictReader(f)]
        assert set(ranked[:len(wrong)]) == wrong  # the lowest label quality, by get_label_quality_scores
        assert [int(r["rank"]) for r in suspects] == list(range(1, len(suspects) + 1))
        scores = [float(r["score"]) for r in suspects]
        assert scores == sorted(scores)  # most suspicious (lowest label quality) first
        kinds = {int(Path(r["location"]).stem): r["kind"] for r in suspects}
        assert {kinds[i] for i in ambiguous} == {"ambiguous"}
        assert kinds[dup] == "near-duplicate across classes"
        assert {kinds[i] for i in wrong - ambiguous - {dup}} == {"wrong label"}
        for r in suspects:
            assert r["suggested"] != r["label"] or r["kind"] != "wrong label"
        assert sorted(ranked) == list(range(len(rows)))  # every image scored once
        assert s.suspects == len(suspects) and s.images == len(rows) and s.folds == 3
        page = (case / "out" / "suspects.html").read_text()
        assert page.count('class="card"') == min(5, len(suspects))


@pytest.mark.unit
def test_audit_refuses_overlapping_or_missing_folds(tmp_path):
    from imgclf.components.audit.step import audit

    rows, dirs, *_ = _planted(tmp_path, 4)
    with pytest.raises(DatasetError, match="fold predictions for audit_folds=4"):
        audit(str(tmp_path / "dataset"), dirs, str(tmp_path / "out"), audit_folds=4)
    with pytest.raises(DatasetError, match="overlap"):
        audit(str(tmp_path / "dataset"), [dirs[0], dirs[0], dirs[1]], str(tmp_path / "out"), audit_folds=3)


# --- relabel --------------------------------------------------------------------------------------------
def _write_relabel(path: Path, pairs: list[tuple[str, str]], header: bool = True) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["location", "label"])
        w.writerows(pairs)
    return str(path)


@pytest.mark.unit
def test_relabel_changes_and_drops_are_applied_recorded_and_fingerprinted(tmp_path):
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import data_fingerprint

    src = make_folder(tmp_path / "src", TWO, 12)
    before = tree_digest(src)
    ingest(str(src), str(tmp_path / "plain"), workers=1)
    plain, _ = read_manifest(str(tmp_path / "plain"))
    by_label = {c: sorted(r["location"] for r in plain if r["label"] == c) for c in TWO}
    moved, dropped = by_label["Trouser"][0], by_label["Bag"][0]
    relabel = _write_relabel(tmp_path / "relabel.csv", [(moved, "Bag"), (dropped, "drop")])
    ingest(str(src), str(tmp_path / "fixed"), relabel=relabel, workers=1)
    fixed, _ = read_manifest(str(tmp_path / "fixed"))
    labels = {r["location"]: r["label"] for r in fixed}
    assert labels[moved] == "Bag" and dropped not in labels and len(fixed) == len(plain) - 1
    assert {k: v for k, v in labels.items() if k != moved} == \
        {r["location"]: r["label"] for r in plain if r["location"] not in (moved, dropped)}
    with open(tmp_path / "fixed" / "relabels.csv", newline="", encoding="utf-8") as f:
        assert sorted(map(dict, csv.DictReader(f)), key=lambda r: r["location"]) == sorted(
            [{"location": moved, "given": "Trouser", "now": "Bag"}, {"location": dropped, "given": "Bag", "now": "drop"}],
            key=lambda r: r["location"])
    assert tree_digest(src) == before  # the source is never modified
    # The manifest carries the changes, and the data fingerprint hashes the manifest: a changed label and
    # a dropped file each change it.
    fixed_moved_only = [dict(r, label="Bag") if r["location"] == moved else r for r in plain]
    fixed_dropped_only = [r for r in plain if r["location"] != dropped]
    fps = {data_fingerprint(rows) for rows in (plain, fixed, fixed_moved_only, fixed_dropped_only)}
    assert len(fps) == 4


@pytest.mark.unit
def test_relabel_refuses_unknown_locations_and_bad_rows(tmp_path):
    from imgclf.components.ingest.step import ingest

    src = make_folder(tmp_path / "src", TWO, 12)
    ingest(str(src), str(tmp_path / "plain"), workers=1)
    real = read_manifest(str(tmp_path / "plain"))[0][0]["location"]
    typo = real.replace(".png", ".pgn")
    for pairs, why in (([(real, "Bag"), (typo, "Bag")], typo), ([(real, ".hidden")], "invalid class name"),
                       ([(real, "Bag"), (real, "Trouser")], "listed twice"), ([(real, "")], "expected location,label")):
        with pytest.raises(DatasetError, match=why.replace(".", r"\.")):
            ingest(str(src), str(tmp_path / "out"), relabel=_write_relabel(tmp_path / "r.csv", pairs), workers=1)
        assert not (tmp_path / "out").exists()


# --- end to end -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_imgclf_audit_end_to_end(tmp_path):
    from imgclf.pipelines.cli.main import main

    classes = ["Trouser", "Bag", "Sneaker"]
    src = make_folder(tmp_path / "src", classes, 30)
    before = tree_digest(src)
    files = sorted(str(p) for p in src.resolve().glob("*/*"))
    rng = random.Random(5)
    moved = {f: rng.choice([c for c in classes if c != Path(f).parent.name]) for f in rng.sample(files, 4)}
    relabel = _write_relabel(tmp_path / "relabel.csv", sorted(moved.items()))
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(src), "--relabel", relabel, "--folds", "3", "--epochs", "2",
                 "--image-size", "28", "--color-mode", "grayscale", "--output-dir", str(out),
                 "--pipeline-root", str(tmp_path / "runs"), "--quiet"]) == 0
    assert tree_digest(src) == before
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        scores = list(csv.DictReader(f))
    with open(out / "suspects.csv", newline="", encoding="utf-8") as f:
        suspects = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    # Every train and validation image scored exactly once, by one of the 3 folds; test images never.
    locations = [r["location"] for r in scores]
    assert len(locations) == len(set(locations)) == summary["images"]
    assert {r["fold"] for r in scores} == {"0", "1", "2"}
    assert set(locations) <= set(files) and len(files) - len(locations) >= 3 * 1  # a test split per class left out
    given = {r["location"]: r["label"] for r in scores}
    assert all(given[f] == label for f, label in moved.items() if f in given)  # the relabel reached the audit
    assert {r["location"] for r in suspects} <= set(locations) and summary["suspects"] == len(suspects)
    assert list(suspects[0]) == ["rank", "location", "label", "suggested", "score", "suggested_probability",
                                 "kind", "fold"] if suspects else True
    assert (out / "suspects.html").read_text().count('class="card"') == len(suspects)


@pytest.mark.unit
def test_relabel_is_a_pipeline_parameter_the_docker_runner_mounts():
    """`--relabel` for run, submit and schedule comes from the declaration: a training (and audit) pipeline
    parameter, with the read role the Docker runner mounts."""
    from imgclf.pipelines import steps_of
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.local.docker_runner import path_parameters

    for pipeline in ("training", "audit"):
        assert "relabel" in {o.name for o in parameters(steps_of(pipeline))}
    assert {o.name: o.path for o in path_parameters()}["relabel"] == "read"


def test_compile_an_audit_pipeline_or_a_training_pipeline_with_an_audit_beside_it(tmp_path):
    """`--audit-folds K`: the audit pipeline's folds, or the training pipeline with the audit beside it
    (scheduled retraining that also audits), every fold's train task with train's resources."""
    import yaml

    from imgclf.pipelines.cli.main import main

    out = tmp_path / "p.yaml"
    assert main(["compile", "--allow-local-image", "--pipeline", "audit", "--audit-folds", "3", "-o", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["description"].endswith("3 folds.")
    assert main(["compile", "--allow-local-image", "--audit-folds", "2", "--cpu", "train=7", "-o", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-audit", "exec-train", "exec-train-2", "exec-export"} <= set(executors)
    for name in ("exec-train", "exec-train-2"):
        assert executors[name]["container"]["resources"]["cpuLimit"] == 7
    assert main(["compile", "--allow-local-image", "--pipeline", "predict", "--audit-folds", "2",
                 "-o", str(out)]) == 1
