"""Multi-worker training on a cluster, the launcher's side (components/train/cluster_jobs.py): the Kubeflow
Trainer TrainJob checked against Trainer's CRD schema and admission rules on generated option sets, the
launcher against a strict TrainJob double (create, poll, complete; a failed condition named; the job
deleted on our own failure), the environment each worker gets resolved by the worker's own code into one
consistent cluster, and Vertex AI's CustomJob worker pools parsed into the real protobuf messages.

What no test here can show (no real cluster): that Trainer's controller and JobSet bring the pods up with
these hostnames and JOB_COMPLETION_INDEX, that the pods resolve each other through JobSet's headless
service, and that Vertex gives each replica the TF_CONFIG its documentation describes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import signal
from pathlib import Path

import pytest
import yaml

from imgclf.components.train import cluster_jobs
from imgclf.components.train.cluster_jobs import ClusterError, ClusterSettings, WorkersFailed
from imgclf.components.train.options import TrainOptions
from tests.trainer_double import TrainerDouble, runtime_problems, shipped_runtime, status, trainjob_problems

SECRET = "s3-SECRET-value-never-in-a-manifest"
GPU_TYPES = ("nvidia.com/gpu", "amd.com/gpu")
VERTEX_GPUS = ("NVIDIA_TESLA_T4", "NVIDIA_L4", "NVIDIA_TESLA_A100", "NVIDIA_H100_80GB", "NVIDIA_TESLA_V100")


def _options(rng: random.Random, workers: int) -> dict:
    """A generated set of train options, as the KFP task receives them (every option, typed)."""
    opts = TrainOptions(seed=rng.randrange(2 ** 31), architecture=rng.choice(("baseline", "mobilenet_v2")),
                        epochs=rng.randint(1, 500), batch_size=rng.choice((8, 32, 256)),
                        learning_rate=rng.choice((0.001, 3e-4, 0.1)), augment=rng.random() < 0.5,
                        label_smoothing=rng.choice((0.0, 0.1)), class_weight=rng.choice(("auto", "none", "a=2,b=0.5")),
                        tensorboard_uri=rng.choice(("", "gs://bucket/tb")), train_workers=workers)
    return opts.to_dict()


def _settings(rng: random.Random, target: str = "kfp") -> ClusterSettings:
    gpus = rng.choice((0, 0, 1, 2, 4, 8))
    cpu = rng.choice(("", "500m", "4", "16"))
    memory = rng.choice(("", "2Gi", "16Gi", "64Gi"))
    return ClusterSettings(
        target=target, image=rng.choice(("us-docker.pkg.dev/p/r/imgclf:1.2.0", "reg.local:5000/imgclf-gpu@sha256:"
                                                                              + "ab" * 32)),
        cpu_request=cpu, cpu_limit=cpu, memory_request=memory, memory_limit=memory, gpus=gpus,
        accelerator=rng.choice(GPU_TYPES) if gpus else "",
        node_selector=rng.choice(((), ("cloud.google.com/gke-accelerator", "nvidia-l4"))),
        s3_secret=rng.choice(("", "mlpipeline-minio-artifact")), timeout_s=rng.choice((3600, 7 * 24 * 3600)))


def _manifest(rng: random.Random, workers: int, settings: ClusterSettings | None = None, environ=None):
    settings = settings or _settings(rng)
    model_uri = f"minio://mlpipeline/v2/artifacts/imgclf-training/run-{rng.randrange(10 ** 6)}/train/model"
    args = cluster_jobs.worker_args(_options(rng, workers), model_uri.replace("train/model", "merge/records"),
                                    model_uri, model_uri + ".backup")
    name = cluster_jobs.job_name(model_uri)
    return settings, cluster_jobs.trainjob_manifest(settings, name, workers, args, namespace="ml", environ=environ)


def _worker_parser() -> argparse.ArgumentParser:
    """The container entry's own parser for `train` (components/__main__.py)."""
    from imgclf.components import steps
    from imgclf.components.__main__ import add_step_arguments

    p = argparse.ArgumentParser()
    add_step_arguments(p, steps.function("train"))
    return p


# --- the TrainJob ---------------------------------------------------------------------------------

