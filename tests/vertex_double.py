"""A test double of the Vertex AI Pipelines REST API (v1) on 127.0.0.1.

Request bodies are parsed into the real protobuf messages (aiplatform_v1 PipelineJob, Schedule) with
unknown fields refused, paths must be the v1 resource paths, and query parameters must be ones the
API takes: a request of the wrong shape is answered 400 and recorded as rejected.
"""
from __future__ import annotations

import itertools
import json
import re
from urllib.parse import parse_qs, urlparse

from google.cloud.aiplatform_v1.types import (
    CancelCustomJobRequest,
    CancelPipelineJobRequest,
    CustomJob,
    PipelineJob,
    Schedule,
)
from google.protobuf import json_format

from tests.http_double import JsonHandler, Served

LOC = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
ROUTES = [
    ("POST", re.compile(LOC + r"/pipelineJobs$"), PipelineJob, {"pipelineJobId"}),
    ("GET", re.compile(LOC + r"/pipelineJobs$"), None, {"filter", "pageSize", "pageToken", "orderBy", "readMask"}),
    ("GET", re.compile(LOC + r"/pipelineJobs/(?P<id>[^/:]+)$"), None, set()),
    ("POST", re.compile(LOC + r"/pipelineJobs/(?P<id>[^/:]+):cancel$"), CancelPipelineJobRequest, set()),
    ("POST", re.compile(LOC + r"/schedules$"), Schedule, set()),
    ("GET", re.compile(LOC + r"/schedules$"), None, {"filter", "pageSize", "pageToken", "orderBy"}),
    ("GET", re.compile(LOC + r"/schedules/(?P<id>[^/]+)$"), None, set()),
    ("DELETE", re.compile(LOC + r"/schedules/(?P<id>[^/]+)$"), None, set()),
]


