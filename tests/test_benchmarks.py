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


def test_input_throughput_compares_every_pipeline_on_the_same_images(tmp_path):
    _run(["-m", "benchmarks.input_throughput", "--quick", "--images", "100", "--epochs", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "input_throughput.json").read_text())
    contenders = result["contenders"]
    assert set(contenders) == {"idg", "idg_augment", "idfd", "idfd_prefetch", "ours", "ours_no_augment"}
    for r in contenders.values():
        # Every contender saw every image in every epoch (the script checks each epoch's count).
        assert r["images"] == 100 and len(r["epoch_seconds"]) == 2 and r["steady_images_per_second"] > 0
    assert set(result["ratios"]) == {"idg", "idg_augment", "idfd", "idfd_prefetch"}
    assert result["ours_one_off"]["images"] == 100 and result["ours_one_off"]["one_off_seconds"] > 0
    table = (tmp_path / "input_throughput.md").read_text()
    assert table.count("\n| ") == 8  # header + 6 pipelines + the one-off row


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