@pytest.mark.unit
def test_trainjob_manifests_fit_trainers_schema_and_admission_on_generated_option_sets():
    rng = random.Random(39)
    runtimes = {"imgclf-workers": shipped_runtime()}
    environ = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": SECRET + "-id",
               "IMGCLF_S3_ENDPOINT_URL": "http://minio-service.kubeflow:9000"}
    seen = set()
    for case in range(120):
        workers = 2 + case % 15  # 2..16
        settings, doc = _manifest(rng, workers, environ=environ)
        assert trainjob_problems(doc, runtimes) == [], (case, settings)
        trainer = doc["spec"]["trainer"]
        assert trainer["numNodes"] == workers and trainer["image"] == settings.image
        assert trainer["command"] == cluster_jobs.COMMAND
        env = {e["name"]: e for e in trainer["env"]}
        assert env["KERAS_BACKEND"]["value"] == "jax"
        assert env["IMGCLF_S3_ENDPOINT_URL"]["value"] == environ["IMGCLF_S3_ENDPOINT_URL"]
        assert len(env["IMGCLF_WORKER_HOSTS"]["value"].split(",")) == workers
        resources = trainer.get("resourcesPerNode", {})
        assert resources.get("limits", {}).get(settings.accelerator) == (str(settings.gpus) if settings.gpus else None)
        if settings.cpu_limit:
            assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == settings.cpu_limit
        if settings.s3_secret:  # by reference, as on the task itself
            assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
                "secretKeyRef": {"name": settings.s3_secret, "key": "secretkey"}}}
        else:
            assert "AWS_SECRET_ACCESS_KEY" not in env
        pod = (doc["spec"].get("runtimePatches") or [{}])[0].get("trainingRuntimeSpec", {}).get("template", {}) \
            .get("spec", {}).get("replicatedJobs", [{}])[0].get("template", {}).get("spec", {}) \
            .get("template", {}).get("spec", {})
        assert bool(pod.get("tolerations")) == bool(settings.gpus)
        assert bool(pod.get("nodeSelector")) == bool(settings.node_selector)
        assert SECRET not in json.dumps(doc)
        seen.add((bool(settings.gpus), bool(settings.cpu_limit), bool(settings.node_selector), bool(settings.s3_secret)))
    assert len(seen) == 16, f"the generated cases missed combinations: {sorted(seen)}"


