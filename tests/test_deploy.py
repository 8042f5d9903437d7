"""Deploy: KServe manifests checked against KServe's own CRD schema and applied through the real
`kubernetes` client to a strict API double; Vertex AI through the real google-cloud-aiplatform client
against a strict protobuf double; TF Serving configs parsed by TF Serving's own config message."""
from __future__ import annotations

import random
import shlex
from pathlib import Path

import pytest
import yaml

from imgclf.components.deploy import kserve
from imgclf.components.deploy.kserve import DeployError
from imgclf.components.deploy.options import DeployOptions
from imgclf.components.deploy.step import deploy
from imgclf.components.lib import registry, storage
from imgclf.components.lib.options import ParameterError
from imgclf.pipelines.cli.main import main
from tests.kube_double import KubeDouble, problems
from tests.vertex_models_double import VertexModelsDouble


def publish_versions(reg: Path, name: str, n: int) -> None:
    """`n` versions through the registry's real publish (a stand-in SavedModel: deploy only reads the layout)."""
    work = reg.parent / f"stand-in-{name}"
    (work / "sm").mkdir(parents=True, exist_ok=True)
    (work / "sm" / "saved_model.pb").write_bytes(b"\x08\x01")
    (work / "md").mkdir(exist_ok=True)
    for f in ("model.keras", "train.json"):
        (work / "md" / f).write_text("{}")
    for _ in range(n):
        registry.publish(str(work / "sm"), str(work / "md"), str(reg), name, {"metrics": {"accuracy": 0.9}},
                         lambda record: "card")


@pytest.fixture
def reg(tmp_path) -> Path:
    r = tmp_path / "registry"
    publish_versions(r, "fashion", 2)
    return r


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))


# --- KServe -------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_the_strict_schema_refuses_what_kserve_would_not_take():
    good = kserve.manifest(DeployOptions(registry="gs://b/r", model_name="fashion"), 2, True)
    assert problems(good) == []
    typo = {**good, "spec": {"predictor": {**good["spec"]["predictor"], "canaryTraficPercent": 5}}}
    assert any("canaryTraficPercent" in p for p in problems(typo))
    wrong_type = {**good, "spec": {"predictor": {**good["spec"]["predictor"], "minReplicas": "one"}}}
    assert any("minReplicas" in p for p in problems(wrong_type))
    nested = yaml.safe_load(yaml.safe_dump(good))
    nested["spec"]["predictor"]["model"]["modelFormat"]["flavour"] = "x"
    assert any("flavour" in p for p in problems(nested))


NAMES = ["fashion", "a", "m-1", "x" * 63, "flowers-v2-prod"]
URIS = ["gs://bkt/registry/{m}", "s3://models/reg/{m}", "pvc://model-store/registry/{m}", "gs://b/{m}/"]


@pytest.mark.parametrize("case", range(24))
@pytest.mark.unit
def test_generated_manifests_validate_against_the_kserve_crd(case, tmp_path, no_cluster):
    rnd = random.Random(case)
    name, uri = rnd.choice(NAMES), rnd.choice(URIS)
    canary = rnd.choice([0, 1, 10, 50, 99, 100, rnd.randint(0, 100)])
    reg = tmp_path / "registry"
    versions = rnd.randint(1, 3)
    publish_versions(reg, "fashion", versions)
    extra = rnd.choice([{}, {"serving_service_account": "model-reader", "serving_namespace": "ml-serving"},
                        {"serving_cpu": "500m", "serving_memory": "1536Mi", "min_replicas": 0, "max_replicas": 5}])
    done = deploy(str(tmp_path / "out"), deploy="kserve", registry=str(reg), model_name="fashion",
                  service_name=name, storage_uri=uri.format(m="fashion"), canary_percent=canary, **extra)
    doc = yaml.safe_load(Path(done.files[0]).read_text())
    assert problems(doc) == []
    predictor = doc["spec"]["predictor"]
    assert doc["metadata"]["name"] == name
    assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    # TF Serving ignores --model_base_path when a config file is given: the pod serves the pinned champion only.
    assert predictor["model"]["args"] == ["--model_config_file=/mnt/models/models.config"]
    assert predictor["model"]["storageUri"] == uri.format(m="fashion").rstrip("/")
    wanted = {"cpu": extra.get("serving_cpu", "1"), "memory": extra.get("serving_memory", "2Gi")}
    assert predictor["model"]["resources"] == {"requests": wanted, "limits": wanted}
    assert predictor["canaryTrafficPercent"] == (canary if versions > 1 else 100)
    assert predictor["annotations"][kserve.VERSION_ANNOTATION] == str(versions)
    assert predictor.get("serviceAccountName") == extra.get("serving_service_account")
    assert doc["metadata"].get("namespace") == extra.get("serving_namespace")
    assert f"kubectl apply -f {done.files[0]}" in done.summary()