class VertexDouble(Served):
    routes = ROUTES
    """(method, path pattern, body message or None, allowed query parameters); a subclass may serve others."""

    def __init__(self):
        self.requests, self.rejected = [], []
        self.final_state = "PIPELINE_STATE_SUCCEEDED"
        self.jobs, self.schedules = {}, {}
        self._ids = itertools.count(1)
        double = self

        class Handler(JsonHandler):
            def handle_request(self, method):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items() if k != "$alt"}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                record = {"method": method, "path": url.path, "query": query, "body": body}
                double.requests.append(record)
                try:
                    route, match = double.check(method, url.path, query, body)
                except ValueError as e:
                    record["rejected"] = str(e)
                    double.rejected.append(str(e))
                    return self.send_json(400, {"error": {"code": 400, "message": str(e), "status": "INVALID_ARGUMENT"}})
                self.send_json(*double.respond(method, route, match, query, body))


        self.start(Handler)

    def check(self, method, path, query, body):
        for m, rx, message, allowed in self.routes:
            match = rx.match(path)
            if m == method and match:
                extra = set(query) - allowed
                if extra:
                    raise ValueError(f"{method} {path}: unexpected query parameters {sorted(extra)}")
                if message is not None:
                    if body is None:
                        raise ValueError(f"{method} {path}: missing body")
                    try:
                        json_format.ParseDict(body, message.pb(message()), ignore_unknown_fields=False)
                    except json_format.ParseError as e:
                        raise ValueError(f"{method} {path}: not a {message.__name__}: {e}") from None
                elif body:
                    raise ValueError(f"{method} {path} takes no body")
                return (m, rx.pattern), match
        raise ValueError(f"{method} {path} is not a Vertex AI v1 pipelines/schedules call")

    def respond(self, method, route, match, query, body):
        parent = f"projects/{match['project']}/locations/{match['location']}"
        if route[1].endswith("/pipelineJobs$") and method == "POST":
            name = f"{parent}/pipelineJobs/{query.get('pipelineJobId') or next(self._ids)}"
            self.jobs[name] = {**body, "name": name, "state": "PIPELINE_STATE_RUNNING", "_polls": 0}
            return 200, {k: v for k, v in self.jobs[name].items() if not k.startswith("_")}
        if route[1].endswith("/pipelineJobs$"):  # list, newest first
            jobs = [{k: v for k, v in j.items() if not k.startswith("_")} for j in reversed(self.jobs.values())]
            return 200, {"pipelineJobs": jobs}
        if "/pipelineJobs/" in route[1]:
            job = self.jobs.get(f"{parent}/pipelineJobs/{match['id']}")
            if not job:
                return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
            if route[1].endswith(":cancel$"):
                job["state"] = "PIPELINE_STATE_CANCELLING"
                return 200, {}
            job["_polls"] += 1
            if job["_polls"] >= 2 and job["state"] == "PIPELINE_STATE_RUNNING":
                job["state"] = self.final_state
                failed = self.final_state == "PIPELINE_STATE_FAILED"
                if failed:
                    job["error"] = {"code": 9, "message": "task train failed"}
                job["jobDetail"] = {"taskDetails": [
                    {"taskId": str(i), "taskName": n, "state": "FAILED" if failed and n == "train" else "SUCCEEDED",
                     **({"error": {"code": 9, "message": "train: loss diverged"}} if failed and n == "train" else {})}
                    for i, n in enumerate(("ingest", "preprocess", "train"))]}
            return 200, {k: v for k, v in job.items() if not k.startswith("_")}
        if route[1].endswith("/schedules$") and method == "POST":
            name = f"{parent}/schedules/{next(self._ids)}"
            self.schedules[name] = {**body, "name": name, "state": "ACTIVE"}
            return 200, self.schedules[name]
        if route[1].endswith("/schedules$"):
            return 200, {"schedules": list(self.schedules.values())}
        name = f"{parent}/schedules/{match['id']}"
        if name not in self.schedules:
            return 404, {"error": {"code": 404, "message": f"schedule {name} not found", "status": "NOT_FOUND"}}
        if method == "DELETE":
            del self.schedules[name]
            return 200, {"name": f"{parent}/operations/{next(self._ids)}", "done": True,
                         "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        return 200, self.schedules[name]


_LABEL_FILTER = re.compile(r'labels\.([a-z][-_a-z0-9]*)="([-_a-z0-9]*)"')


class VertexCustomJobsDouble(VertexDouble):
    """Vertex AI's CustomJob routes (create, list by label, get, cancel) with VertexDouble's checks: bodies parsed into the
    real aiplatform_v1 CustomJob message with unknown fields refused. It also refuses what Vertex refuses of
    a worker pool layout (the first pool is the one primary replica; every pool has a machine type and a
    container image; accelerators only with a count). No scheduler runs: `states[job id]` says what each
    GET after creation shows (the last entry stays), as `statuses` does in tests/trainer_double.py."""
    routes = [
        ("POST", re.compile(LOC + r"/customJobs$"), CustomJob, set()),
        ("GET", re.compile(LOC + r"/customJobs$"), None, {"filter", "pageSize", "pageToken", "readMask"}),
        ("GET", re.compile(LOC + r"/customJobs/(?P<id>[^/:]+)$"), None, set()),
        ("POST", re.compile(LOC + r"/customJobs/(?P<id>[^/:]+):cancel$"), CancelCustomJobRequest, set()),
    ]

    def __init__(self):
        self.custom_jobs: dict[str, dict] = {}
        self.states: dict[str, list[tuple[str, str]]] = {}
        self.cancelled: list[str] = []
        super().__init__()

    def check(self, method, path, query, body):
        route, match = super().check(method, path, query, body)
        if "filter" in query and not _LABEL_FILTER.fullmatch(query["filter"]):
            raise ValueError(f"{method} {path}: this double answers only labels.KEY=\"VALUE\" filters")
        if method == "POST" and route[1].endswith("/customJobs$"):
            pools = (body.get("jobSpec") or {}).get("workerPoolSpecs") or []
            if not pools or int(pools[0].get("replicaCount", 0)) != 1:
                raise ValueError(f"POST {path}: the first worker pool must be the one primary replica")
            for i, pool in enumerate(pools):
                machine = pool.get("machineSpec") or {}
                if not machine.get("machineType") or not (pool.get("containerSpec") or {}).get("imageUri"):
                    raise ValueError(f"POST {path}: worker pool {i} needs a machine type and a container image")
                if bool(machine.get("acceleratorType")) != bool(machine.get("acceleratorCount")):
                    raise ValueError(f"POST {path}: worker pool {i}: an accelerator type goes with a count")
        return route, match

    def respond(self, method, route, match, query, body):
        parent = f"projects/{match['project']}/locations/{match['location']}"
        if method == "POST" and route[1].endswith("/customJobs$"):
            job_id = str(next(self._ids))
            job = {**body, "name": f"{parent}/customJobs/{job_id}", "state": "JOB_STATE_PENDING",
                   "createTime": "2026-12-02T00:00:00Z"}
            self.custom_jobs[job_id] = job
            return 200, job
        if route[1].endswith("/customJobs$"):  # list, with the label filter
            key, value = _LABEL_FILTER.fullmatch(query.get("filter", 'labels.x="*"')).groups()
            found = [j for j in self.custom_jobs.values() if (j.get("labels") or {}).get(key) == value]
            return 200, {"customJobs": found}
        job = self.custom_jobs.get(match["id"])
        if job is None:
            return 404, {"error": {"code": 404, "message": f"customJob {match['id']} not found", "status": "NOT_FOUND"}}
        if route[1].endswith(":cancel$"):
            self.cancelled.append(job["name"])
            job["state"] = "JOB_STATE_CANCELLING"
            return 200, {}
        plan = self.states.get(match["id"])
        if plan and job["state"] != "JOB_STATE_CANCELLING":
            state, error = plan.pop(0) if len(plan) > 1 else plan[0]
            job["state"] = state
            if error:
                job["error"] = {"code": 3, "message": error}
        return 200, job