@pytest.mark.unit
def test_the_schema_and_admission_checks_refuse_what_trainer_refuses():
    """The checks the tests above rely on can fail: each mutation of a valid manifest is refused."""
    rng = random.Random(7)
    runtimes = {"imgclf-workers": shipped_runtime()}
    _, good = _manifest(rng, 4, settings=ClusterSettings(target="kfp", image="r/imgclf:1", gpus=1,
                                                         accelerator="nvidia.com/gpu"))
    assert trainjob_problems(good, runtimes) == []

    def mutated(change):
        doc = copy.deepcopy(good)
        change(doc)
        return trainjob_problems(doc, runtimes)

    assert mutated(lambda d: d["spec"]["trainer"].update(replicas=4))  # not a Trainer field
    assert mutated(lambda d: d["spec"]["trainer"].update(numNodes="4"))
    assert mutated(lambda d: d["spec"]["trainer"].update(numNodes=2.5))
    assert mutated(lambda d: d["spec"]["trainer"].update(args=["x"] * 129))
    assert mutated(lambda d: d["metadata"].update(name="Imgclf-Train"))
    assert mutated(lambda d: d["metadata"].update(name="imgclf-" + "x" * 60))
    assert mutated(lambda d: d["spec"].pop("runtimeRef"))
    assert mutated(lambda d: d["spec"]["runtimeRef"].update(name="torch-distributed"))  # not installed
    assert mutated(lambda d: d["spec"]["runtimePatches"][0].update(manager="imgclf"))
    assert mutated(lambda d: d["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
                   ["replicatedJobs"][0].update(name="launcher"))
    assert mutated(lambda d: d["spec"]["trainer"]["env"].append({"name": "X", "valueFrom": {"secret": "s"}}))


@pytest.mark.unit
def test_the_shipped_runtime_is_a_plain_trainer_runtime_with_indexed_pods_and_stable_hostnames():
    runtime = shipped_runtime()
    assert runtime_problems(runtime) == []
    spec = runtime["spec"]
    assert set(spec["mlPolicy"]) == {"numNodes"}  # no framework plugin: Trainer's PlainML
    jobset = spec["template"]["spec"]
    assert jobset["network"]["enableDNSHostnames"] is True
    [node] = jobset["replicatedJobs"]
    assert node["name"] == cluster_jobs.NODE
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert node["template"]["spec"]["completionMode"] == "Indexed"  # JOB_COMPLETION_INDEX in every pod
    [container] = node["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == cluster_jobs.NODE
    assert container["ports"][0]["containerPort"] == cluster_jobs.PORT
    broken = copy.deepcopy(runtime)
    broken["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["completionsMode"] = "Indexed"
    assert runtime_problems(broken)  # a misspelt field is refused, not ignored


@pytest.mark.unit
def test_each_pods_environment_resolves_to_one_cluster_with_the_chief_first():
    """What each pod of the TrainJob would have (its env, plus JOB_COMPLETION_INDEX from Kubernetes), read by
    the workers' own resolver: every pod sees the same hosts, its own hostname at its index, pod 0 chief."""
    from imgclf.components.train.distributed import cluster_from_environment

    rng = random.Random(3)
    for workers in range(2, 17):
        _, doc = _manifest(rng, workers)
        name = doc["metadata"]["name"]
        env = {e["name"]: e["value"] for e in doc["spec"]["trainer"]["env"] if "value" in e}
        clusters = [cluster_from_environment({**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(workers)]
        assert {c.hosts for c in clusters} == {clusters[0].hosts} and len(clusters[0].hosts) == workers
        for i, c in enumerate(clusters):
            assert c.index == i and c.is_chief == (i == 0)
            # JobSet's pod hostname <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>, jobset = TrainJob
            assert c.hosts[i] == f"{name}-node-0-{i}.{name}:{cluster_jobs.PORT}"
        assert clusters[0].coordinator == clusters[-1].coordinator == f"{name}-node-0-0.{name}:{cluster_jobs.PORT}"


@pytest.mark.unit
def test_vertex_replicas_tf_config_resolves_to_one_cluster_with_pool_0_the_chief():
    """TF_CONFIG as Vertex AI describes it for worker pools (pool 0 the chief, pool 1 the workers), in both of
    the spellings its documentation uses, for the pools worker_pool_specs asks for."""
    from imgclf.components.train.distributed import cluster_from_environment

    settings = ClusterSettings(target="vertex", image="r/imgclf:1", machine_type="n1-standard-8")
    for workers in range(2, 17):
        pools = cluster_jobs.worker_pool_specs(settings, workers, ["--epochs", "1"])
        counts = [p["replica_count"] for p in pools]
        assert counts == [1, workers - 1]
        for chief, worker in (("chief", "worker"), ("workerpool0", "workerpool1")):
            spec = {chief: ["cmle-training-workerpool0-1-0:2222"],
                    worker: [f"cmle-training-workerpool1-1-{i}:2222" for i in range(counts[1])]}
            seen = []
            for role, n in ((chief, counts[0]), (worker, counts[1])):
                for i in range(n):
                    c = cluster_from_environment({"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": role,
                                                                                                     "index": i}})})
                    seen.append(c)
            assert [c.index for c in seen] == list(range(workers))
            assert {c.hosts for c in seen} == {seen[0].hosts} and seen[0].is_chief
            assert seen[0].hosts[0] == spec[chief][0]


@pytest.mark.unit
def test_worker_arguments_parse_back_to_the_same_options_in_the_workers_own_command():
    rng = random.Random(11)
    parser = _worker_parser()
    for _ in range(40):
        workers = rng.randint(2, 16)
        options = _options(rng, workers)
        args = cluster_jobs.worker_args(options, "s3://b/records", "s3://b/run/train/model", "s3://b/run/train/model.backup")
        parsed = vars(parser.parse_args(args))
        assert parsed.pop("dataset_dir") == "s3://b/records"
        assert parsed.pop("model_dir") == "s3://b/run/train/model.workers/model"
        assert parsed.pop("curves_html") == "s3://b/run/train/model.workers/curves.html"
        assert parsed.pop("backup_uri") == "s3://b/run/train/model.backup"
        assert TrainOptions(**parsed) == TrainOptions(**options)
        assert len(args) <= cluster_jobs.MAX_ARGS
    with pytest.raises(ValueError, match="not train options"):
        cluster_jobs.worker_args({"epochs": 2, "learning_rat": 0.1}, "a", "b", "c")


@pytest.mark.unit
def test_settings_travel_as_one_variable_and_nothing_else_is_taken():
    rng = random.Random(5)
    for _ in range(20):
        s = _settings(rng)
        assert ClusterSettings.from_env({cluster_jobs.SETTINGS_ENV: s.to_env()}) == s
    assert ClusterSettings.from_env({}) is None
    with pytest.raises(ValueError, match="unknown fields"):
        ClusterSettings.from_env({cluster_jobs.SETTINGS_ENV: json.dumps({"target": "kfp", "image": "r/i:1",
                                                                         "password": "x"})})
    with pytest.raises(ValueError, match="target"):
        ClusterSettings(target="local", image="r/i:1")
    with pytest.raises(ValueError, match="Trainer runtime"):
        ClusterSettings(target="kfp", image="r/i:1", runtime="Imgclf Workers")


# --- Vertex AI worker pools ---------------------------------------------------------------------------

@pytest.mark.unit
def test_vertex_worker_pools_are_valid_custom_job_messages_with_the_same_machine_everywhere():
    from google.cloud.aiplatform_v1.types import CustomJob
    from google.protobuf import json_format

    rng = random.Random(21)
    for _ in range(60):
        workers, gpus = rng.randint(2, 16), rng.choice((0, 1, 2, 4))
        accelerator = rng.choice(VERTEX_GPUS) if gpus else ""
        machine = rng.choice(("n1-standard-8", "g2-standard-24", "a2-highgpu-4g"))
        settings = ClusterSettings(target="vertex", image="us-docker.pkg.dev/p/r/imgclf-gpu:1", gpus=gpus,
                                   accelerator=accelerator, machine_type=machine)
        args = cluster_jobs.worker_args(_options(rng, workers), "gs://b/records", "gs://b/m", "gs://b/m.backup")
        pools = cluster_jobs.worker_pool_specs(settings, workers, args, environ={"AWS_SECRET_ACCESS_KEY": SECRET})
        job = CustomJob(display_name="x", job_spec={"worker_pool_specs": pools})  # raises on a wrong field
        parsed = json_format.MessageToDict(CustomJob.pb(job))["jobSpec"]["workerPoolSpecs"]
        assert [int(p["replicaCount"]) for p in parsed] == [1, workers - 1]
        assert all(p["machineSpec"] == parsed[0]["machineSpec"] for p in parsed)
        assert parsed[0]["machineSpec"].get("acceleratorCount", 0) == gpus
        assert all(p["containerSpec"]["args"] == args and p["containerSpec"]["command"] == cluster_jobs.COMMAND
                   for p in parsed)
        assert {"name": "KERAS_BACKEND", "value": "jax"} in parsed[1]["containerSpec"]["env"]
        assert SECRET not in json.dumps(parsed)


@pytest.mark.unit
def test_vertex_machine_types_fit_the_task_limits_and_gpus():
    assert cluster_jobs.vertex_machine_type("8", "32Gi", "NVIDIA_TESLA_T4", 1) == "n1-highmem-8"
    assert cluster_jobs.vertex_machine_type("4", "15G") == "n1-standard-4"
    assert cluster_jobs.vertex_machine_type("8", "32Gi", "NVIDIA_L4", 1) == "g2-standard-12"
    assert cluster_jobs.vertex_machine_type("8", "32Gi", "NVIDIA_L4", 2) == "g2-standard-24"
    assert cluster_jobs.vertex_machine_type("8", "32Gi", "NVIDIA_TESLA_A100", 4) == "a2-highgpu-4g"
    assert cluster_jobs.vertex_machine_type("8", "32Gi", "NVIDIA_H200_141GB", 8) == "a3-ultragpu-8g"
    for bad in (("8", "32Gi", "NVIDIA_L4", 3), ("8", "32Gi", "NVIDIA_H200_141GB", 1), ("128", "1Ti"),
                ("8", "32Gi", "NVIDIA_TESLA_A100", 3)):
        with pytest.raises(ValueError, match="--train-machine-type"):
            cluster_jobs.vertex_machine_type(*bad)


# --- the compiled pipelines ----------------------------------------------------------------------------

def _compiled(tmp_path: Path, target: str, *extra: str) -> dict:
    from imgclf.pipelines.cli.main import main

    out = tmp_path / f"{target}.yaml"
    assert main(["compile", "--target", target, "--image", "us-docker.pkg.dev/p/r/imgclf:1", "--gpu-image",
                 "us-docker.pkg.dev/p/r/imgclf-gpu:1", "--output", str(out), *extra]) == 0
    return out.read_text()


def _train_settings(text: str) -> ClusterSettings:
    docs = list(yaml.safe_load_all(text))
    executors = docs[0]["deploymentSpec"]["executors"]
    found = [ClusterSettings.from_env({e["name"]: e["value"] for e in x["container"].get("env", [])})
             for name, x in executors.items() if re.fullmatch(r"exec-train(-[0-9]+)?", name)]
    assert found and all(found) and len(set(found)) == 1
    return found[0]


def test_the_compiled_train_task_carries_its_workers_settings_and_no_credential(tmp_path, monkeypatch, capsys):
    from imgclf.pipelines.cli.main import main

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    kfp = _compiled(tmp_path, "kfp", "--gpus", "2", "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                    "--cpu", "train=6:12", "--trainer-runtime", "team-runtime")
    s = _train_settings(kfp)
    assert (s.target, s.image, s.gpus, s.accelerator, s.runtime) == ("kfp", "us-docker.pkg.dev/p/r/imgclf-gpu:1", 2,
                                                                      "nvidia.com/gpu", "team-runtime")
    assert (s.cpu_request, s.cpu_limit, s.node_selector) == ("6", "12", ("cloud.google.com/gke-accelerator", "nvidia-l4"))
    assert s.s3_secret == "mlpipeline-minio-artifact"  # a name, as on every task
    vertex = _compiled(tmp_path, "vertex", "--gpu-type", "NVIDIA_L4")
    v = _train_settings(vertex)
    assert (v.target, v.machine_type, v.accelerator, v.gpus) == ("vertex", "g2-standard-12", "NVIDIA_L4", 1)
    assert _train_settings(_compiled(tmp_path, "vertex", "--train-machine-type", "a2-highgpu-1g",
                                     "--gpu-type", "NVIDIA_TESLA_A100")).machine_type == "a2-highgpu-1g"
    for text in (kfp, vertex):
        assert SECRET not in text and "key.json" not in text
    assert main(["compile", "--target", "kfp", "--image", "r/imgclf:1", "--gpu-image", "r/imgclf-gpu:1",
                 "--trainer-runtime", "Not A Name",
                 "--output", str(tmp_path / "bad.yaml")]) == 1
    assert "Trainer runtime 'Not A Name'" in capsys.readouterr().err


# --- the launcher against the TrainJob double ------------------------------------------------------------

def _kubeconfig(path: Path, url: str, token: str, namespace: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "double", "cluster": {"server": url}}],
        "users": [{"name": "trainer", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "double", "user": "trainer", "namespace": namespace}}]}))
    return path


