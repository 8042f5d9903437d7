"""The compiled pipeline and a whole local run through kfp.local, as `make run` does it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from imgclf.pipelines.cli.main import main
from tests.conftest import TEN, make_folder

STEPS = ["ingest-plan", "ingest-shard", "ingest", "preprocess-plan", "preprocess-shard", "preprocess-merge", "train",
         "evaluate", "export"]


def test_compiled_yaml_loads_back(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--allow-local-image", "-o", str(out)]) == 0
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "imgclf-training"
    params = loaded.component_spec.inputs
    for name in ["data", "image_size", "color_mode", "architecture", "epochs", "batch_size", "learning_rate",
                 "val_fraction", "test_fraction", "seed"]:
        assert name in params, name
    spec, _platform = yaml.safe_load_all(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"validate", "ingest-plan", "for-loop-1", "ingest", "preprocess-plan", "for-loop-2",
                          "preprocess-merge", "champion", "condition-branches-3"}
    assert tasks["ingest-plan"]["dependentTasks"] == ["validate"]  # every parameter checked before any work
    # Ingest and preprocess fan out over the shard tasks their plans chose (parameters, 0: automatic).
    assert tasks["for-loop-1"]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--ingest-plan-Output"}
    assert tasks["ingest"]["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert tasks["for-loop-2"]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--preprocess-plan-Output"}
    assert tasks["preprocess-merge"]["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert loaded.component_spec.inputs["shard_tasks"].default == 0
    assert loaded.component_spec.inputs["ingest_tasks"].default == 0
    # caching off for every task that reads the source: it may change between runs
    assert tasks["ingest-plan"]["cachingOptions"] == tasks["ingest"]["cachingOptions"] == {}
    assert tasks["champion"]["cachingOptions"] == {}  # reads the registry
    # dsl.If/dsl.Else: train only on new data; inside, publish only if the gate passed.
    comps = spec["components"]
    condition_of = {}  # task -> the trigger condition of the branch that holds it
    for branches in (c["dag"]["tasks"] for n, c in comps.items() if n.startswith("comp-condition-branches")):
        for branch in branches.values():
            for task in comps[branch["componentRef"]["name"]]["dag"]["tasks"]:
                condition_of[task] = branch["triggerPolicy"]["condition"]
    train_if = "inputs.parameter_values['pipelinechannel--champion-action'] == 'train'"
    gate_if = "inputs.parameter_values['pipelinechannel--gate-decision'] == 'publish'"
    assert {t: condition_of[t] for t in ("train", "evaluate", "export", "gate")} == dict.fromkeys(
        ("train", "evaluate", "export", "gate"), train_if)
    assert condition_of["training-skipped"] == f"!({train_if})"
    assert condition_of["publish"] == gate_if and condition_of["not-published"] == f"!({gate_if})"
    in_dags = {t["componentRef"]["name"]: t for c in comps.values() if "dag" in c for t in c["dag"]["tasks"].values()}
    caching = {n: t.get("cachingOptions") for n, t in in_dags.items()}
    # A preempted or failed train attempt is retried, and resumes from its backup.
    assert in_dags["comp-train"]["retryPolicy"]["maxRetryCount"] == 3
    assert caching["comp-train"] == {"enableCache": True} and caching["comp-gate"] == caching["comp-publish"] == {}
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == {"outcome"}
    images = {n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == "imgclf-gpu:0.2.0"  # compiled for a cluster: train asks for a GPU
    assert set(images.values()) == {"imgclf:0.2.0"}


@pytest.mark.slow
def test_whole_pipeline_runs_locally(tmp_path):
    """`imgclf run --architecture mobilenet_v2 --weights FILE --fine-tune-layers 30`: transfer learning from a
    weights file (as an air-gapped cluster has it), both phases, through all five steps."""
    import keras

    data = make_folder(tmp_path / "data", TEN, 12, jpeg_every=4)
    weights = tmp_path / "mobilenet_v2_notop.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--image-size", "28",
         "--color-mode", "grayscale", "--architecture", "mobilenet_v2", "--weights", str(weights),
         "--fine-tune-layers", "30", "--fine-tune-epochs", "1", "--epochs", "1", "--batch-size", "16",
         "--val-fraction", "0.1", "--test-fraction", "0.2", "--pipeline-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "fine-tuning the top 30 backbone layers" in out + proc.stderr
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


@pytest.mark.slow
def test_quiet_cached_reruns_reuse_unchanged_tasks_and_rerun_after_a_data_change(tmp_path):
    """`imgclf run --quiet --cache` twice, then with one image added: the second run serves every task
    whose inputs are unchanged from the cache (never the champion lookup or the gate), leaves a complete
    run folder, and shows no executor dumps; the third re-runs ingest and everything after it."""
    import json

    from tests.conftest import TWO

    data = make_folder(tmp_path / "data", TWO, 20)
    argv = [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--image-size", "20", "--color-mode",
            "grayscale", "--epochs", "1", "--batch-size", "16", "--pipeline-root", str(tmp_path / "runs"),
            "--quiet", "--cache"]

    def run() -> tuple[str, list[str], str]:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        out = proc.stdout
        assert "executor_input" not in out and "[KFP Executor" not in out and '"parameterValues"' not in out
        assert "evaluate: accuracy" in out or "evaluate: unchanged inputs" in out
        times = out[out.index("step times:"):].splitlines()[1:]
        cached = [line.split()[0] for line in times if line.endswith("cached")]
        report = out.split("HTML report   : ")[1].split("\n")[0]
        return out, cached, report

    first, cached, _ = run()
    assert cached == [] and len(first.splitlines()) < 120
    second, cached, report = run()
    assert set(cached) == {"validate", "ingest-plan", "ingest-shard", "ingest", "preprocess-plan",
                           "preprocess-shard", "preprocess-merge", "train", "evaluate", "export", "not-published"}
    assert "champion lookup" in second and "gate: NO-REGISTRY" in second            # always run
    run_dir = Path(report).parent
    assert (run_dir / "export" / "saved_model" / "saved_model.pb").is_file() and Path(report).stat().st_size > 1000
    executor_output = json.loads((run_dir / "train" / "executor_output.json").read_text())
    assert str(run_dir) in json.dumps(executor_output) or not executor_output.get("artifacts")
    (data / TWO[0] / "extra.png").write_bytes(next((data / TWO[1]).iterdir()).read_bytes())
    _, cached, _ = run()
    assert cached == ["validate"] or cached == []     # the data changed: ingest and all after it re-ran


def test_run_on_a_missing_folder_fails_with_the_cause(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(tmp_path / "missing"),
                           "--pipeline-root", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    # Refused before any task runs, naming the parameter.
    assert f"imgclf: error: parameter data='{tmp_path / 'missing'}': no such file or folder" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.unit
def test_imgclf_step_runs_one_step_with_typed_flags(tmp_path, capsys):
    import json

    from tests.conftest import TWO

    data = make_folder(tmp_path / "d", TWO, 10)
    assert main(["step", "ingest", "--data", str(data), "--output-dir", str(tmp_path / "ds"), "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 20 and summary["workers"] == 2
    try:
        main(["step", "train", "-h"])
    except SystemExit as e:
        assert e.code == 0
    assert "--learning-rate" in capsys.readouterr().out


def test_compile_targets_request_the_gpu_in_each_backends_terms(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_GPU_IMAGE", "us-docker.pkg.dev/p/r/imgclf-gpu:1")
    kfp_file, vertex_file = tmp_path / "kfp.yaml", tmp_path / "vertex.yaml"
    assert main(["compile", "--allow-local-image", "-o", str(kfp_file), "--gpu-node-selector",
                 "cloud.google.com/gke-accelerator=nvidia-tesla-t4"]) == 0
    assert main(["compile", "--allow-local-image", "--target", "vertex", "--gpu-type", "NVIDIA_L4", "-o", str(vertex_file)]) == 0
    pipeline, platform = yaml.safe_load_all(kfp_file.read_text())
    (vertex,) = yaml.safe_load_all(vertex_file.read_text())  # one document: Vertex cannot load a second
    for spec, accel in ((pipeline, "nvidia.com/gpu"), (vertex, "NVIDIA_L4")):
        train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
        assert train["image"] == "us-docker.pkg.dev/p/r/imgclf-gpu:1"
        assert train["resources"]["accelerator"]["resourceType"] == accel
        assert train["resources"]["accelerator"]["resourceCount"] == "1"
        others = [e for n, e in spec["deploymentSpec"]["executors"].items() if n != "exec-train"]
        assert all("accelerator" not in e["container"].get("resources", {}) for e in others)
    k8s_train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s_train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert k8s_train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert "secretAsEnv" not in vertex_file.read_text()
    assert main(["compile", "--allow-local-image", "--gpus", "0", "-o", str(tmp_path / "cpu.yaml")]) == 0
    assert "accelerator" not in (tmp_path / "cpu.yaml").read_text()


@pytest.mark.unit
def test_compile_rejects_backend_mismatches(tmp_path, capsys):
    assert main(["compile", "--allow-local-image", "--target", "vertex", "--gpu-type", "nvidia.com/gpu",
                 "-o", str(tmp_path / "x")]) == 1
    assert "is not one of NVIDIA_TESLA_T4" in capsys.readouterr().err
    assert main(["compile", "--allow-local-image", "--target", "kfp", "--gpu-type", "NVIDIA_L4", "-o", str(tmp_path / "y")]) == 1
    assert "Kubernetes resource names" in capsys.readouterr().err
    assert main(["compile", "--allow-local-image", "--target", "vertex", "--s3-secret", "x", "-o", str(tmp_path / "z")]) == 1
    assert "workload identity" in capsys.readouterr().err
    assert main(["compile", "--allow-local-image", "--target", "vertex", "--http-secret", "x", "-o", str(tmp_path / "w")]) == 1
    assert "--http-secret" in capsys.readouterr().err


@pytest.mark.unit
def test_the_http_token_secret_reaches_every_task_by_name_only(tmp_path, monkeypatch):
    """`--http-secret` maps the secret's `token` to IMGCLF_HTTP_TOKEN on every task that may read images
    (all of them): the compiled YAML names the secret, never a token, even one set in this shell."""
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", "tok-VISIBLE-IF-LEAKED")
    out = tmp_path / "p.yaml"
    for pipeline in ("training", "predict"):
        assert main(["compile", "--allow-local-image", "--pipeline", pipeline, "--http-secret", "web-data",
                     "--http-auth-hosts", "data.example.org", "-o", str(out)]) == 0
        text = out.read_text()
        assert "tok-VISIBLE-IF-LEAKED" not in text
        spec, platform = yaml.safe_load_all(text)
        execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert set(execs) == set(spec["deploymentSpec"]["executors"])
        for ex in spec["deploymentSpec"]["executors"].values():
            assert {"name": "IMGCLF_HTTP_AUTH_HOSTS", "value": "data.example.org"} in ex["container"]["env"]
        for ex in execs.values():
            assert {"secretName": "web-data", "keyToEnv": [{"secretKey": "token", "envVar": "IMGCLF_HTTP_TOKEN"}]} \
                in [{k: v for k, v in sec.items() if k in ("secretName", "keyToEnv")} for sec in ex["secretAsEnv"]]


UNPULLABLE = ["imgclf:0.1.0", "imgclf", "imgclf-gpu:0.1.0", "imgclf@sha256:" + "a" * 64, "", "ghcr.io/acme/imgclf 1"]
PULLABLE = ["ghcr.io/acme/imgclf:0.1.0", "us-docker.pkg.dev/p/r/imgclf:1", "acme/imgclf:2", "localhost:5000/imgclf:1",
            "registry.example:443/team/imgclf@sha256:" + "b" * 64]


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_compiling_for_a_cluster_refuses_images_it_cannot_pull(target, tmp_path, capsys):
    out = tmp_path / "p.yaml"
    for name in UNPULLABLE:
        for flag in ("--image", "--gpu-image"):
            other = "--gpu-image" if flag == "--image" else "--image"
            assert main(["compile", "--target", target, flag, name, other, "ghcr.io/acme/ok:1", "-o", str(out)]) == 1
            err = capsys.readouterr().err
            assert flag in err and ("--image REGISTRY/" in err or "no spaces" in err), (name, err)
    assert not out.exists()
    for name in PULLABLE:
        assert main(["compile", "--target", target, "--image", name, "--gpu-image", name, "-o", str(out)]) == 0
        executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
        assert {e["container"]["image"] for e in executors.values()} == {name}
    # A CPU-only pipeline needs no GPU image; --allow-local-image lets a kind/minikube cluster use a local build.
    assert main(["compile", "--target", target, "--gpus", "0", "--image", "ghcr.io/acme/imgclf:1", "-o", str(out)]) == 0
    assert main(["compile", "--target", target, "--allow-local-image", "--image", "imgclf:dev", "-o", str(out)]) == 0


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_every_task_gets_cpu_and_memory_requests_and_limits_train_the_largest(target, tmp_path):
    from imgclf.pipelines.definitions.platform import DEFAULT_RESOURCES, cpu_quantity, memory_quantity

    out = tmp_path / "p.yaml"
    assert main(["compile", "--target", target, "--allow-local-image", "-o", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    tasks = {name: spec["components"][t["componentRef"]["name"]]["executorLabel"]
             for comp in [spec["root"], *spec["components"].values()]
             for name, t in comp.get("dag", {}).get("tasks", {}).items()
             if "executorLabel" in spec["components"][t["componentRef"]["name"]]}
    # trial and select: sweeps only; audit: the audit pipeline, or training compiled with --audit-folds
    assert set(tasks) == set(DEFAULT_RESOURCES) - {"predict", "trial", "select", "audit"}
    for name, executor in tasks.items():
        r = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        want = DEFAULT_RESOURCES[name]
        assert (r["resourceCpuRequest"], r["resourceCpuLimit"], r["resourceMemoryRequest"], r["resourceMemoryLimit"]) \
            == (want.cpu_request, want.cpu_limit, want.memory_request, want.memory_limit), name
    biggest = max(DEFAULT_RESOURCES, key=lambda n: (cpu_quantity(DEFAULT_RESOURCES[n].cpu_limit),
                                                    memory_quantity(DEFAULT_RESOURCES[n].memory_limit)))
    assert biggest in ("train", "trial") and DEFAULT_RESOURCES["trial"] == DEFAULT_RESOURCES["train"]

    assert main(["compile", "--target", target, "--allow-local-image", "--cpu", "all=2", "--memory", "train=20Gi:40Gi",
                 "--cpu", "train=6:12", "-o", str(out)]) == 0
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    train, ingest = (executors[e]["container"]["resources"] for e in ("exec-train", "exec-ingest"))
    assert (train["resourceCpuRequest"], train["resourceCpuLimit"], train["resourceMemoryLimit"]) == ("6", "12", "40Gi")
    assert (ingest["resourceCpuRequest"], ingest["resourceCpuLimit"], ingest["resourceMemoryLimit"]) == ("2", "2", "8Gi")


BAD_RESOURCES = [("--cpu", "train=8:4", "above its limit"), ("--memory", "train=64Gi:32Gi", "above its limit"),
                 ("--cpu", "train=eight", "give cores"), ("--cpu", "train=1.5m", "give cores"),
                 ("--memory", "all=0.5", "not a whole number of bytes"), ("--memory", "train=16GB", "whole number"),
                 ("--cpu", "trian=2", "no task 'trian'"), ("--cpu", "2", "STEP=REQUEST"), ("--memory", "train=", "STEP=")]


@pytest.mark.unit
def test_bad_resource_settings_are_refused_before_compiling(tmp_path, capsys):
    for flag, value, cause in BAD_RESOURCES:
        assert main(["compile", "--allow-local-image", flag, value, "-o", str(tmp_path / "p.yaml")]) == 1, value
        assert cause in capsys.readouterr().err, value
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.slow
def test_a_failure_inside_a_branch_names_the_step_and_its_error_line(tmp_path):
    """Before: "the pipeline failed in step 'condition-branches-1'" (a KFP group name)."""
    from imgclf.pipelines.definitions.training import training_pipeline
    from imgclf.pipelines.local.run import PipelineFailed, run_pipeline

    data = make_folder(tmp_path / "data", TEN[:3], 12)
    (tmp_path / "w.weights.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(training_pipeline, {"data": str(data), "image_size": 32, "architecture": "mobilenet_v2",
                                         "weights": str(tmp_path / "w.weights.h5"), "epochs": 1},
                     str(tmp_path / "runs"))
    assert failed.value.step == "train"
    assert str(failed.value).startswith("the pipeline failed in step 'train': ValueError: weights file")