BAD_NAMES = ["Fashion", "fashion_v2", "-fashion", "fashion-", "1fashion", "x" * 64, "fa shion", "fa.shion", "café"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.unit
def test_names_that_are_not_dns_labels_are_refused_before_anything_is_written(name, reg, tmp_path, no_cluster):
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match="not a DNS-1035 label"):
        deploy(str(out), deploy="kserve", registry=str(reg), model_name="fashion", service_name=name,
               storage_uri="gs://b/fashion")
    # The registry allows names Kubernetes does not: the served name falls back to it, and is refused too.
    if registry.model_name_problem(name) == "":
        publish_versions(reg, name, 1)
        with pytest.raises(DeployError, match="not a DNS-1035 label.*service_name"):
            deploy(str(out), deploy="kserve", registry=str(reg), model_name=name, storage_uri="gs://b/x")
    assert not out.exists()


@pytest.mark.parametrize("value", [-1, 101, 1000, True, 12.5])
@pytest.mark.unit
def test_canary_outside_0_to_100_is_refused(value, reg, tmp_path):
    with pytest.raises(ParameterError, match="canary_percent"):
        deploy(str(tmp_path / "out"), deploy="kserve", registry=str(reg), model_name="fashion", canary_percent=value,
               storage_uri="gs://b/fashion")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri,why", [("", "storage the cluster reaches"), ("http://host/m", "storage the cluster"),
                                     ("gs://", "SCHEME://BUCKET"), ("s3:///abs", "SCHEME://BUCKET"),
                                     ("pvc://claim/a b", "SCHEME://BUCKET"), ("gs://b//m", "SCHEME://BUCKET")])
@pytest.mark.unit
def test_storage_uris_the_cluster_cannot_read_are_refused(uri, why, reg, tmp_path):
    # "" falls back to REGISTRY/MODEL_NAME, which here is a local folder.
    with pytest.raises(DeployError, match=why):
        deploy(str(tmp_path / "out"), deploy="kserve", registry=str(reg), model_name="fashion", storage_uri=uri)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [("serving_cpu", "2 cores"), ("serving_memory", "2GB"),
                                         ("serving_memory", ""), ("min_replicas", 4)])
@pytest.mark.unit
def test_bad_resources_are_refused(field, value):
    with pytest.raises(ParameterError, match=field):
        DeployOptions(registry="gs://b/r", **{field: value})


@pytest.mark.unit
def test_nothing_published_or_no_registry_is_refused(tmp_path):
    with pytest.raises(DeployError, match="no published version .no champion yet.; published: none"):
        deploy(str(tmp_path / "o"), deploy="tf-serving", registry=str(tmp_path / "empty"), model_name="fashion")
    with pytest.raises(DeployError, match="needs the registry"):
        deploy(str(tmp_path / "o"), deploy="tf-serving", model_name="fashion")
    publish_versions(tmp_path / "r", "fashion", 1)
    with pytest.raises(DeployError, match=r"no published version 7; published: \[1\]"):
        deploy(str(tmp_path / "o"), deploy="tf-serving", registry=str(tmp_path / "r"), model_name="fashion",
               model_version=7)
    assert deploy(str(tmp_path / "o"), deploy="none").summary() == "deploy=none: nothing deployed"


def _kubeconfig(path: Path, url: str, token: str, namespace: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "double", "cluster": {"server": url}}],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "double", "user": "deployer", "namespace": namespace}}]}))
    return path


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    d = KubeDouble(token="kube-SECRET-token")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", d.url, d.token, "ml")))
    yield d
    d.stop()
    assert not d.rejected, f"requests the API server would refuse: {d.rejected}"


