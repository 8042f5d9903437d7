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

from google.cloud.aiplatform_v1.types import CancelPipelineJobRequest, PipelineJob, Schedule
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
