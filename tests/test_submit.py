"""imgclf submit / schedule through the real kfp.Client and google-cloud-aiplatform, against test
doubles on 127.0.0.1 that check every request against the official APIs."""
from __future__ import annotations

import json

import pytest
import requests
import yaml

from imgclf.pipelines.cli.main import main
from imgclf.pipelines.remote import cron
from imgclf.pipelines.remote.backends import without_cache
from tests.kfp_double import KfpDouble
from tests.vertex_double import VertexDouble


@pytest.fixture
def kfp_api():
    d = KfpDouble()
    yield d
    d.stop()
    assert not d.rejected, f"requests that do not match the KFP v2beta1 API: {d.rejected}"


def _posts(d, path):
    return [r for r in d.requests if r["method"] == "POST" and r["path"] == path]


def test_the_kfp_double_rejects_requests_that_do_not_match_the_spec(kfp_api):
    bad = requests.post(kfp_api.url + "/apis/v2beta1/runs", json={"display_name": "x", "bogus_field": 1})
    assert bad.status_code == 400 and "unknown field 'bogus_field'" in bad.text
    bad = requests.post(kfp_api.url + "/apis/v2beta1/recurringruns", json={"max_concurrency": True})
    assert bad.status_code == 400 and "expected a string" in bad.text
    assert requests.get(kfp_api.url + "/apis/v2beta1/runz").status_code == 400
    assert requests.get(kfp_api.url + "/apis/v2beta1/runs/x?colour=red").status_code == 400
    assert len(kfp_api.rejected) == 4
    kfp_api.rejected.clear()


def test_kfp_submit_uploads_versions_runs_and_waits(kfp_api, capsys):
    base = ["submit", "--backend", "kfp", "--host", kfp_api.url, "--allow-local-image", "--token", "tok-SECRET-123",
            "--experiment", "nightly", "--pipeline-root", "minio://mlpipeline/v2"]
    assert main([*base, "data=s3://images/flowers", "epochs=3", "augment=false"]) == 0
    assert main([*base, "--wait", "--no-cache", "data=s3://images/flowers"]) == 0
    out = capsys.readouterr().out
    assert "finished SUCCEEDED" in out and "tok-SECRET-123" not in out
    assert all(r["auth"] == "Bearer tok-SECRET-123" for r in kfp_api.requests if r["path"] != "/apis/v2beta1/healthz")
    assert len(_posts(kfp_api, "/apis/v2beta1/pipelines/upload")) == 1          # first time: the pipeline
    assert len(_posts(kfp_api, "/apis/v2beta1/pipelines/upload_version")) == 1  # then new versions of it
    first, second = _posts(kfp_api, "/apis/v2beta1/runs")
    assert first["body"]["runtime_config"] == {"parameters": {"data": "s3://images/flowers", "epochs": 3,
                                                              "augment": False},
                                               "pipeline_root": "minio://mlpipeline/v2"}
    assert second["body"]["pipeline_version_reference"]["pipeline_version_id"] != \
        first["body"]["pipeline_version_reference"]["pipeline_version_id"]
    assert [e["display_name"] for e in kfp_api.experiments.values()] == ["nightly"]

    kfp_api.final_state = "FAILED"
    assert main([*base, "--wait", "data=s3://x"]) == 1
    assert "ended FAILED" in capsys.readouterr().err


def test_no_cache_turns_caching_off_in_the_uploaded_version(tmp_path):
    assert main(["compile", "--allow-local-image", "-o", str(tmp_path / "p.yaml")]) == 0
    docs = list(yaml.safe_load_all(open(without_cache(str(tmp_path / "p.yaml"), str(tmp_path)))))
    assert len(docs) == 2
    assert all(t["cachingOptions"] == {} for t in docs[0]["root"]["dag"]["tasks"].values())


