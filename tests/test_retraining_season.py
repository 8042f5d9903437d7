"""A season of scheduled retraining against one registry, as a scheduler runs it: `imgclf run` six times
with --warm-start on every run, on a local folder and on the S3 server.

1. the first data                      -> published as v1
2. the same data and options           -> skipped
3. 30 % more images                    -> retrained from v1's weights; the gate compares fairly
4. the same data, another dropout      -> retrained (options changed)
5. a new class                         -> refused: a class change is an explicit decision
6. the same, with --accept-class-change -> published; all but the head warm-started

Asserted from what the runs left (their images.csv, the gate's compared.csv, the registry): the champion
history, that every image kept its split as the data grew, which images each comparison used, and that
none of them was in the training or validation split of either model compared.
"""
from __future__ import annotations

import csv
import gzip
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.components.lib import registry
from imgclf.components.release import seen
from tests.conftest import TEN, make_folder

# Several whole `imgclf run`s per test, each allowed 15 minutes (_run's limit): twice the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CLASSES, EXTRA_CLASS = TEN[:4], TEN[4]
COMMON = ["--image-size", "16", "--color-mode", "grayscale", "--epochs", "12", "--batch-size", "32", "--width", "16",
          "--depth", "2", "--test-fraction", "0.25", "--val-fraction", "0.15", "--min-compared-images", "20",
          "--warm-start", "--model-name", "fm", "--quiet"]


def _run(data: Path, reg: str, root: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--registry", reg,
                           "--pipeline-root", str(root), *COMMON, *extra], capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    tail = out[out.index("=== imgclf run finished"):]
    page = re.search(r"decision      : (\S+)", tail).group(1)
    return {"out": out, "tail": tail, "dir": Path(page).parent}


def _images(run_dir: Path) -> dict[str, dict[str, str]]:
    """images.csv of the run's records: split -> {sha256: location}."""
    [path] = run_dir.glob("preprocess*/records/images.csv")
    out: dict[str, dict[str, str]] = {"train": {}, "validation": {}, "test": {}}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out[r["split"]][r["sha256"]] = r["location"]
    return out


def _compared(run_dir: Path) -> list[dict]:
    with open(run_dir / "compared.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _seen_file(reg: str, version: int) -> set[str]:
    return set(gzip.decompress(registry.read_version_file(reg, "fm", version, seen.SEEN_IMAGES)).decode().split())


def _season(reg: str, tmp: Path) -> None:
    root = tmp / "runs"
    d0 = make_folder(tmp / "d0", CLASSES, 80)
    d1 = make_folder(tmp / "d1", CLASSES, 104)                 # the same 80 per class, then 24 more
    d2 = make_folder(tmp / "d2", [*CLASSES, EXTRA_CLASS], 104)  # and a fifth class
    champion_of = {}  # run number -> the run folder whose model is the champion after it

    first = _run(d0, reg, root)
    assert "published fm version 1" in first["tail"] and "warm start" not in first["out"]
    assert registry.versions(reg, "fm") == [1] and registry.champion(reg, "fm")["version"] == 1
    champion_of[1] = first
    v1_images = _images(first["dir"])
    # v1 records exactly the images it trained and validated on
    assert _seen_file(reg, 1) == {seen.key(h) for s in ("train", "validation") for h in v1_images[s]}

    same = _run(d0, reg, root)
    assert "training skipped" in same["tail"] and "training options are what champion v1 was trained with" in same["tail"]
    assert "  train " not in same["tail"]

    grown = _run(d1, reg, root)
    assert "champion lookup: train: the data changed" in grown["out"]
    assert re.search(r"train: warm start from \S+/1/assets\.extra/keras: copied (\d+) of \1 layers", grown["out"])
    grown_images = _images(grown["dir"])
    # every image of the first run kept its split: the test images v1 was judged on are still test images
    for split, hashes in v1_images.items():
        for h in hashes:
            assert h in grown_images[split], (split, h)
    _check_comparison(grown, reg, champion_version=1, champion_run=first)
    history = [1]
    if "published fm version 2" in grown["tail"]:
        history.append(2)
        champion_of[3] = grown

    options = _run(d1, reg, root, "--dropout", "0.2")
    assert re.search(r"champion lookup: train: [^\n]*the training options changed", options["out"])
    assert "training skipped" not in options["tail"]
    _check_comparison(options, reg, champion_version=history[-1], champion_run=champion_of[max(champion_of)])
    if "published fm version" in options["tail"]:
        history.append(history[-1] + 1)
        champion_of[4] = options

    new_class = _run(d2, reg, root)
    assert "refused by the gate" in new_class["tail"] and "a class change is a decision" in new_class["tail"]
    assert "accept_class_change" in new_class["tail"]
    assert registry.champion(reg, "fm")["version"] == history[-1]

    accepted = _run(d2, reg, root, "--accept-class-change")
    assert "class change accepted" in accepted["tail"], accepted["tail"]
    # all but the head came from the champion: the head has a fifth output now
    assert re.search(r"not copied: probabilities", accepted["out"]), accepted["out"][-3000:]
    assert "published fm version" in accepted["tail"], accepted["tail"]
    history.append(history[-1] + 1)
    rows = _check_comparison(accepted, reg, champion_version=history[-2], champion_run=champion_of[max(champion_of)])
    assert {r["label"] for r in rows} == set(CLASSES)  # compared on the classes both models know

    # The champion history: every version published in turn, each record naming the champion it beat.
    assert registry.versions(reg, "fm") == history
    assert registry.champion(reg, "fm")["version"] == history[-1]
    for before, after in zip(history, history[1:]):
        record = registry.read_record(reg, "fm", after)
        assert record["gate"]["champion"]["version"] == before
        assert record["gate"]["compared"]["images"] >= 20
    assert registry.read_record(reg, "fm", history[-1])["input"]["classes"] == sorted([*CLASSES, EXTRA_CLASS])


def _check_comparison(run: dict, reg: str, champion_version: int, champion_run: dict) -> list[dict]:
    """The gate compared on test images of this run that neither this run's model nor the champion
    trained or validated on (the champion's from the run that made it, independently of the registry)."""
    rows = _compared(run["dir"])
    assert len(rows) >= 20
    mine = _images(run["dir"])
    theirs = _images(champion_run["dir"])
    compared = {r["sha256"] for r in rows}
    assert compared <= set(mine["test"])
    assert not compared & (set(mine["train"]) | set(mine["validation"]))
    assert not compared & (set(theirs["train"]) | set(theirs["validation"]))
    assert not {seen.key(h) for h in compared} & _seen_file(reg, champion_version)
    assert f"vs champion v{champion_version}" in run["tail"] and f"on the same {len(rows)} test images" in run["tail"]
    assert "95 % CI" in run["tail"] and "one-sided p = " in run["tail"]
    return rows


def test_a_season_of_retraining_on_a_local_registry(tmp_path):
    _season(str(tmp_path / "registry"), tmp_path)


def test_a_season_of_retraining_on_an_s3_registry(bucket, tmp_path):
    _season(bucket[0] + "/registry", tmp_path)