@pytest.fixture
def trainer(monkeypatch, tmp_path):
    d = TrainerDouble(token="kube-SECRET-token")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", d.url, d.token, "ml")))
    yield d
    d.stop()
    assert not d.rejected, f"requests the API server would refuse: {d.rejected}"


RUNNING = status(active=1)


def _calls(d: TrainerDouble) -> list[str]:
    return [r["method"] for r in d.requests]


def _job(rng=None, workers=3) -> dict:
    _, doc = _manifest(rng or random.Random(1), workers,
                       settings=ClusterSettings(target="kfp", image="r/imgclf:1", s3_secret="mlpipeline-minio-artifact"))
    doc["metadata"].pop("namespace")  # the kubeconfig's namespace, as in the task
    return doc


def test_the_trainjob_double_refuses_what_the_api_server_would(trainer):
    import requests

    base = f"{trainer.url}/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"
    auth = {"Authorization": f"Bearer {trainer.token}"}
    good = {**_job(), "metadata": {"name": "imgclf-train-x"}}
    assert requests.post(base, json=good, timeout=10).status_code == 401  # no token
    bad = copy.deepcopy(good)
    bad["spec"]["trainer"]["replicas"] = 2
    assert requests.post(base, json=bad, headers=auth, timeout=10).status_code == 400
    assert requests.post(base + "?watch=true", json=good, headers=auth, timeout=10).status_code == 400
    assert requests.put(base + "/imgclf-train-x", json=good, headers=auth, timeout=10).status_code in (400, 501)
    assert requests.post(base, json=good, headers=auth, timeout=10).status_code == 201
    assert requests.post(base, json=good, headers=auth, timeout=10).status_code == 409
    assert requests.delete(base + "/imgclf-train-x", headers=auth, timeout=10).status_code == 200
    assert requests.delete(base + "/imgclf-train-x", headers=auth, timeout=10).status_code == 404
    assert len(trainer.rejected) == 3
    trainer.rejected.clear()