def test_parameters_are_checked_before_anything_is_sent(kfp_api, capsys):
    base = ["submit", "--backend", "kfp", "--host", kfp_api.url, "--allow-local-image"]
    assert main([*base, "data=s3://x", "epochs=three"]) == 1
    assert "parameter epochs='three': expected an integer" in capsys.readouterr().err
    assert main([*base, "data=s3://x", "epoch=3"]) == 1
    assert "unknown parameter 'epoch'" in capsys.readouterr().err
    assert main([*base, "epochs=3"]) == 1
    assert "missing required parameter(s): data" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_kfp_schedules_cron_and_interval_pinned_version_no_catchup(kfp_api, capsys):
    base = ["--backend", "kfp", "--host", kfp_api.url]
    assert main(["schedule", "create", *base, "--allow-local-image", "--cron", "30 2 * * mon-fri", "--max-concurrency", "2",
                 "data=s3://images/flowers"]) == 0
    assert main(["schedule", "create", *base, "--allow-local-image", "--interval", "3600", "--latest",
                 "data=s3://images/flowers"]) == 0
    cron_run, interval_run = (r["body"] for r in _posts(kfp_api, "/apis/v2beta1/recurringruns"))
    # Pinned: the version uploaded for this schedule, which a later ad-hoc submit cannot replace.
    pinned = cron_run["pipeline_version_reference"]
    assert pinned["pipeline_version_id"] in kfp_api.versions
    assert kfp_api.versions[pinned["pipeline_version_id"]]["pipeline_id"] == pinned["pipeline_id"]
    assert set(interval_run["pipeline_version_reference"]) == {"pipeline_id"}  # --latest: whatever is newest
    assert cron_run["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * mon-fri"}}
    assert interval_run["trigger"] == {"periodic_schedule": {"interval_second": 3600}}
    for body in (cron_run, interval_run):
        assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert cron_run["max_concurrency"] == 2
    capsys.readouterr()
    assert main(["schedule", "list", *base]) == 0
    listing = capsys.readouterr().out
    assert "0 30 2 * * mon-fri" in listing and "every 3600s" in listing and "2 schedule(s)" in listing
    sid = next(iter(kfp_api.recurring))
    assert main(["schedule", "delete", *base, sid]) == 0
    assert main(["schedule", "delete", *base, sid]) == 1
    assert f"deleting schedule {sid} failed: 404" in capsys.readouterr().err
    assert main(["schedule", "create", *base, "--allow-local-image", "--cron", "0 0 3 * * *", "data=s3://x"]) == 1
    err = capsys.readouterr().err
    assert "has 6 fields; expected 5" in err and "'0 3 * * *'" in err
    assert main(["schedule", "create", *base, "--allow-local-image", "--cron", "TZ=Europe/Berlin 0 3 * * *", "data=s3://x"]) == 1
    assert "cluster's time zone" in capsys.readouterr().err


@pytest.mark.parametrize("expr,ok", [("0 3 * * *", True), ("*/15 * * * *", True), ("0 0 1,15 * *", True),
                                     ("0 3 * * 7", True), ("0 24 * * *", False), ("0 3 * * 8", False),
                                     ("5-1 * * * *", False), ("*/0 * * * *", False), ("a b c d e", False)])
@pytest.mark.unit
def test_cron_validation(expr, ok):
    if ok:
        assert cron.for_kfp(expr) == "0 " + expr and cron.for_vertex(expr) == expr
    else:
        with pytest.raises(cron.CronError, match="expected"):
            cron.for_kfp(expr)


@pytest.fixture
def vertex_api(monkeypatch, google_anonymous):
    """Vertex through REST to the double; anonymous credentials; the client's pipeline-root bucket check
    (a GCS call that waits on the network) stubbed."""
    from google.cloud.aiplatform.utils import gcs_utils

    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **k: None)
    d = VertexDouble()
    yield d
    d.stop()
    assert not d.rejected, f"requests that do not match the Vertex AI API: {d.rejected}"


def test_the_vertex_double_rejects_wrong_shapes(vertex_api):
    url = vertex_api.url + "/v1/projects/p/locations/us-central1/pipelineJobs"
    assert requests.post(url, json={"displayName": "x", "pipelineSpecc": {}}).status_code == 400
    assert requests.get(vertex_api.url + "/v1/projects/p/pipelineJobs").status_code == 400
    assert len(vertex_api.rejected) == 2
    vertex_api.rejected.clear()


