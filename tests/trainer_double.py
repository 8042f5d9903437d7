"""A strict test double of the Kubernetes API server's custom-objects paths for Kubeflow Trainer v2
TrainJobs (trainer.kubeflow.org/v1alpha1), on 127.0.0.1, that the real `kubernetes` client talks to
through a kubeconfig. Built on tests/kube_double.py: the same HTTP handling, bearer token check, request
log, status objects and closed-schema validation, here against Trainer's own TrainJob CRD schema
(tests/contracts/), with fields the schema does not declare refused, as `--validate=strict` does.

What the API server and Trainer's admission webhook would also refuse, it refuses: the CRD's CEL rules
on the name (a DNS-1035 label of at most 63 characters), a runtimeRef to a ClusterTrainingRuntime that
is not installed (`runtimes`, by default the one we ship in containers/trainer-runtime.yaml), and
runtimePatches whose manager is not a domain-prefixed path or that name a replicated job or container
the runtime lacks. It answers get, create (201, 409 for a second) and delete (200, 404) the way the
server does.

No controller runs here: a test says what the TrainJob's status is at each GET after creation
(`statuses[name]`, a list whose last entry stays), which is how a real TrainJob looks to a client that
polls it while Trainer and JobSet run the pods.
"""
from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import yaml

from tests.kube_double import NAME, KubeDouble, _closed

CONTRACTS = Path(__file__).parent / "contracts"
TRAINJOB_SCHEMA = CONTRACTS / "trainer_trainjob_v1alpha1.schema.json"
RUNTIME_SCHEMA = CONTRACTS / "trainer_clustertrainingruntime_v1alpha1.schema.json"
SHIPPED_RUNTIME = Path(__file__).parents[1] / "containers" / "trainer-runtime.yaml"
BASE = r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/(?P<ns>[^/]+)/trainjobs"
WRITE_QUERY = {"dryRun", "fieldManager", "fieldValidation", "pretty"}
DELETE_QUERY = {"dryRun", "gracePeriodSeconds", "orphanDependents", "propagationPolicy", "pretty"}
ROUTES = [
    ("GET", re.compile(BASE + r"/(?P<name>[^/]+)$"), {"pretty", "resourceVersion"}),
    ("POST", re.compile(BASE + r"$"), WRITE_QUERY),
    ("DELETE", re.compile(BASE + r"/(?P<name>[^/]+)$"), DELETE_QUERY),
]
# Kubernetes' IsDomainPrefixedPath: a DNS-1123 subdomain, "/", a non-empty path.
MANAGER = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[^\s]+")
DELETE_OPTIONS = {"apiVersion", "kind", "dryRun", "gracePeriodSeconds", "orphanDependents", "propagationPolicy",
                  "preconditions"}


@lru_cache(maxsize=2)
def validator(schema: Path):
    import jsonschema

    return jsonschema.Draft7Validator(_closed(json.loads(schema.read_text(encoding="utf-8"))))


def schema_problems(doc: dict, schema: Path, kind: str) -> list[str]:
    """What the closed CRD schema finds wrong, plus the CEL rules every Trainer object has on its name."""
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
             for e in validator(schema).iter_errors(doc)]
    if doc.get("apiVersion") != "trainer.kubeflow.org/v1alpha1" or doc.get("kind") != kind:
        found.append(f"not a trainer.kubeflow.org/v1alpha1 {kind}: {doc.get('apiVersion')} {doc.get('kind')}")
    name = (doc.get("metadata") or {}).get("name", "")
    if not NAME.fullmatch(name or ""):
        found.append("metadata.name must match RFC 1035 DNS label format")
    if len(name or "") > 63:
        found.append("metadata.name must be no more than 63 characters")
    return found


def runtime_problems(doc: dict) -> list[str]:
    return schema_problems(doc, RUNTIME_SCHEMA, "ClusterTrainingRuntime")