def test_the_launcher_creates_the_trainjob_polls_it_and_returns_when_complete(trainer):
    doc = _job()
    name = doc["metadata"]["name"]
    trainer.statuses[name] = [status(), RUNNING, RUNNING, status("Complete", "JobSetCompleted", "jobset completed",
                                                                 succeeded=1)]
    lines = []
    done = cluster_jobs.run_trainjob(doc, poll_s=0.01, log=lines.append)
    assert cluster_jobs.condition(done, "Complete")
    assert _calls(trainer) == ["GET", "POST", "GET", "GET", "GET", "GET"]
    created = trainer.requests[1]["body"]
    assert created["metadata"]["namespace"] == "ml" and created["spec"] == doc["spec"]
    assert ("ml", name) in trainer.objects and not trainer.deleted
    assert any("created TrainJob ml/" in line for line in lines) and any("completed" in line for line in lines)


def test_a_failed_trainjob_fails_the_task_naming_its_condition_and_stays_for_its_logs(trainer):
    doc = _job()
    name = doc["metadata"]["name"]
    trainer.statuses[name] = [RUNNING, status("Failed", "JobSetFailed", "job imgclf-node-0 has failed: pod "
                                              "imgclf-node-0-1 exited 137 (OOMKilled)", failed=1)]
    with pytest.raises(WorkersFailed, match=r"failed: JobSetFailed: .*imgclf-node-0-1 exited 137 \(OOMKilled\)"):
        cluster_jobs.run_trainjob(doc, poll_s=0.01, log=lambda _: None)
    assert "DELETE" not in _calls(trainer) and ("ml", name) in trainer.objects


