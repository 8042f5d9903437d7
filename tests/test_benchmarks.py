"""The benchmark scripts run end to end on real images and write well-formed results (timings are never
asserted: they depend on the machine), and the GPU benchmark runs where TensorFlow does not exist."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import datasets
from tests.conftest import REPO, make_folder

pytestmark = pytest.mark.slow

# Runs a module with TensorFlow (and what needs it) impossible to import, as on a JAX-only GPU machine.
WITHOUT_TENSORFLOW = """
import os, runpy, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (this machine has no TensorFlow)")
sys.meta_path.insert(0, NoTensorFlow())
sys.path.insert(0, os.getcwd())
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
"""


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_gpu_benchmark_trains_on_jax_with_real_input_and_never_imports_tensorflow(tmp_path):
    src = make_folder(tmp_path / "src", ["Bag", "Sandal", "Trouser"], 10)
    prepared = datasets.prepare(src, tmp_path / "work", 32, "rgb", val_fraction=0, test_fraction=0)
    npz = datasets.export_npz(prepared["dataset_dir"], tmp_path / "gpu_input.npz", limit=20)
    assert npz["images"] == 20 and npz["shape"] == [32, 32, 3]

    out = tmp_path / "out"
    proc = _run(["-c", WITHOUT_TENSORFLOW, "benchmarks.gpu_training", "--quick", "--input", npz["path"],
                 "--out", str(out), "--models", "baseline", "--precisions", "float32", "--batch", "8",
                 "--images", "16"], env={"KERAS_BACKEND": "jax"})
    result = json.loads((out / "gpu_training.json").read_text())
    assert result["tensorflow_imported"] is False
    assert result["machine"]["keras_backend"] == "jax"
    assert [(r["model"], r["precision"], r["input"]) for r in result["runs"]] == [
        ("baseline", "float32", "synthetic"), ("baseline", "float32", "real")]
    for r in result["runs"]:
        assert r["images_per_epoch"] == 16 and len(r["all_epochs_images_per_second"]) == 2
        assert r["images_per_second"] > 0
    assert "| baseline | float32 | real |" in (out / "gpu_training.md").read_text()
    assert "QUICK MODE" in proc.stdout


def test_input_throughput_compares_every_pipeline_on_the_same_images_per_source_size(tmp_path):
    _run(["-m", "benchmarks.input_throughput", "--quick", "--images", "100", "--epochs", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "input_throughput.json").read_text())
    assert list(result["sources"]) == ["500", "1024"]  # the default: photo-sized sources, resized to 160 px
    for size, source in result["sources"].items():
        assert source["source_size"] == int(size) and source["folder_mb"] > 0
        contenders = source["contenders"]
        assert set(contenders) == {"idg", "idg_augment", "idfd", "idfd_prefetch", "ours", "ours_no_augment"}
        for r in contenders.values():
            # Every contender saw every image in every epoch (the script checks each epoch's count).
            assert r["images"] == 100 and len(r["epoch_seconds"]) == 2 and r["steady_images_per_second"] > 0
        assert set(source["ratios"]) == {"idg", "idg_augment", "idfd", "idfd_prefetch"}
        assert source["ours_one_off"]["images"] == 100 and source["ours_one_off"]["one_off_seconds"] > 0
    # The 1024 px JPEGs are larger files than the 500 px ones: the folders really differ in size.
    assert result["sources"]["1024"]["folder_mb"] > result["sources"]["500"]["folder_mb"]
    table = (tmp_path / "input_throughput.md").read_text()
    assert table.count("\n| ") == 1 + 2 * 7  # header, then per source size 6 pipelines + the one-off row
    assert table.count("\n| 500 px (") == 1 and table.count("\n| 1024 px (") == 1


@pytest.mark.parametrize("script, color_mode", [("notebook_idg", "grayscale"), ("notebook_idfd", "rgb")])
def test_notebook_scripts_train_evaluate_and_save_a_model_that_loads(tmp_path, script, color_mode):
    src = make_folder(tmp_path / "src", ["Bag", "Sandal", "Trouser"], 10)
    proc = _run(["-m", f"benchmarks.{script}", "--data", str(src), "--image-size", "32", "--color-mode", color_mode,
                 "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "out")])
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["epochs"] == 2 and 0 <= last["accuracy"] <= 1
    assert 0 < last["fit_seconds"] < last["wall_seconds"]
    assert last["images"] == {"train": 24, "validation": 6}  # 20 % held back
    import keras

    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert model.input_shape == (None, 32, 32, 1 if color_mode == "grayscale" else 3)
    assert model.output_shape == (None, 3)


def test_end_to_end_pairs_imgclf_run_with_both_notebook_scripts(tmp_path):
    proc = _run(["-m", "benchmarks.end_to_end", "--quick", "--workloads", "sample", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "end_to_end.json").read_text())
    assert result["quick"] is True and list(result["workloads"]) == ["sample"]
    wl = result["workloads"]["sample"]
    assert wl["rounds"] == 1 and "accuracy_goal" not in wl and "seconds_goal" not in wl
    assert wl["imports_warmed_seconds"] > 0  # what the contenders import, read once before the first of them
    assert wl["images"] == 300 and wl["image_size"] == 28 and wl["goal_ratio"] == 1.3
    assert [r["contender"] for r in wl["runs"]] == ["ours", "notebook_idg", "notebook_idfd"]
    for r in wl["runs"]:
        # Every side trained every epoch (ours with patience = epochs) and reported its accuracy.
        assert r["epochs"] == wl["epochs"] == 2 and 0 <= r["accuracy"] <= 1 and r["wall_seconds"] > 0
    ours = wl["runs"][0]
    assert {"ingest", "train", "evaluate", "export"} <= set(ours["step_seconds"])
    # The train task's own split of its fit time, read from its train.json and history.json, shown per run.
    assert 0 < ours["fit_seconds"] < ours["step_seconds"]["train"]
    assert 0 <= ours["fit_outside_epochs_seconds"] <= ours["fit_seconds"]
    assert len(ours["seconds_before_each_epoch"]) == 2 and sum(ours["seconds_before_each_epoch"]) <= ours["fit_seconds"]
    for nb in ("notebook_idg", "notebook_idfd"):
        assert wl["ratios"][nb] == round(wl["median_wall_seconds"]["ours"] / wl["median_wall_seconds"][nb], 2)
        assert wl["meets_goal"][nb] == (wl["ratios"][nb] <= 1.3)
    table = (tmp_path / "end_to_end.md").read_text()
    assert table.count("\n| ") == 4  # header + 3 contenders
    assert table.count("| ≤ 1.3x: ") == 2
    assert f"`fit` (each run): {ours['fit_seconds']} s, {ours['fit_outside_epochs_seconds']} s of it outside" in table
    assert "QUICK MODE" in proc.stdout


@pytest.mark.parametrize("accuracies,walls", [([0.93], [299.9]), ([0.9199], [300.0]), ([0.91, 0.92, 0.95], [250, 400, 290]),
                                               ([0.5, 0.99, 0.6], [301, 10, 302])])
def test_end_to_end_judges_ours_alone_by_the_median_against_the_workloads_own_goals(accuracies, walls):
    import statistics

    from benchmarks.end_to_end import WORKLOADS, own_goals

    w = WORKLOADS["fashion70k"]
    got = own_goals(w, [{"accuracy": a, "wall_seconds": s} for a, s in zip(accuracies, walls)])
    acc, wall = statistics.median(accuracies), statistics.median(walls)
    assert got["accuracy_goal"] == {"goal": 0.92, "measured": round(acc, 4), "met": acc >= 0.92}
    assert got["seconds_goal"] == {"goal": 300.0, "measured": round(wall, 1), "met": wall < 300}
    assert own_goals(WORKLOADS["sample"], [{"accuracy": 0.9, "wall_seconds": 1.0}]) == {}


def test_end_to_end_refuses_an_unknown_workload_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--workloads", "sample,cifar",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown workload(s) cifar" in proc.stderr
    assert not (tmp_path / "end_to_end.json").exists()


def test_step_speed_times_ingest_warm_and_cold_and_predict_against_a_plain_loop(tmp_path):
    proc = _run(["-m", "benchmarks.step_speed", "--quick", "--out", str(tmp_path)])  # 100 JPEGs per size
    result = json.loads((tmp_path / "step_speed.json").read_text())
    assert result["quick"] is True and result["repeats"] == 1
    assert list(result["ingest"]) == ["500", "1024"] and list(result["predict"]) == ["1024", "160"]  # the defaults
    for size, g in result["ingest"].items():
        assert [r["contender"] for r in g["runs"]] == ["warm", "cold"]
        # The warm process has TensorFlow imported before its clock starts, as a forked local task; the cold not.
        assert [r["tensorflow_imported_before_clock"] for r in g["runs"]] == [True, False]
        for r in g["runs"]:
            assert r["images"] == 100 and r["quarantined"] == 0 and r["seconds"] > 0
        for row in g["contenders"].values():
            assert row["files"] == 100
            assert row["seconds_per_2000"] == round(row["median_seconds"] * 2000 / 100, 2)
        # Only the 1024 px sources have issue 17's reference, and the goal is judged on the warm row.
        assert ("times_faster_than_reference" in g["contenders"]["warm"]) == (size == "1024")
    warm = result["ingest"]["1024"]["contenders"]["warm"]
    assert warm["times_faster_than_reference"] == round(18.8 / warm["seconds_per_2000"], 2)
    assert result["ingest"]["1024"]["meets_goal"] == (warm["times_faster_than_reference"] >= 3)
    for g in result["predict"].values():
        assert [r["contender"] for r in g["runs"]] == ["plain", "ours", "cli"]
        # Every side classified every image; the plain loop and predict() gave the same class counts.
        assert all(r["images"] == 100 and r["failed"] == 0 for r in g["runs"])
        plain, ours = (next(r for r in g["runs"] if r["contender"] == c) for c in ("plain", "ours"))
        assert plain["class_counts"] == ours["class_counts"] and sum(ours["class_counts"].values()) == 100
        rows = g["contenders"]
        assert rows["ours"]["ratio_to_plain"] == round(rows["ours"]["images_per_second"]
                                                      / rows["plain"]["images_per_second"], 2)
        assert g["meets_goal"] == (rows["ours"]["ratio_to_plain"] >= 0.9)
    table = (tmp_path / "step_speed.md").read_text()
    assert table.count("\n| 500 px |") == 2 and table.count("\n| 1024 px |") == 2 + 1 + 3  # + reference row
    assert table.count("\n| 160 px |") == 3
    assert "issue 17's measurement before the change, same machine (reference figure, not a result)" in table
    assert "QUICK MODE" in proc.stdout


def test_preprocess_shards_runs_kfp_local_over_shard_tasks_and_checks_the_output(tmp_path):
    _run(["-m", "benchmarks.preprocess_shards", "--quick", "--tasks", "1,2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "preprocess_shards.json").read_text())
    assert result["images"] == 300 and result["outputs_identical"] is True
    assert set(result["wall_seconds"]) == {"in-process", "1", "2"}
    assert [len(result["shard_task_seconds"][n]) for n in ("1", "2")] == [1, 2]
    assert "| kfp.local: plan, 2 shard task(s), merge | 2 |" in (tmp_path / "preprocess_shards.md").read_text()


def test_feature_cache_pairs_each_family_with_and_without_cached_features(tmp_path):
    _run(["-m", "benchmarks.feature_cache", "--quick", "--images", "100", "--epochs", "2", "--models", "mobilenet_v2",
          "--out", str(tmp_path)])
    result = json.loads((tmp_path / "feature_cache.json").read_text())
    assert [(r["model"], r["cache_features"]) for r in result["runs"]] == [("mobilenet_v2", "off"),
                                                                          ("mobilenet_v2", "on")]
    for r in result["runs"]:
        assert r["epochs_run"] == 2 and r["wall_seconds"] > 0 and 0 <= r["test_accuracy"] <= 1
    assert result["speedups"]["mobilenet_v2"]["wall"] > 0
    assert (tmp_path / "feature_cache.md").read_text().count("\n| mobilenet_v2 |") == 2


def test_label_audit_counts_only_the_moved_files_the_audit_scored(tmp_path):
    """The quick audit benchmark (300 images, 3 folds): its counts agree with the suspects and scores it
    kept, and recall is taken over the moved files the audit could see (not the test split's)."""
    import csv

    keep = tmp_path / "keep"
    _run(["-m", "benchmarks.label_audit", "--quick", "--keep", str(keep), "--out", str(tmp_path)])
    r = json.loads((tmp_path / "label_audit.json").read_text())["workloads"]["sample"]
    audit = keep / "sample" / "audit"
    with open(keep / "sample" / "relabel.csv", newline="") as f:
        moved = {row["location"] for row in csv.DictReader(f)}
    with open(audit / "scores.csv", newline="") as f:
        audited = {row["location"] for row in csv.DictReader(f)}
    with open(audit / "suspects.csv", newline="") as f:
        suspects = [row["location"] for row in csv.DictReader(f)]
    k = len(moved & audited)
    assert r["moved"] == len(moved) >= k == r["moved_audited"] > 0
    assert r["images"] == len(audited) and r["suspects"] == len(suspects)
    assert r["top_k"]["found"] == len(set(suspects[:k]) & moved)
    assert r["top_2k"]["found"] == len(set(suspects[:2 * k]) & moved)
    assert r["top_k"]["recall"] == round(r["top_k"]["found"] / k, 4)
