"""KServe: an InferenceService (serving.kserve.io/v1beta1) for the TensorFlow predictor, whose storageUri
is the registry's model folder, already in TF Serving's version layout.

Why the predictor reads the registry's models.config (`--model_config_file=/mnt/models/models.config`;
TF Serving then ignores the runtime's --model_base_path): KServe's storage initializer downloads the
whole model folder to /mnt/models, and TF Serving's default policy serves its highest integer folder.
On a bucket that folder can be incomplete (a publish copying, or killed mid-copy) or complete but not
the champion (killed before the pointer moved). The config pins the champion and is rewritten only after
the pointer moved (components/lib/registry.py), so a pod that starts at any moment serves a complete
champion. The served name is the registry's model name (the config names it): when the
InferenceService has another name, clients call /v1/models/MODEL_NAME on its host.

Why a version annotation on the predictor: the storageUri stays the same folder for every version, so
without a change in the predictor's spec KServe would start no new revision and the canary split would
have nothing to split. The annotation changes with each version: KServe rolls out a new revision whose
pods download the folder at start and serve the version its config pins (the new champion), while the
previous revision's pods keep serving what they downloaded when they started. A previous-revision pod
that restarts during the canary downloads the folder again and serves the new version too, so promote
(`canary_percent=100`) or roll back promptly.

No credentials go into the manifest: the predictor reads the bucket through its service account's
secrets (KServe's storage initializer), and the client talks to the cluster with the kubeconfig or the
pod's in-cluster credentials.
"""
from __future__ import annotations

import os

import yaml

from imgclf.components.deploy.options import DeployOptions, dns_label_problem
from imgclf.components.lib import kube, registry, storage

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STORAGE_SCHEMES = ("gs://", "s3://", "pvc://")
MANIFEST = "inferenceservice.yaml"
VERSION_ANNOTATION = "imgclf.io/model-version"
CONFIG_ARG = f"--model_config_file={registry.SERVING_BASE_PATH}/{registry.SERVING_CONFIG}"


class DeployError(ValueError):
    """A deployment that cannot work as asked; the message says why and what to change."""


def storage_uri(opts: DeployOptions) -> str:
    """Where the cluster reads the model folder: gs://, s3:// or pvc://, never a local path."""
    uri = opts.storage_uri or storage.join(opts.registry, opts.model_name)
    if not uri.startswith(STORAGE_SCHEMES):
        raise DeployError(f"KServe reads the model from storage the cluster reaches (gs://, s3:// or pvc://), not "
                          f"{uri!r}; for a registry on a volume give storage_uri=pvc://CLAIM/PATH/{opts.model_name}")
    rest = uri.split("://", 1)[1]
    if not rest or rest.startswith("/") or "//" in rest or any(c.isspace() for c in rest):
        raise DeployError(f"storage URI {uri!r}: expected SCHEME://BUCKET_OR_CLAIM/PATH")
    return uri.rstrip("/")


def manifest(opts: DeployOptions, version: int, has_previous: bool) -> dict:
    """The InferenceService for `version`; refused (DeployError) before anything is written or sent."""
    if problem := dns_label_problem(opts.name) or ("" if opts.name else "empty"):
        raise DeployError(f"InferenceService name {opts.name!r}: {problem}; set service_name to a valid name")
    resources = {"cpu": opts.serving_cpu, "memory": opts.serving_memory}
    predictor: dict = {
        "minReplicas": opts.min_replicas,
        "maxReplicas": opts.max_replicas,
        "annotations": {VERSION_ANNOTATION: str(version)},
        "model": {"modelFormat": {"name": "tensorflow"}, "storageUri": storage_uri(opts),
                  # serve the version the registry's config pins, never the highest folder downloaded
                  "args": [CONFIG_ARG],
                  "resources": {"requests": dict(resources), "limits": dict(resources)}},
    }
    # Always set (a merge patch keeps a field it does not name): the first version has no previous
    # revision to keep traffic, so it gets all of it.
    predictor["canaryTrafficPercent"] = opts.canary_percent if has_previous else 100
    if opts.serving_service_account:
        predictor["serviceAccountName"] = opts.serving_service_account
    metadata: dict = {"name": opts.name, "labels": {"app.kubernetes.io/managed-by": "imgclf"},
                      "annotations": {VERSION_ANNOTATION: str(version)}}
    if opts.serving_namespace:
        metadata["namespace"] = opts.serving_namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


def write(doc: dict, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def cluster_configured() -> bool:
    """A pod's in-cluster credentials, or a kubeconfig file (KUBECONFIG or ~/.kube/config)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    files = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config")).split(os.pathsep)
    return any(f and os.path.isfile(f) for f in files)


def _client():
    """CustomObjectsApi and the namespace the configuration names (components/lib/kube.py)."""
    return kube.custom_objects()


def apply(doc: dict) -> tuple[str, str]:
    """Create the InferenceService, or merge-patch it if it exists: ("created" | "patched", namespace)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    try:
        api, namespace = _client()
    except ConfigException as e:
        raise DeployError(f"the Kubernetes configuration cannot be used: {e}") from None
    namespace = doc["metadata"].get("namespace", namespace)
    name = doc["metadata"]["name"]
    where = f"InferenceService {namespace}/{name}"
    try:
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
            return "created", namespace
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, doc)
        return "patched", namespace
    except ApiException as e:
        raise DeployError(f"{where}: the cluster answered {e.status} {e.reason}: {(e.body or '')[:300]}") from None
    except (OSError, urllib3.exceptions.HTTPError) as e:  # connection refused, TLS, timeouts
        raise DeployError(f"{where}: cannot reach the cluster: {e}") from None