def test_our_own_failure_deletes_the_trainjob(trainer):
    """Timed out waiting, cancelled (SIGTERM, what KFP sends a cancelled task), or interrupted: the
    TrainJob is deleted so its workers stop."""
    doc = _job()
    name = doc["metadata"]["name"]
    trainer.statuses[name] = [RUNNING]
    with pytest.raises(ClusterError, match="did not finish within"):
        cluster_jobs.run_trainjob(doc, poll_s=0.01, wait_s=0.05, log=lambda _: None)
    assert trainer.deleted == [name] and ("ml", name) not in trainer.objects
    assert trainer.requests[-1]["method"] == "DELETE"
    assert trainer.requests[-1]["query"].get("propagationPolicy") == "Background"

    def cancelled(line):
        if line.startswith("train: TrainJob"):  # the first progress line: the task is being cancelled
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cluster_jobs.run_trainjob(doc, poll_s=0.01, log=cancelled)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert trainer.deleted == [name, name] and signal.getsignal(signal.SIGTERM) is before


def test_a_retried_attempt_takes_over_its_predecessors_trainjob(trainer):
    doc = _job()
    name = doc["metadata"]["name"]
    trainer.statuses[name] = [RUNNING]
    with pytest.raises(ClusterError):
        cluster_jobs.run_trainjob(doc, poll_s=0.01, wait_s=0.02, log=lambda _: None)  # deleted: start over
    # A predecessor killed before it could clean up left a running TrainJob: waited on, not created again.
    trainer.respond("POST", {"ns": "ml"}, {**copy.deepcopy(doc), "metadata": {**doc["metadata"], "namespace": "ml"}})
    trainer.statuses[name] = [RUNNING, status("Complete", "JobSetCompleted", "done")]
    trainer.requests.clear()
    cluster_jobs.run_trainjob(doc, poll_s=0.01, log=lambda _: None)
    assert "POST" not in _calls(trainer)
    # Already complete: nothing to do. Failed: replaced by a new one (the workers resume from the backup).
    trainer.requests.clear()
    cluster_jobs.run_trainjob(doc, poll_s=0.01, log=lambda _: None)
    assert _calls(trainer) == ["GET"]
    trainer.statuses[name] = [status("Failed", "DeadlineExceeded", "past activeDeadlineSeconds")]
    trainer.requests.clear()
    with pytest.raises(WorkersFailed, match="DeadlineExceeded"):  # the new one shows the same planned status
        cluster_jobs.run_trainjob(doc, poll_s=0.01, log=lambda _: None)
    assert _calls(trainer)[:4] == ["GET", "DELETE", "GET", "POST"]


def test_a_missing_runtime_is_refused_by_admission_with_trainers_message(trainer):
    trainer.runtimes.clear()
    with pytest.raises(ClusterError, match=r"403 .*imgclf-workers.*must be created before the TrainJob"):
        cluster_jobs.run_trainjob(_job(), poll_s=0.01, log=lambda _: None)


def test_train_on_cluster_hands_the_chiefs_model_to_the_tasks_outputs(trainer, tmp_path):
    """The whole task side on KFP: the TrainJob's workers are given the records, the staging folder and the
    backup; what the chief leaves there (written here in its place) becomes the task's model and curves."""
    model_uri = str(tmp_path / "store" / "train" / "model")
    staging = Path(cluster_jobs.staging_uri(model_uri))
    settings = ClusterSettings(target="kfp", image="r/imgclf:1")
    name = cluster_jobs.job_name(model_uri)
    trainer.statuses[name] = [RUNNING, status("Complete", "JobSetCompleted", "done")]
    with pytest.raises(ClusterError, match="left no model"):
        cluster_jobs.train_on_cluster(_options(random.Random(2), 4), records_uri=str(tmp_path / "records"),
                                      model_uri=model_uri, backup_uri=model_uri + ".backup",
                                      model_path=str(tmp_path / "out" / "model"), settings=settings, poll_s=0.01)
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "train.json").write_text("{}")
    (staging / "curves.html").write_text("<html>curves</html>")
    cluster_jobs.train_on_cluster(_options(random.Random(2), 4), records_uri=str(tmp_path / "records"),
                                  model_uri=model_uri, backup_uri=model_uri + ".backup",
                                  model_path=str(tmp_path / "out" / "model2"), curves_path=str(tmp_path / "out" / "c.html"),
                                  settings=settings, poll_s=0.01, log=lambda _: None)
    assert (tmp_path / "out" / "model2" / "train.json").read_text() == "{}"
    assert (tmp_path / "out" / "c.html").read_text() == "<html>curves</html>"
    [created] = [r["body"] for r in trainer.requests if r["method"] == "POST"][:1]
    parsed = vars(_worker_parser().parse_args(created["spec"]["trainer"]["args"]))
    assert parsed["train_workers"] == created["spec"]["trainer"]["numNodes"] == 4
    assert (parsed["dataset_dir"], parsed["model_dir"]) == (str(tmp_path / "records"), str(staging / "model"))


# --- the launcher against the Vertex CustomJob double -----------------------------------------------------