def test_vertex_submit_wait_and_schedules(vertex_api, capsys):
    base = ["--backend", "vertex", "--project", "proj", "--region", "us-central1", "--api-endpoint", vertex_api.url]
    assert main(["submit", *base, "--allow-local-image", "--pipeline-root", "gs://bucket/root", "--wait", "--labels", "team=ml",
                 "--service-account", "runner@proj.iam.gserviceaccount.com", "data=gs://bucket/img", "epochs=2"]) == 0
    assert "finished PIPELINE_STATE_SUCCEEDED" in capsys.readouterr().out
    job = next(r["body"] for r in vertex_api.requests if r["method"] == "POST")
    assert job["labels"] == {"team": "ml"} and job["serviceAccount"] == "runner@proj.iam.gserviceaccount.com"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    assert job["runtimeConfig"]["parameterValues"] == {"data": "gs://bucket/img", "epochs": 2}
    train = job["pipelineSpec"]["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert "secretAsEnv" not in json.dumps(job) and "AWS_SECRET" not in json.dumps(job)
    assert job["displayName"] == "imgclf-training"
    # A batch-prediction job is named after its own pipeline.
    assert main(["submit", *base, "--allow-local-image", "--pipeline", "predict", "--pipeline-root", "gs://bucket/root",
                 "model=gs://bucket/models/fm", "images=gs://bucket/incoming"]) == 0
    predict_job = [r["body"] for r in vertex_api.requests if r["method"] == "POST"][-1]
    assert predict_job["displayName"] == "imgclf-predict"
    capsys.readouterr()

    vertex_api.final_state = "PIPELINE_STATE_FAILED"
    assert main(["submit", *base, "--allow-local-image", "--pipeline-root", "gs://bucket/root", "--wait",
                 "data=gs://bucket/img"]) == 1
    assert "task train failed" in capsys.readouterr().err
    assert main(["submit", *base, "--allow-local-image", "--pipeline-root", "minio://x", "data=gs://b"]) == 1
    assert "needs a gs:// pipeline root" in capsys.readouterr().err

    assert main(["schedule", "create", *base, "--allow-local-image", "--pipeline-root", "gs://bucket/root", "--cron",
                 "TZ=Europe/Berlin 0 3 * * *", "--max-concurrency", "1", "data=gs://bucket/img"]) == 0
    schedule = [r["body"] for r in vertex_api.requests if r["method"] == "POST" and r["path"].endswith("/schedules")][0]
    assert schedule["cron"] == "TZ=Europe/Berlin 0 3 * * *" and schedule["maxConcurrentRunCount"] == "1"
    capsys.readouterr()
    assert main(["schedule", "list", *base]) == 0
    assert "TZ=Europe/Berlin 0 3 * * *" in capsys.readouterr().out
    name = next(iter(vertex_api.schedules))
    assert main(["schedule", "delete", *base, name]) == 0
    assert not vertex_api.schedules
    assert main(["schedule", "create", *base, "--allow-local-image", "--pipeline-root", "gs://b/r", "--interval", "60",
                 "data=gs://b"]) == 1
    assert "cron only" in capsys.readouterr().err


def test_vertex_yaml_loads_in_aiplatform_pipelinejob(tmp_path, vertex_api):
    from google.cloud import aiplatform

    assert main(["compile", "--allow-local-image", "--target", "vertex", "-o", str(tmp_path / "v.yaml")]) == 0
    aiplatform.init(project="proj", location="us-central1", api_endpoint=vertex_api.url, api_transport="rest")
    job = aiplatform.PipelineJob(display_name="x", template_path=str(tmp_path / "v.yaml"),
                                 pipeline_root="gs://b/r", parameter_values={"data": "gs://b/i"})
    spec = job.to_dict()["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "imgclf-training"
    assert spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]


def test_kfp_runs_list_get_logs_cancel_and_json_output(kfp_api, capsys, tmp_path, monkeypatch):
    base = ["--backend", "kfp", "--host", kfp_api.url]
    assert main(["submit", *base, "--allow-local-image", "--run-name", "flowers nightly", "--output", "json",
                 "data=s3://images/flowers"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    rid = submitted["run_id"]
    assert submitted["url"].endswith(f"/#/runs/details/{rid}")
    assert _posts(kfp_api, "/apis/v2beta1/runs")[0]["body"]["display_name"] == "flowers nightly"
    kfp_api.final_state = "FAILED"
    assert main(["submit", *base, "--allow-local-image", "data=s3://images/other"]) == 0
    capsys.readouterr()

    assert main(["runs", "list", *base, "--output", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][-1] == "flowers nightly" and len(rows) == 2   # newest first
    assert main(["runs", "get", *base, rid]) == 0    # first poll: still running
    assert main(["runs", "get", *base, "--output", "json", rid]) == 0
    capsys.readouterr()
    assert main(["runs", "get", *base, "--output", "json", rid]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["state"] == "FAILED" and run["parameters"] == {"data": "s3://images/flowers"}
    assert [(t["name"], t["state"]) for t in run["tasks"]] == [("ingest", "SUCCEEDED"), ("preprocess", "SUCCEEDED"),
                                                               ("train", "FAILED")]
    assert main(["runs", "logs", *base, rid]) == 0
    logs = capsys.readouterr().out
    assert "=== train: FAILED (train: loss diverged)" in logs
    assert f"kubectl logs -n kubeflow imgclf-training-{rid}-train-driver -c main" in logs  # no cluster access here
    # A kubeconfig whose cluster does not answer: each pod's log says so; the command still reports the run.
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(dead))
    assert main(["runs", "logs", *base, rid]) == 0
    logs = capsys.readouterr().out
    assert "=== train: FAILED" in logs and logs.count("(pod log unavailable:") == 3

    other = rows[0]["id"]
    assert main(["runs", "cancel", *base, other]) == 0
    assert kfp_api.runs[other]["state"] == "CANCELING"
    assert main(["runs", "cancel", *base, "no-such-run"]) == 1
    assert "cancelling run no-such-run failed: 404" in capsys.readouterr().err


def test_vertex_runs_console_link_list_get_logs_cancel(vertex_api, capsys):
    base = ["--backend", "vertex", "--project", "proj", "--region", "us-central1", "--api-endpoint", vertex_api.url]
    assert main(["submit", *base, "--allow-local-image", "--pipeline-root", "gs://bucket/root", "--run-name",
                 "flowers-nightly", "--output", "json", "data=gs://bucket/img"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    job_id = submitted["run_id"].rsplit("/", 1)[-1]
    assert submitted["url"] == ("https://console.cloud.google.com/vertex-ai/locations/us-central1/pipelines/runs/"
                                f"{job_id}?project=proj")
    assert vertex_api.jobs[submitted["run_id"]]["displayName"] == "flowers-nightly"

    assert main(["runs", "list", *base, "--output", "json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["flowers-nightly"]
    vertex_api.final_state = "PIPELINE_STATE_FAILED"
    for ref in (job_id, submitted["run_id"], job_id):   # a bare job id or the resource name
        assert main(["runs", "get", *base, "--output", "json", ref]) == 0
        run = json.loads(capsys.readouterr().out)
        if run["state"] != "PIPELINE_STATE_RUNNING":
            break
    assert run["state"] == "PIPELINE_STATE_FAILED" and run["error"] == "task train failed"
    assert run["parameters"] == {"data": "gs://bucket/img"}
    assert ("train", "FAILED", "train: loss diverged") in [(t["name"], t["state"], t["error"]) for t in run["tasks"]]
    assert main(["runs", "logs", *base, job_id]) == 0
    assert f'labels.pipeline_job_id="{job_id}"' in capsys.readouterr().out
    assert main(["runs", "cancel", *base, job_id]) == 0
    assert vertex_api.jobs[submitted["run_id"]]["state"] == "PIPELINE_STATE_CANCELLING"


@pytest.mark.parametrize("backend", ["kfp", "vertex"])
def test_dry_run_compiles_checks_and_shows_what_would_be_sent_sending_nothing(backend, capsys):
    # No server listens here: anything sent would fail the command.
    base = ["--backend", backend, "--host", "http://127.0.0.1:9", "--project", "p", "--region", "us-central1",
            "--api-endpoint", "http://127.0.0.1:9", "--pipeline-root", "gs://b/root", "--image",
            "ghcr.io/acme/imgclf:0.1.0", "--gpu-image", "ghcr.io/acme/imgclf-gpu:0.1.0", "--cpu", "train=6:12"]
    assert main(["submit", *base, "--dry-run", "--output", "json", "--run-name", "try", "data=gs://b/img",
                 "epochs=3"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["parameters"] == {"data": "gs://b/img", "epochs": 3} and sent["run_name"] == "try"
    assert sent["tasks"]["train"]["image"] == "ghcr.io/acme/imgclf-gpu:0.1.0"
    assert sent["tasks"]["train"]["resources"]["resourceCpuLimit"] == "12"
    assert sent["tasks"]["ingest"]["image"] == "ghcr.io/acme/imgclf:0.1.0"
    assert sent["tasks"]["ingest"]["caching"] is False and sent["tasks"]["preprocess-merge"]["caching"] is True
    assert main(["schedule", "create", *base, "--dry-run", "--cron", "0 3 * * *", "data=gs://b/img"]) == 0
    text = capsys.readouterr().out
    assert "nothing sent" in text and "cron 0 3 * * *" in text and "the pipeline version uploaded now" in text
    assert "ghcr.io/acme/imgclf-gpu:0.1.0  cpu 6/12, memory 16Gi/32Gi, 1 x " in text
    assert main(["submit", *base, "--dry-run", "data=gs://b/img", "epochs=0"]) == 1   # still checked
    assert "parameter epochs=0: too small" in capsys.readouterr().err


def _params_file(tmp_path, kind: str, values: dict) -> str:
    path = tmp_path / f"params.{kind}"
    path.write_text(json.dumps(values) if kind == "json" else yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_params_file_merges_under_the_command_line_for_submit_and_run(kind, tmp_path, kfp_api, capsys):
    from imgclf.pipelines.cli.main import _params_file as run_file
    from imgclf.pipelines.cli.main import build_parser

    values = {"data": "s3://images/flowers", "epochs": 7, "learning_rate": 0.01, "augment": False,
              "architecture": "mobilenet_v2"}
    f = _params_file(tmp_path, kind, values)
    base = ["submit", "--backend", "kfp", "--host", kfp_api.url, "--allow-local-image", "--params-file", f]
    assert main([*base, "epochs=2"]) == 0
    sent = _posts(kfp_api, "/apis/v2beta1/runs")[0]["body"]["runtime_config"]["parameters"]
    assert sent == {**values, "epochs": 2}                                  # the command line wins

    argv = ["run", "--params-file", f, "--epochs", "2"]
    args = build_parser(run_file(argv)).parse_args(argv)
    assert (args.data, args.epochs, args.learning_rate, args.augment, args.architecture) == \
        ("s3://images/flowers", 2, 0.01, False, "mobilenet_v2")
    assert build_parser(run_file(["run", "--params-file", f])).parse_args(["run", "--params-file", f]).epochs == 7


# Generated bad params files: each refused with its cause, before anything is sent or run.
BAD_FILES = [({"epochs": "three"}, "expected"), ({"epochs": 1.5}, "expected"), ({"epoch": 3}, "unknown parameter"),
             ({"augment": "maybe"}, "expected"), ({"learning_rate": [1, 2]}, "plain value"),
             ({"data": None}, "plain value"), ({"epochs": 0}, "too small"), ({"architecture": "vgg"}, "allowed"),
             ({"color_mode": {"a": 1}}, "plain value"), ({"batch_size": True}, "expected")]


@pytest.mark.parametrize("command", ["submit", "run", "schedule"])
def test_bad_params_files_are_refused_before_anything_happens(command, tmp_path, capsys):
    for i, (values, cause) in enumerate(BAD_FILES):
        f = _params_file(tmp_path, ["yaml", "json"][i % 2], {"data": "gs://b/i", **values})
        argv = {"submit": ["submit", "--backend", "kfp", "--host", "http://127.0.0.1:9", "--allow-local-image"],
                "schedule": ["schedule", "create", "--backend", "kfp", "--host", "http://127.0.0.1:9",
                             "--allow-local-image", "--cron", "0 3 * * *"],
                "run": ["run", "--pipeline-root", str(tmp_path / "runs")]}[command]
        assert main([*argv, "--params-file", f]) == 1, values
        assert cause in capsys.readouterr().err, values
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert main(["run", "--params-file", str(tmp_path / "list.yaml")]) == 1
    assert "expected a mapping" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
