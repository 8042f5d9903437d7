"""Vertex AI: the published version uploaded to the Vertex Model Registry as a new version of the same
model (its display name is the served name), with the `champion` alias (Vertex moves an alias off the
version that had it) and the prebuilt TensorFlow serving container, then deployed to an endpoint of the
same name (created when missing) with a traffic split: the new version gets `canary_percent`, the
models already deployed keep the rest in their proportions.

Credentials come from the standard Google chain (workload identity, gcloud, a key file), never from
parameters. The artifact URI must be a gs:// version folder: Vertex reads no other store. Vertex copies
exactly that folder, so it never sees another version; a version that is not complete (no record, or
files missing from what its record lists) is refused before any call.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.deploy.kserve import DeployError
from imgclf.components.deploy.options import DeployOptions
from imgclf.components.lib import registry

ALIAS = "champion"


@dataclass
class VertexDeployment:
    model: str
    """The model version's resource name (`projects/.../models/ID@VERSION`)."""
    endpoint: str
    traffic: dict[str, int]
    created_endpoint: bool


def artifact_uri(opts: DeployOptions, version: int) -> str:
    uri = registry.version_uri(opts.registry, opts.model_name, version)
    if not uri.startswith("gs://"):
        raise DeployError(f"Vertex AI serves models from Cloud Storage: the registry must be gs://, not "
                          f"{opts.registry!r} (publish to a gs:// registry, or copy version {version} there)")
    return uri


def _one(found: list, what: str):
    if len(found) > 1:
        raise DeployError(f"{len(found)} Vertex {what}s are named {found[0].display_name!r}: cannot tell which to use")
    return found[0] if found else None


def deploy(opts: DeployOptions, version: int) -> VertexDeployment:
    import google.auth.exceptions
    from google.api_core import exceptions
    from google.cloud import aiplatform

    uri = artifact_uri(opts, version)  # refused before any call
    if problem := registry.version_problem(opts.registry, opts.model_name, version):
        raise DeployError(f"{uri} is not a complete version ({problem}): Vertex AI would serve a broken model")
    init = {"location": opts.vertex_region}
    if opts.vertex_project:
        init["project"] = opts.vertex_project
    if opts.vertex_api_endpoint:
        init.update(api_endpoint=opts.vertex_api_endpoint, api_transport="rest")
    name = opts.name
    try:
        aiplatform.init(**init)
        parent = _one(aiplatform.Model.list(filter=f'display_name="{name}"'), "model")
        model = aiplatform.Model.upload(
            display_name=name, artifact_uri=uri, serving_container_image_uri=opts.vertex_serving_image,
            parent_model=parent.resource_name if parent else None, is_default_version=True,
            version_aliases=[ALIAS], version_description=f"imgclf registry version {version}",
            labels={"imgclf-registry-version": str(version)}, sync=True)
        endpoint = _one(aiplatform.Endpoint.list(filter=f'display_name="{name}"'), "endpoint")
        created = endpoint is None
        if created:
            endpoint = aiplatform.Endpoint.create(display_name=name, sync=True)
        already = bool(endpoint.list_models())
        model.deploy(endpoint=endpoint, deployed_model_display_name=f"{name}-v{version}",
                     traffic_percentage=opts.canary_percent if already else 100,
                     machine_type=opts.vertex_machine_type, min_replica_count=max(opts.min_replicas, 1),
                     max_replica_count=opts.max_replicas, service_account=opts.serving_service_account or None,
                     sync=True)
    except exceptions.GoogleAPICallError as e:
        raise DeployError(f"Vertex AI refused the deployment of {name} version {version}: {e}") from None
    except google.auth.exceptions.GoogleAuthError as e:
        raise DeployError(f"no usable Google credentials for Vertex AI (workload identity, gcloud, "
                          f"GOOGLE_APPLICATION_CREDENTIALS): {e}") from None
    return VertexDeployment(f"{model.resource_name}@{model.version_id}", endpoint.resource_name,
                            dict(endpoint.traffic_split), created)