@pytest.fixture
def vertex_jobs(google_anonymous, monkeypatch):
    from tests.vertex_double import VertexCustomJobsDouble

    d = VertexCustomJobsDouble()
    monkeypatch.setenv("CLOUD_ML_PROJECT_ID", "proj")
    monkeypatch.setenv("CLOUD_ML_REGION", "europe-west4")
    yield d
    d.stop()
    assert not d.rejected, f"requests that do not match the Vertex AI API: {d.rejected}"


def _vertex(d, **changes) -> ClusterSettings:
    return ClusterSettings(**{"target": "vertex", "image": "europe-docker.pkg.dev/p/r/imgclf-gpu:1", "gpus": 1,
                              "accelerator": "NVIDIA_L4", "machine_type": "g2-standard-12",
                              "vertex_api_endpoint": d.url, **changes})


def test_the_vertex_launcher_submits_worker_pools_and_returns_when_the_job_succeeds(vertex_jobs):
    from google.cloud.aiplatform_v1.types import CustomJob

    args = cluster_jobs.worker_args(_options(random.Random(4), 3), "gs://b/records", "gs://b/m", "gs://b/m.backup")
    vertex_jobs.states["1"] = [("JOB_STATE_PENDING", ""), ("JOB_STATE_RUNNING", ""), ("JOB_STATE_SUCCEEDED", "")]
    lines = []
    name = cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 3, args, "gs://b/m.workers",
                                       poll_s=0.01, log=lines.append)
    assert name == "projects/proj/locations/europe-west4/customJobs/1"
    [create] = [r for r in vertex_jobs.requests if r["method"] == "POST"]
    assert create["path"] == "/v1/projects/proj/locations/europe-west4/customJobs"
    sent = CustomJob.from_json(json.dumps(create["body"]))  # the REST transport sends enums as numbers
    spec = sent.job_spec
    assert [p.replica_count for p in spec.worker_pool_specs] == [1, 2]
    assert spec.scheduling.restart_job_on_worker_restart is True
    assert spec.base_output_directory.output_uri_prefix == "gs://b/m.workers"
    for pool in spec.worker_pool_specs:
        machine = pool.machine_spec
        assert (machine.machine_type, machine.accelerator_type.name, machine.accelerator_count) == \
            ("g2-standard-12", "NVIDIA_L4", 1)
        assert list(pool.container_spec.args) == args and pool.container_spec.image_uri.endswith("imgclf-gpu:1")
    assert not vertex_jobs.cancelled and any("JOB_STATE_SUCCEEDED" in line for line in lines)


def test_a_failed_vertex_job_fails_the_task_with_its_error_and_our_timeout_cancels_it(vertex_jobs):
    vertex_jobs.states["1"] = [("JOB_STATE_RUNNING", ""), ("JOB_STATE_FAILED", "The replica workerpool1-0 exited "
                                                                                "with a non-zero status of 137.")]
    with pytest.raises(WorkersFailed, match="JOB_STATE_FAILED: The replica workerpool1-0 exited"):
        cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 2, ["--epochs", "1"], "gs://b/m.workers",
                                    poll_s=0.01, log=lambda _: None)
    assert not vertex_jobs.cancelled
    vertex_jobs.states["2"] = [("JOB_STATE_RUNNING", "")]
    with pytest.raises(ClusterError, match="did not finish within"):
        cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 2, ["--epochs", "1"], "gs://b/m.workers",
                                    poll_s=0.01, wait_s=0.05, log=lambda _: None)
    assert vertex_jobs.cancelled == ["projects/proj/locations/europe-west4/customJobs/2"]


def test_a_retried_vertex_attempt_takes_over_its_predecessors_job(vertex_jobs):
    """A task killed before it could cancel its CustomJob: the retry waits on that job instead of starting a
    second one; a failed predecessor is not taken over."""
    run = lambda: cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 2, ["--epochs", "1"],  # noqa: E731
                                              "gs://b/m.workers", poll_s=0.01, log=lambda _: None)
    vertex_jobs.states["1"] = [("JOB_STATE_RUNNING", ""), ("JOB_STATE_FAILED", "replica workerpool1-0 was preempted")]
    with pytest.raises(WorkersFailed):
        run()
    vertex_jobs.states["2"] = [("JOB_STATE_RUNNING", "")]
    with pytest.raises(ClusterError):
        cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 2, [], "gs://b/m.workers", poll_s=0.01,
                                    wait_s=0.02, log=lambda _: None)  # cancelled: CANCELLING, then CANCELLED
    assert vertex_jobs.custom_jobs["2"]["state"] == "JOB_STATE_CANCELLING"  # never taken over either
    vertex_jobs.respond("POST", ("POST", "/customJobs$"), {"project": "proj", "location": "europe-west4"}, {}, {
        "displayName": "imgclf-train-abc", "labels": {"imgclf-train": "abc"}, "jobSpec": {}})  # left running
    vertex_jobs.states["3"] = [("JOB_STATE_RUNNING", ""), ("JOB_STATE_SUCCEEDED", "")]
    posts = sum(r["method"] == "POST" for r in vertex_jobs.requests)
    assert run() == "projects/proj/locations/europe-west4/customJobs/3"
    assert sum(r["method"] == "POST" for r in vertex_jobs.requests) == posts  # nothing created
    assert any(r["query"].get("filter") == 'labels.imgclf-train="abc"' for r in vertex_jobs.requests)


