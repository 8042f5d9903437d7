"""The compiled pipeline and a whole local run through kfp.local, as `make run` does it."""
from __future__ import annotations

import subprocess
import sys

import yaml
from kfp import components

from pipelines.cli import main
from tests.conftest import TEN, make_folder

STEPS = ["ingest", "preprocess", "train", "evaluate", "export"]


def test_compiled_yaml_loads_back(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out)]) == 0
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "imgclf-training"
    params = loaded.component_spec.inputs
    for name in ["data", "image_size", "color_mode", "model", "epochs", "batch_size", "learning_rate",
                 "val_fraction", "test_fraction", "seed"]:
        assert name in params, name
    spec, _platform = yaml.safe_load_all(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS)
    assert tasks["ingest"]["cachingOptions"] == {}  # caching off: the source may change between runs
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {"imgclf:0.1.0"}


def test_whole_pipeline_runs_locally(tmp_path):
    data = make_folder(tmp_path / "data", TEN, 12, jpeg_every=4)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--image-size", "28",
         "--color-mode", "grayscale", "--epochs", "2", "--batch-size", "16", "--width", "8", "--depth", "2",
         "--val-fraction", "0.1", "--test-fraction", "0.2", "--pipeline-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    summary = out[out.index("=== imgclf run finished"):]
    assert "test accuracy :" in summary
    for step in STEPS:
        assert f"  {step} " in summary, step
    saved_model = summary.split("SavedModel    : ")[1].split("\n")[0]
    report = summary.split("HTML report   : ")[1].split("\n")[0]
    assert saved_model.startswith(str(tmp_path / "runs"))
    assert "data:image/png;base64," in open(report).read()
    ingest_report = summary.split("ingest report : ")[1].split("\n")[0]
    assert "Quarantined" not in open(ingest_report).read() and "Samples per class" in open(ingest_report).read()
    check = subprocess.run([sys.executable, "-c", (
        "import sys, tensorflow as tf; f = tf.saved_model.load(sys.argv[1]).signatures['serving_default'];"
        "print(f.structured_input_signature[1]['image_bytes'].dtype.name, sorted(f.structured_outputs))"),
        saved_model], capture_output=True, text=True, check=True)
    assert check.stdout.strip().splitlines()[-1] == "string ['class_index', 'class_name', 'probabilities']"


def test_run_on_a_missing_folder_fails_with_the_cause(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", str(tmp_path / "missing"),
                           "--pipeline-root", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "missing: not a directory" in proc.stdout + proc.stderr
    assert "imgclf: error: the pipeline failed in step 'ingest'" in proc.stderr


def test_imgclf_step_runs_one_step_with_typed_flags(tmp_path, capsys):
    import json

    from tests.conftest import TWO

    data = make_folder(tmp_path / "d", TWO, 10)
    assert main(["step", "ingest", "--source", str(data), "--output-dir", str(tmp_path / "ds"), "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 20 and summary["workers"] == 2
    try:
        main(["step", "train", "-h"])
    except SystemExit as e:
        assert e.code == 0
    assert "--learning-rate" in capsys.readouterr().out