def test_kserve_apply_creates_then_patches_through_the_kubernetes_client(cluster, tmp_path, capsys):
    reg = tmp_path / "registry"
    publish_versions(reg, "fashion", 1)
    base = ["deploy", "kserve", "--registry", str(reg), "--model-name", "fashion", "--storage-uri",
            "s3://models/registry/fashion", "--serving-service-account", "model-reader", "--output-dir",
            str(tmp_path / "out")]
    assert main([*base, "--canary-percent", "25"]) == 0
    out = capsys.readouterr().out
    assert "created InferenceService ml/fashion" in out and "kube-SECRET-token" not in out
    created = cluster.objects[("ml", "fashion")]
    assert created["spec"]["predictor"]["canaryTrafficPercent"] == 100  # the first version takes everything

    publish_versions(reg, "fashion", 1)  # version 2 arrives: a canary
    assert main([*base, "--canary-percent", "25"]) == 0
    assert "patched InferenceService ml/fashion" in capsys.readouterr().out
    patched = cluster.objects[("ml", "fashion")]
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert patched["spec"]["predictor"]["annotations"][kserve.VERSION_ANNOTATION] == "2"
    assert patched["metadata"]["generation"] == 2 and patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert main([*base, "--canary-percent", "100"]) == 0  # promote: the field is set, not left behind
    assert cluster.objects[("ml", "fashion")]["spec"]["predictor"]["canaryTrafficPercent"] == 100
    methods = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in cluster.requests]
    assert methods == [("GET", "fashion"), ("POST", "inferenceservices"), ("GET", "fashion"), ("PATCH", "fashion"),
                       ("GET", "fashion"), ("PATCH", "fashion")]
    # The manifest names a service account; no credential is in it, nor in what was sent.
    written = (tmp_path / "out" / kserve.MANIFEST).read_text()
    assert "SECRET" not in written and "token" not in written.lower()