def test_the_custom_job_double_refuses_a_layout_vertex_refuses(vertex_jobs):
    import requests

    url = f"{vertex_jobs.url}/v1/projects/proj/locations/europe-west4/customJobs"
    pool = {"machineSpec": {"machineType": "n1-standard-8"}, "replicaCount": "2",
            "containerSpec": {"imageUri": "r/imgclf:1"}}
    assert requests.post(url, json={"displayName": "x", "jobSpec": {"workerPoolSpecs": [pool]}},
                         timeout=10).status_code == 400  # the first pool is one primary replica
    assert requests.post(url, json={"displayName": "x", "jobSpec": {"workerPoolSpecs": [
        {**pool, "replicaCount": "1", "machineSpec": {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4"}}]}},
        timeout=10).status_code == 400  # an accelerator without a count
    assert requests.post(url, json={"displayName": "x", "jobSpec": {"workerPoolSpecs": [{**pool, "replicaCount": "1"}],
                                                                    "workerCount": 2}}, timeout=10).status_code == 400
    assert requests.post(url, json={"displayName": "x", "jobSpec": {"workerPoolSpecs": [{**pool, "replicaCount": "1"}]}},
                         timeout=10).status_code == 200
    assert len(vertex_jobs.rejected) == 3
    vertex_jobs.rejected.clear()


def test_the_vertex_launcher_needs_its_project_and_a_machine_type(vertex_jobs, monkeypatch):
    with pytest.raises(ClusterError, match="--train-machine-type"):
        cluster_jobs.run_custom_job(_vertex(vertex_jobs, machine_type=""), "imgclf-train-abc", 2, [], "gs://b/m",
                                    log=lambda _: None)
    monkeypatch.delenv("CLOUD_ML_REGION")
    with pytest.raises(ClusterError, match="CLOUD_ML_REGION"):
        cluster_jobs.run_custom_job(_vertex(vertex_jobs), "imgclf-train-abc", 2, [], "gs://b/m", log=lambda _: None)
    assert not vertex_jobs.requests


# --- the worker's side: store URIs as local paths ---------------------------------------------------------

def test_a_worker_reads_the_records_from_the_store_and_only_the_chiefs_outputs_go_back(bucket, tmp_path):
    from imgclf.components.lib import storage

    s3, _ = bucket
    records = tmp_path / "records"
    records.mkdir()
    (records / "records.json").write_text('{"splits": {}}')
    (records / "train-00000.tfrecord").write_bytes(bytes(range(256)) * 40)
    storage.upload_dir(str(records), f"{s3}/run/records")
    staging = cluster_jobs.staging_uri(f"{s3}/run/train/model")
    model_uri, curves_uri = storage.join(staging, "model"), storage.join(staging, "curves.html")
    # A worker that is not the chief writes its outputs elsewhere (distributed.chief_outputs): none go back.
    with cluster_jobs.staged(f"{s3}/run/records", model_uri, curves_uri) as (d, m, c):
        assert Path(d, "train-00000.tfrecord").read_bytes() == (records / "train-00000.tfrecord").read_bytes()
    assert not storage.exists(model_uri) and not storage.exists(curves_uri)
    # A chief that fails uploads nothing either; one that succeeds uploads its model folder and page.
    with pytest.raises(RuntimeError), cluster_jobs.staged(f"{s3}/run/records", model_uri, curves_uri) as (d, m, c):
        Path(m).mkdir()
        (Path(m) / "train.json").write_text("{}")
        raise RuntimeError("diverged")
    assert not storage.exists(model_uri)
    for attempt in ("first", "second"):  # a retried chief's outputs replace the earlier attempt's
        with cluster_jobs.staged(f"{s3}/run/records", model_uri, curves_uri) as (d, m, c):
            Path(m).mkdir()
            (Path(m) / "model.keras").write_text(attempt)
            (Path(m) / "train.json").write_text("{}")
            Path(c).write_text(f"<html>{attempt}</html>")
        storage.forget_listings(model_uri)
        assert storage.read_text(storage.join(model_uri, "model.keras")) == attempt
        assert storage.read_text(curves_uri) == f"<html>{attempt}</html>"
    assert sorted(storage.list_names(model_uri)) == ["model.keras", "train.json"]
    # Local paths (the local launcher, kfp.local) pass through untouched.
    with cluster_jobs.staged(str(records), str(tmp_path / "m"), "") as paths:
        assert paths == (str(records), str(tmp_path / "m"), "")