def trainjob_problems(doc: dict, runtimes: dict[str, dict] | None = None) -> list[str]:
    """The schema's and, with `runtimes` (name -> ClusterTrainingRuntime), Trainer's admission checks."""
    found = schema_problems(doc, TRAINJOB_SCHEMA, "TrainJob")
    if runtimes is None or found:
        return found
    ref = doc["spec"]["runtimeRef"]
    if ref.get("kind", "ClusterTrainingRuntime") != "ClusterTrainingRuntime" or ref["name"] not in runtimes:
        return [f"spec.RuntimeRef: Invalid value: {ref}: clustertrainingruntimes.trainer.kubeflow.org "
                f"{ref['name']!r} not found: specified clusterTrainingRuntime must be created before the "
                f"TrainJob is created"]
    jobs = {j["name"]: {c["name"] for c in j["template"]["spec"]["template"]["spec"].get("containers", [])}
            for j in runtimes[ref["name"]]["spec"]["template"]["spec"]["replicatedJobs"]}
    for patch in doc["spec"].get("runtimePatches") or []:
        if not MANAGER.fullmatch(patch["manager"]):
            found.append(f"spec.runtimePatches.manager: {patch['manager']!r} is not a domain-prefixed path")
        spec = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in spec.get("replicatedJobs") or []:
            if rjob["name"] not in jobs:
                found.append("spec.runtimePatches: must not have replicated job that doesn't exist in the runtime "
                             "job template")
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in pod.get("containers") or []:
                if c["name"] not in jobs[rjob["name"]]:
                    found.append(f"spec.runtimePatches: must not have container that doesn't exist in the runtime "
                                 f"job {rjob['name']}")
    return found


def shipped_runtime() -> dict:
    return yaml.safe_load(SHIPPED_RUNTIME.read_text(encoding="utf-8"))


def status(kind: str = "", reason: str = "", message: str = "", active: int = 0, succeeded: int = 0,
           failed: int = 0) -> dict:
    """A TrainJob status as Trainer writes it: one True condition (none while running) and the child
    JobSet's replicated job counts."""
    st: dict = {"jobsStatus": [{"name": "node", "active": active, "ready": active, "succeeded": succeeded,
                                "failed": failed, "suspended": 0}]}
    if kind:
        st["conditions"] = [{"type": kind, "status": "True", "reason": reason, "message": message,
                             "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1}]
    return st


class TrainerDouble(KubeDouble):
    """KubeDouble's handling and checks on the TrainJob routes, with the runtimes installed."""

    def __init__(self, token: str, runtimes: dict[str, dict] | None = None):
        self.runtimes = {r["metadata"]["name"]: r for r in [shipped_runtime()]} if runtimes is None else runtimes
        self.statuses: dict[str, list[dict]] = {}
        self.deleted: list[str] = []
        super().__init__(token)

    ROUTES = ROUTES
    KIND = "a TrainJob"

    def check_write(self, method, path, match, content_type, body) -> None:
        if method == "DELETE":
            if body is not None and (not isinstance(body, dict) or set(body) - DELETE_OPTIONS):
                raise ValueError(f"DELETE {path}: the body must be DeleteOptions, not {body!r}")
            return
        if content_type != "application/json":
            raise ValueError(f"POST {path}: expected application/json, not {content_type!r}")
        if not isinstance(body, dict):
            raise ValueError(f"POST {path}: expected a TrainJob object")
        if errors := schema_problems(body, TRAINJOB_SCHEMA, "TrainJob"):
            raise ValueError(f"POST {path}: invalid TrainJob: {errors}")
        meta = body.get("metadata") or {}
        if meta.get("namespace", match["ns"]) != match["ns"]:
            raise ValueError(f"POST {path}: metadata.namespace {meta['namespace']!r} is not the path's")

    def respond(self, method, match, body):
        ns = match["ns"]
        if method == "POST":
            key = (ns, body["metadata"]["name"])
            if key in self.objects:
                return 409, self.status(409, "AlreadyExists", f"trainjobs.trainer.kubeflow.org {key[1]!r} already exists")
            if errors := trainjob_problems(body, self.runtimes):
                return 403, self.status(403, "Forbidden", 'admission webhook "validator.trainjob.trainer.kubeflow.org" '
                                                          f"denied the request: {'; '.join(errors)}")
            stored = self.created(ns, body)
            stored["spec"].setdefault("suspend", False)  # the CRD's defaults, as the server applies them
            stored["spec"].setdefault("managedBy", "trainer.kubeflow.org/trainjob-controller")
            self.objects[key] = stored
            return 201, stored
        key = (ns, match["name"])
        if key not in self.objects:
            return 404, self.status(404, "NotFound", f"trainjobs.trainer.kubeflow.org {match['name']!r} not found")
        if method == "DELETE":
            self.deleted.append(match["name"])
            return 200, self.objects.pop(key)
        obj = self.objects[key]
        plan = self.statuses.get(match["name"])
        if plan:
            obj["status"] = copy.deepcopy(plan.pop(0) if len(plan) > 1 else plan[0])
        return 200, obj