def test_kserve_apply_reports_the_clusters_refusal(cluster, tmp_path, capsys):
    reg = tmp_path / "registry"
    publish_versions(reg, "fashion", 1)
    cluster.token = "rotated"  # our kubeconfig's token no longer works
    assert main(["deploy", "kserve", "--registry", str(reg), "--model-name", "fashion", "--storage-uri",
                 "gs://b/fashion", "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "InferenceService ml/fashion: the cluster answered 401" in err
    cluster.rejected.clear()
    assert main(["deploy", "kserve", "--registry", str(reg), "--model-name", "fashion", "--storage-uri",
                 "gs://b/fashion", "--no-apply-manifest", "--output-dir", str(tmp_path / "out")]) == 0
    assert "not applied: apply_manifest=false; apply it with: kubectl apply -f" in capsys.readouterr().out


# --- TF Serving -------------------------------------------------------------------------------------

def _parse_config(path: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())


def _mounts(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].rsplit(":", 2)[:2] for i, a in enumerate(argv) if a == "-v")


@pytest.mark.unit
def test_tf_serving_follows_the_registrys_pinned_config_for_the_champion(reg, tmp_path, no_cluster):
    """Before: the champion was served with TF Serving's default policy (the highest folder), which on a
    bucket can be a partly copied version or one that is not the champion."""
    done = deploy(str(tmp_path / "out"), deploy="tf-serving", registry=str(reg), model_name="fashion")
    config = _parse_config(done.files[0]).model_config_list.config
    assert len(config) == 1 and config[0].name == "fashion" and config[0].base_path == "/mnt/models"
    assert config[0].model_platform == "tensorflow" and list(config[0].model_version_policy.specific.versions) == [2]
    line = next(x for x in done.lines if x.startswith("docker run"))
    argv = shlex.split(line)
    assert argv[-3:] == ["tensorflow/serving", "--model_config_file=/mnt/models/models.config",
                         "--model_config_file_poll_wait_seconds=30"]
    assert ["-p", "8500:8500"] == argv[3:5] and ["-p", "8501:8501"] == argv[5:7]
    mounts = _mounts(argv)
    assert mounts == {str(reg / "fashion"): "/mnt/models"}
    # What TF Serving reads at /mnt/models: the registry's own models.config (the one written to the output
    # folder is a copy), pinning the champion, and the integer version folders it names.
    host = Path(next(iter(mounts)))
    assert (host / registry.SERVING_CONFIG).read_text() == Path(done.files[0]).read_text()
    assert sorted(p.name for p in host.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert (host / "2" / "saved_model.pb").is_file()
    assert "version 2, the champion, as the registry's models.config pins it" in done.summary()
    # The next publish re-pins the registry's config: a running server follows it within 30 s.
    publish_versions(reg, "fashion", 1)
    pinned = _parse_config(str(host / registry.SERVING_CONFIG)).model_config_list.config[0]
    assert list(pinned.model_version_policy.specific.versions) == [3] and pinned.base_path == "/mnt/models"

    # A named version, or another served name: a config of its own pins it, next to the mounted folder.
    for kw, version in (({"model_version": 1, "service_name": "shoes"}, 1), ({"service_name": "shoes"}, 3)):
        pinned = deploy(str(tmp_path / f"pinned{version}"), deploy="tf-serving", registry=str(reg),
                        model_name="fashion", **kw)
        config = _parse_config(pinned.files[0]).model_config_list.config[0]
        assert config.name == "shoes" and list(config.model_version_policy.specific.versions) == [version]
        assert config.base_path == "/mnt/models"
        argv = shlex.split(next(x for x in pinned.lines if x.startswith("docker run")))
        assert _mounts(argv) == {pinned.files[0]: "/config/models.config", str(reg / "fashion"): "/mnt/models"}
        assert argv[-1] == "--model_config_file=/config/models.config"


def test_tf_serving_for_bucket_registries(tmp_path, bucket):
    s3, gs = bucket
    local = tmp_path / "registry"
    publish_versions(local, "fashion", 1)
    for root in (s3, gs):
        storage.upload_dir(str(local), f"{root}/reg")
    on_gs = deploy(str(tmp_path / "gs"), deploy="tf-serving", registry=f"{gs}/reg", model_name="fashion")
    config = _parse_config(on_gs.files[0]).model_config_list.config[0]
    assert config.base_path == f"{gs}/reg/fashion" and list(config.model_version_policy.specific.versions) == [1]
    assert "-e GOOGLE_APPLICATION_CREDENTIALS" in on_gs.summary()
    on_s3 = deploy(str(tmp_path / "s3"), deploy="tf-serving", registry=f"{s3}/reg", model_name="fashion")
    sync = next(x for x in on_s3.lines if x.startswith("aws s3 "))
    # The config read first, the versions synced, the config moved into place last: what it pins is there.
    assert sync.startswith(f"aws s3 cp {s3}/reg/fashion/models.config ")
    assert f"aws s3 sync {s3}/reg/fashion " in sync and "--exclude models.config" in sync
    assert sync.index("aws s3 cp") < sync.index("aws s3 sync") < sync.index("&& mv ")
    assert _parse_config(on_s3.files[0]).model_config_list.config[0].base_path == "/mnt/models"
    assert "--model_config_file=/mnt/models/models.config" in on_s3.summary()


@pytest.mark.unit
def test_deploy_refuses_a_registry_whose_config_does_not_pin_the_champion(reg, tmp_path, no_cluster, capsys):
    config = reg / "fashion" / registry.SERVING_CONFIG
    for damage in ("", registry.serving_config("fashion", 1), "model_config_list {}\n"):
        config.write_text(damage)
        for target, extra in (("tf-serving", []), ("kserve", ["--storage-uri", "gs://b/fashion"])):
            assert main(["deploy", target, "--registry", str(reg), "--model-name", "fashion", "--output-dir",
                         str(tmp_path / "o"), *extra]) == 1
            err = capsys.readouterr().err
            assert "not the champion 2; servers follow it: run 'imgclf registry check --repair" in err, err
            assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert main(["registry", "check", "--repair", str(reg / "fashion")]) == 0
    assert "rewritten to pin version 2" in capsys.readouterr().out
    assert main(["deploy", "tf-serving", "--registry", str(reg), "--model-name", "fashion", "--output-dir",
                 str(tmp_path / "o")]) == 0


@pytest.mark.unit
def test_kserve_serves_only_the_champion(reg, tmp_path, no_cluster):
    with pytest.raises(DeployError, match="the champion .version 2.; version 1 cannot be deployed there"):
        deploy(str(tmp_path / "o"), deploy="kserve", registry=str(reg), model_name="fashion", model_version=1,
               storage_uri="gs://b/fashion")
    done = deploy(str(tmp_path / "o"), deploy="kserve", registry=str(reg), model_name="fashion", model_version=2,
                  storage_uri="gs://b/fashion")
    assert "serves version 2 as the registry's models.config pins it, at /v1/models/fashion" in done.summary()


DAMAGE = [b'{"version": 2', b"\xff\xfe\x00garbage", b"{}", b'{"version": "x"}', b'{"version": -1}',
          b'{"version": 7}', b"null", b"[2]", b"", b'{"version": true}', b'{"version": 1.5}']


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_champion_record_is_named_by_deploy_with_the_repair(damage, reg, tmp_path, no_cluster, capsys):
    (reg / "fashion" / registry.CHAMPION_FILE).write_bytes(damage)
    for target, extra in (("tf-serving", []), ("kserve", ["--storage-uri", "gs://b/fashion"])):
        assert main(["deploy", target, "--registry", str(reg), "--model-name", "fashion",
                     "--output-dir", str(tmp_path / "o"), *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"imgclf: error: {reg}/fashion/champion.json: the champion record is damaged (")
        assert "it is never overwritten automatically. The newest complete version is 2: run 'imgclf registry check " \
               f"--repair --champion 2 {reg}/fashion'" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert (reg / "fashion" / registry.CHAMPION_FILE).read_bytes() == damage
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_a_run_without_registry_says_how_to_serve_its_saved_model(tmp_path):
    from imgclf.pipelines.local.run import LocalRun

    sm = tmp_path / "run" / "export" / "saved_model"
    run = LocalRun(pipeline_root=str(tmp_path), ingest_report="i.html", saved_model=str(sm),
                   outcome={"decision": "no-registry", "reasons": []})
    line = next(x for x in run.summary().splitlines() if x.startswith("serve it      : "))
    argv = shlex.split(line.split(": ", 1)[1])
    assert argv[:3] == ["docker", "run", "--rm"] and argv[-1] == "tensorflow/serving"
    # TF Serving reads a base path of integer version folders: the SavedModel is mounted as version 1.
    assert f"{sm}:/models/imgclf/1:ro" in argv and "MODEL_NAME=imgclf" in argv and "8501:8501" in argv


# --- Vertex AI ----------------------------------------------------------------------------------------

@pytest.fixture
def vertex_models(google_anonymous):
    d = VertexModelsDouble()
    yield d
    d.stop()
    assert not d.rejected, f"requests that do not match the Vertex AI API: {d.rejected}"


def test_the_vertex_models_double_rejects_wrong_shapes(vertex_models):
    import requests

    base = vertex_models.url + "/v1/projects/p/locations/us-central1"
    assert requests.post(base + "/models:upload", json={"model": {"displayName": "x", "artefactUri": "gs://b"}}
                         ).status_code == 400
    assert requests.post(base + "/endpoints/1:deployModel", json={"deployedModel": {}, "split": {}}).status_code == 400
    assert requests.get(base + "/models?colour=red").status_code == 400
    assert requests.get(base + "/modelz").status_code == 400
    assert len(vertex_models.rejected) == 4
    vertex_models.rejected.clear()


def test_vertex_uploads_versions_of_one_model_and_splits_traffic(vertex_models, bucket, tmp_path, capsys):
    _, gs = bucket
    local = tmp_path / "registry"
    publish_versions(local, "fashion", 2)
    storage.upload_dir(str(local), f"{gs}/reg")
    base = ["deploy", "vertex", "--registry", f"{gs}/reg", "--model-name", "fashion", "--vertex-project", "proj",
            "--vertex-api-endpoint", vertex_models.url, "--serving-service-account",
            "serving@proj.iam.gserviceaccount.com", "--output-dir", str(tmp_path / "out")]
    assert main([*base, "--model-version", "1"]) == 0
    assert "(created)" in capsys.readouterr().out
    assert main([*base, "--canary-percent", "30"]) == 0            # the champion, version 2
    out = capsys.readouterr().out
    uploads = [r["body"] for r in vertex_models.requests if r["path"].endswith("/models:upload")]
    assert "parentModel" not in uploads[0]
    [model_name] = vertex_models.models
    assert uploads[1]["parentModel"] == model_name               # a new version of the same model
    for body, version in zip(uploads, (1, 2)):
        m = body["model"]
        assert m["artifactUri"] == f"{gs}/reg/fashion/{version}"
        assert m["containerSpec"]["imageUri"] == "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
        assert "champion" in m["versionAliases"]
    v1, v2 = vertex_models.models[model_name]
    assert "champion" in v2["versionAliases"] and "champion" not in v1["versionAliases"]
    [endpoint] = vertex_models.endpoints.values()
    assert endpoint["displayName"] == "fashion"
    first, second = endpoint["deployedModels"]
    assert first["model"] == f"{model_name}@1" and second["model"] == f"{model_name}@2"
    assert second["serviceAccount"] == "serving@proj.iam.gserviceaccount.com"
    assert endpoint["trafficSplit"] == {first["id"]: 70, second["id"]: 30}
    assert f"{first['id']}: 70 %" in out and f"{second['id']}: 30 %" in out and f"{model_name}@2" in out
    creates = [r for r in vertex_models.requests if r["method"] == "POST" and r["path"].endswith("/endpoints")]
    assert len(creates) == 1                                      # the second deploy found the endpoint


def test_vertex_refuses_a_version_that_is_not_complete_before_any_call(vertex_models, bucket, tmp_path, capsys):
    from imgclf.components.deploy import vertex

    _, gs = bucket
    local = tmp_path / "registry"
    publish_versions(local, "fashion", 2)
    storage.upload_dir(str(local), f"{gs}/reg")
    storage.remove(f"{gs}/reg/fashion/1/assets.extra/keras/model.keras")  # a file its record lists is gone
    base = ["deploy", "vertex", "--registry", f"{gs}/reg", "--model-name", "fashion", "--vertex-project", "proj",
            "--vertex-api-endpoint", vertex_models.url, "--output-dir", str(tmp_path / "out")]
    assert main([*base, "--model-version", "1"]) == 1
    assert "fashion/1 is not a complete version (1 of its files missing (assets.extra/keras/model.keras))" \
        in capsys.readouterr().err
    opts = DeployOptions(registry=f"{gs}/reg", model_name="fashion", deploy="vertex", vertex_project="proj",
                         vertex_api_endpoint=vertex_models.url)
    with pytest.raises(DeployError, match="not a complete version .*Vertex AI would serve a broken model"):
        vertex.deploy(opts, 1)
    assert vertex_models.requests == []


def test_vertex_refuses_registries_outside_cloud_storage_before_any_call(vertex_models, reg, tmp_path, capsys):
    assert main(["deploy", "vertex", "--registry", str(reg), "--model-name", "fashion", "--vertex-project", "p",
                 "--vertex-api-endpoint", vertex_models.url, "--output-dir", str(tmp_path / "o")]) == 1
    assert "the registry must be gs://" in capsys.readouterr().err
    assert vertex_models.requests == [] and not (tmp_path / "o").exists()


# --- the pipeline -------------------------------------------------------------------------------------

def test_the_pipeline_deploys_after_publish_inside_the_gate_passed_branch(tmp_path):
    assert main(["compile", "--allow-local-image", "-o", str(tmp_path / "p.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["deploy"]["defaultValue"] == "none"
    branch = next(c for c in spec["components"].values() if "publish" in c.get("dag", {}).get("tasks", {}))
    task = branch["dag"]["tasks"]["deploy"]
    assert task["dependentTasks"] == ["publish"]
    wired = task["inputs"]["parameters"]["model_version"]["taskOutputParameter"]
    assert wired == {"outputParameterKey": "Output", "producerTask": "publish"}
    assert task["cachingOptions"] == {}
    assert "vertex_api_endpoint" not in spec["root"]["inputDefinitions"]["parameters"]


# --- dispatch -----------------------------------------------------------------------------------------

@pytest.mark.unit
def test_every_target_but_none_has_its_own_handler():
    from imgclf.components.deploy.options import TARGETS
    from imgclf.components.deploy.step import HANDLERS, handler

    assert set(HANDLERS) == set(TARGETS) - {"none"}
    for target in HANDLERS:
        assert handler(target) is HANDLERS[target]
    runs = [h.run for h in HANDLERS.values()]
    assert len(set(runs)) == len(runs)  # no target borrows another's deployment


@pytest.mark.unit
def test_a_target_without_a_handler_is_refused_not_sent_elsewhere(reg, tmp_path, monkeypatch):
    from imgclf.components.deploy import step, tf_serving

    def elsewhere(*_args, **_kwargs):
        raise AssertionError("an unknown target reached TF Serving")

    monkeypatch.setattr(tf_serving, "configure", elsewhere)
    opts = DeployOptions(deploy="tf-serving", registry=str(reg), model_name="fashion")
    object.__setattr__(opts, "deploy", "nginx")  # as if added to TARGETS alone
    with pytest.raises(DeployError, match="deploy=nginx: no handler"):
        deploy(str(tmp_path / "out"), opts=opts)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DeployError, match="no handler"):
        step.handler("nginx")
