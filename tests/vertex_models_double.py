"""A test double of the Vertex AI Model Registry and endpoints REST API (v1) on 127.0.0.1, built on
tests/vertex_double.py's checks: request bodies parsed into the real aiplatform_v1 protobuf messages with
unknown fields refused, v1 resource paths only, known query parameters only; anything else is answered
400 and recorded as rejected.

What it does with them is what Vertex does in the parts deploy relies on: `models:upload` with a parent
model adds a version (the first is version 1) and moves the aliases it names off other versions;
uploads, endpoint creation and deployments are long-running operations, done on the first poll;
deploying takes the request's traffic split, with "0" standing for the new deployed model.
"""
from __future__ import annotations

import itertools
import re
from urllib.parse import unquote

from google.cloud.aiplatform_v1.types import DeployModelRequest, Endpoint, UploadModelRequest

from tests.vertex_double import VertexDouble

LOC = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
LIST_QUERY = {"filter", "pageSize", "pageToken", "orderBy", "readMask"}
ROUTES = [
    ("GET", re.compile(LOC + r"/models$"), None, LIST_QUERY),
    ("POST", re.compile(LOC + r"/models:upload$"), UploadModelRequest, set()),
    ("GET", re.compile(LOC + r"/models/(?P<id>[0-9]+)(@(?P<version>[^/]+))?$"), None, set()),
    ("GET", re.compile(LOC + r"/endpoints$"), None, LIST_QUERY),
    ("POST", re.compile(LOC + r"/endpoints$"), Endpoint, {"endpointId"}),
    ("GET", re.compile(LOC + r"/endpoints/(?P<id>[0-9]+)$"), None, set()),
    ("POST", re.compile(LOC + r"/endpoints/(?P<id>[0-9]+):deployModel$"), DeployModelRequest, set()),
    # google-cloud-aiplatform's REST transport polls operations under /ui/ (the first of its http rules
    # for projects/*/locations/*/operations/*); both prefixes name the same operation.
    ("GET", re.compile(r"/(v1|ui)" + LOC[3:] + r"/operations/(?P<id>[0-9]+)$"), None, set()),
]
_FILTER = re.compile(r'display_name="(?P<name>[^"]*)"')
AIP = "type.googleapis.com/google.cloud.aiplatform.v1."


def _not_found(what: str):
    return 404, {"error": {"code": 404, "message": f"{what} not found", "status": "NOT_FOUND"}}


class VertexModelsDouble(VertexDouble):
    """VertexDouble's request checks and HTTP handling (request log, 400 for a wrong shape) on these routes."""
    routes = ROUTES

    def __init__(self):
        self.models: dict[str, list[dict]] = {}   # model resource name -> its versions
        self.endpoints: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        super().__init__()
        self._ids = itertools.count(1001)

    def check(self, method, path, query, body):
        if "filter" in query and not _FILTER.fullmatch(query["filter"]):
            raise ValueError(f"{method} {path}: this double answers only display_name=\"...\" filters")
        _, match = super().check(method, unquote(path), query, body)  # the client sends models/ID%40VERSION
        return match.re.pattern, match

    def _operation(self, response: dict, kind: str) -> tuple[int, dict]:
        name = f"{self._parent}/operations/{next(self._ids)}"
        self.operations[name] = {"name": name, "done": True, "response": {"@type": AIP + kind, **response}}
        return 200, {"name": name, "metadata": {"@type": AIP + "GenericOperationMetadata"}, "done": False}

    def _named(self, table: dict, query: dict) -> list:
        name = _FILTER.fullmatch(query["filter"])["name"] if "filter" in query else None
        return [x for x in table if name is None or x["displayName"] == name]

    def latest(self, model: str) -> dict:
        return self.models[model][-1]

    def respond(self, method, route, match, query, body):
        self._parent = parent = f"projects/{match['project']}/locations/{match['location']}"
        if route.endswith("/models$"):
            # Listing shows each model once, as its default version.
            defaults = [next(v for v in vs if "default" in v["versionAliases"]) for vs in self.models.values()]
            return 200, {"models": self._named(defaults, query)}
        if route.endswith("/models:upload$"):
            model = body["model"]
            name = body.get("parentModel") or f"{parent}/models/{next(self._ids)}"
            if body.get("parentModel") and name not in self.models:
                return _not_found(f"parent model {name}")
            versions = self.models.setdefault(name, [])
            aliases = list(model.get("versionAliases", []))
            if not versions and "default" not in aliases:  # one version always carries "default"
                aliases.insert(0, "default")
            for other in versions:  # an alias belongs to one version at a time
                other["versionAliases"] = [a for a in other["versionAliases"] if a not in aliases]
            version = {**model, "name": name, "versionId": str(len(versions) + 1), "versionAliases": aliases,
                       "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"]}
            versions.append(version)
            return self._operation({"model": name, "modelVersionId": version["versionId"]}, "UploadModelResponse")
        if "/models/" in route:
            name = f"{parent}/models/{match['id']}"
            versions = self.models.get(name, [])
            wanted = match["version"]
            found = [v for v in versions if wanted is None and "default" in v["versionAliases"]
                     or wanted in (v["versionId"], *v["versionAliases"])]
            return (200, found[0]) if found else _not_found(f"model {name}@{wanted}")
        if route.endswith("/endpoints$") and method == "GET":
            return 200, {"endpoints": self._named(list(self.endpoints.values()), query)}
        if route.endswith("/endpoints$"):
            name = f"{parent}/endpoints/{query.get('endpointId') or next(self._ids)}"
            self.endpoints[name] = {**body, "name": name, "deployedModels": [], "trafficSplit": {}}
            return self._operation(self.endpoints[name], "Endpoint")
        if route.endswith(":deployModel$"):
            endpoint = self.endpoints.get(f"{parent}/endpoints/{match['id']}")
            if endpoint is None:
                return _not_found(f"endpoint {match['id']}")
            model_name, _, version = body["deployedModel"]["model"].partition("@")
            if not any(v["versionId"] == version for v in self.models.get(model_name, [])):
                return _not_found(f"model version {body['deployedModel']['model']}")
            split = body.get("trafficSplit", {"0": 100})
            if sum(split.values()) != 100:
                return 400, {"error": {"code": 400, "message": f"traffic split {split} does not add up to 100",
                                       "status": "INVALID_ARGUMENT"}}
            deployed = {**body["deployedModel"], "id": str(next(self._ids))}
            endpoint["deployedModels"].append(deployed)
            endpoint["trafficSplit"] = {deployed["id"] if k == "0" else k: v for k, v in split.items() if v}
            return self._operation({"deployedModel": {"id": deployed["id"]}}, "DeployModelResponse")
        if "/endpoints/" in route:
            endpoint = self.endpoints.get(f"{parent}/endpoints/{match['id']}")
            return (200, endpoint) if endpoint else _not_found(f"endpoint {match['id']}")
        operation = self.operations.get(f"{parent}/operations/{match['id']}")
        return (200, operation) if operation else _not_found(f"operation {match['id']}")
