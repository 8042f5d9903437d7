"""A test double of the Kubeflow Pipelines v2beta1 REST API on 127.0.0.1.

Every request is checked against the official swagger spec (shared/contracts): the path and method
must exist, query parameters must be declared, and JSON bodies may only carry declared fields of the
declared types. A request that does not match is answered 400 and recorded as rejected, so a client
that drifts from the API fails the test. Behind the check sits just enough state (pipelines,
versions, experiments, runs, recurring runs) for kfp.Client to work.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.http_double import JsonHandler, Served

_NAME = "kfp_v2beta1.swagger.json"
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "contracts" / _NAME
SPEC = _SHARED if _SHARED.exists() else Path(__file__).resolve().parent / "contracts" / _NAME


class SpecError(Exception):
    pass


class Swagger:
    def __init__(self, path: Path = SPEC):
        self.spec = json.loads(path.read_text())
        self.routes = []
        for template, ops in self.spec["paths"].items():
            pattern = re.sub(r"\{[^}]+\}", "([^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
            self.routes.append((re.compile(f"^{pattern}$"), template, ops))

    def operation(self, method: str, path: str) -> tuple[str, dict]:
        for rx, template, ops in self.routes:
            if rx.match(path) and method.lower() in ops:
                return template, ops[method.lower()]
        raise SpecError(f"{method} {path} is not in the KFP v2beta1 API")

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.spec["definitions"][schema["$ref"].split("/")[-1]]
        return schema

    def check_value(self, value, schema: dict, where: str) -> None:
        schema = self._resolve(schema)
        kind = schema.get("type", "object")
        if "enum" in schema and value not in schema["enum"]:
            raise SpecError(f"{where}: {value!r} is not one of {schema['enum']}")
        if kind == "object":
            if not isinstance(value, dict):
                raise SpecError(f"{where}: expected an object")
            props, extra = schema.get("properties", {}), schema.get("additionalProperties")
            for k, v in value.items():
                if k in props:
                    self.check_value(v, props[k], f"{where}.{k}")
                elif extra is None and props:
                    raise SpecError(f"{where}: unknown field {k!r}")
                elif isinstance(extra, dict) and extra:
                    self.check_value(v, extra, f"{where}.{k}")
        elif kind == "array":
            if not isinstance(value, list):
                raise SpecError(f"{where}: expected an array")
            for i, v in enumerate(value):
                self.check_value(v, schema.get("items", {}), f"{where}[{i}]")
        elif kind == "string":
            # proto-JSON: int64 fields are declared as strings but clients send integers
            ok = isinstance(value, str) or (schema.get("format") in ("int64", "uint64") and isinstance(value, int)
                                            and not isinstance(value, bool))
            if not ok:
                raise SpecError(f"{where}: expected a string, got {value!r}")
        elif kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        elif kind == "number" and not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        elif kind == "boolean" and not isinstance(value, bool):
            raise SpecError(f"{where}: expected a boolean, got {value!r}")

    def check(self, method: str, path: str, query: dict, body, form_fields: set[str]) -> str:
        template, op = self.operation(method, path)
        params = op.get("parameters", [])
        declared_query = {p["name"] for p in params if p["in"] == "query"}
        for name in query:
            if name not in declared_query:
                raise SpecError(f"{method} {template}: undeclared query parameter {name!r}")
        body_param = next((p for p in params if p["in"] == "body"), None)
        if body is not None:
            if body_param is None:
                raise SpecError(f"{method} {template} takes no body")
            self.check_value(body, body_param["schema"], "body")
        elif body_param is not None and body_param.get("required"):
            raise SpecError(f"{method} {template}: missing required body")
        declared_form = {p["name"] for p in params if p["in"] == "formData"}
        for name in form_fields:
            if name not in declared_form:
                raise SpecError(f"{method} {template}: undeclared form field {name!r}")
        for p in params:
            if p["in"] == "formData" and p.get("required") and p["name"] not in form_fields:
                raise SpecError(f"{method} {template}: missing form field {p['name']!r}")
        return template


class KfpDouble(Served):
    """Start with `KfpDouble()`; `.url` for kfp.Client(host=...); `.requests` and `.rejected` record
    traffic; `.final_state` is what runs end in (SUCCEEDED or FAILED)."""

    def __init__(self):
        self.swagger = Swagger()
        self.requests: list[dict] = []
        self.rejected: list[str] = []
        self.final_state = "SUCCEEDED"
        self.pipelines, self.versions, self.experiments, self.runs, self.recurring = {}, {}, {}, {}, {}
        self._ids = (f"id-{i}" for i in itertools.count(1))
        self._lock = threading.Lock()
        double = self

        class Handler(JsonHandler):
            def handle_request(self, method):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body, form = None, {}
                ctype = self.headers.get("Content-Type", "")
                if raw and ctype.startswith("multipart/form-data"):
                    msg = BytesParser(policy=policy.default).parsebytes(
                        f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
                    form = {part.get_param("name", header="content-disposition"): part
                            for part in msg.iter_parts()}
                elif raw:
                    body = json.loads(raw)
                record = {"method": method, "path": url.path, "query": query, "body": body,
                          "form": sorted(form), "auth": self.headers.get("Authorization")}
                try:
                    template = double.swagger.check(method, url.path, query, body, set(form))
                except SpecError as e:
                    double.rejected.append(str(e))
                    record["rejected"] = str(e)
                    double.requests.append(record)
                    return self.send_json(400, {"error": str(e), "code": 3, "message": str(e)})
                double.requests.append(record)
                with double._lock:
                    status, payload = double.route(method, template, url.path, query, body, form)
                self.send_json(status, payload)


        self.start(Handler)

    # --- behaviour ---------------------------------------------------------------------------
    def _now(self):
        return "2026-11-21T12:00:00Z"

    def _task_details(self, run) -> list[dict]:
        """What KFP reports per task once a run ends: train fails when the run does."""
        failed = self.final_state == "FAILED"
        return [{"run_id": run["run_id"], "task_id": f"{run['run_id']}-{n}", "display_name": n,
                 "state": "FAILED" if failed and n == "train" else "SUCCEEDED",
                 "create_time": self._now(), "start_time": self._now(), "end_time": self._now(),
                 **({"error": {"code": 2, "message": "train: loss diverged"}} if failed and n == "train" else {}),
                 "child_tasks": [{"pod_name": f"imgclf-training-{run['run_id']}-{n}-driver"}]}
                for n in ("ingest", "preprocess", "train")]

    def _filter_name(self, query) -> str | None:
        if "filter" not in query:
            return None
        f = json.loads(query["filter"])
        for pred in f.get("predicates", []):
            if pred.get("key") in ("name", "display_name"):
                return pred.get("string_value") or pred.get("stringValue")
        return None

    def _list_named(self, store: dict, key: str, query) -> dict:
        name = self._filter_name(query)
        found = [x for x in store.values() if name is None or x["display_name"] == name]
        return {key: found, "total_size": len(found)}

    def route(self, method, template, path, query, body, form):
        parts = path.rstrip("/").split("/")
        if template == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False, "pipeline_store_driver": "database"}
        if template == "/apis/v2beta1/pipelines/upload" and method == "POST":
            name = query.get("name") or form["uploadfile"].get_filename()
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, {"error": f"pipeline {name} exists", "code": 6, "message": "already exists"}
            pid = next(self._ids)
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "created_at": self._now()}
            vid = next(self._ids)
            self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name,
                                  "created_at": self._now()}
            return 200, self.pipelines[pid]
        if template == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            pid = query.get("pipelineid")
            if pid not in self.pipelines:
                return 404, {"error": "no such pipeline", "code": 5, "message": "not found"}
            vid = next(self._ids)
            self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": query.get("name"),
                                  "created_at": self._now()}
            return 200, self.versions[vid]
        if template == "/apis/v2beta1/pipelines" and method == "GET":
            return 200, self._list_named(self.pipelines, "pipelines", query)
        if template == "/apis/v2beta1/pipelines/{pipeline_id}/versions" and method == "GET":
            vs = [v for v in self.versions.values() if v["pipeline_id"] == parts[4]]
            vs.sort(key=lambda v: int(v["pipeline_version_id"].split("-")[1]), reverse=True)
            return 200, {"pipeline_versions": vs, "total_size": len(vs)}
        if template == "/apis/v2beta1/experiments" and method == "POST":
            eid = next(self._ids)
            self.experiments[eid] = {"experiment_id": eid, "display_name": body["display_name"],
                                     "created_at": self._now(), "storage_state": "AVAILABLE"}
            return 200, self.experiments[eid]
        if template == "/apis/v2beta1/experiments" and method == "GET":
            return 200, self._list_named(self.experiments, "experiments", query)
        if template == "/apis/v2beta1/experiments/{experiment_id}" and method == "GET":
            e = self.experiments.get(parts[-1])
            return (200, e) if e else (404, {"error": "not found", "code": 5, "message": "not found"})
        if template == "/apis/v2beta1/runs" and method == "POST":
            rid = next(self._ids)
            self.runs[rid] = {**body, "run_id": rid, "state": "PENDING", "created_at": self._now(), "_polls": 0}
            return 200, {k: v for k, v in self.runs[rid].items() if not k.startswith("_")}
        if template == "/apis/v2beta1/runs/{run_id}" and method == "GET":
            run = self.runs.get(parts[-1])
            if not run:
                return 404, {"error": "not found", "code": 5, "message": "not found"}
            run["_polls"] += 1
            if run["state"] not in ("CANCELING", "CANCELED"):
                run["state"] = "RUNNING" if run["_polls"] < 2 else self.final_state
            if run["state"] in ("SUCCEEDED", "FAILED"):
                run["finished_at"] = self._now()
                run["run_details"] = {"task_details": self._task_details(run)}
            return 200, {k: v for k, v in run.items() if not k.startswith("_")}
        if template == "/apis/v2beta1/runs" and method == "GET":
            found = [r for r in self.runs.values()
                     if "experiment_id" not in query or r.get("experiment_id") == query["experiment_id"]]
            if query.get("sort_by") == "created_at desc":
                found.reverse()
            found = found[:int(query.get("page_size", 10))]
            return 200, {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in found],
                         "total_size": len(found)}
        if template == "/apis/v2beta1/runs/{run_id}:terminate" and method == "POST":
            run = self.runs.get(parts[-1].removesuffix(":terminate"))
            if not run:
                return 404, {"error": "not found", "code": 5, "message": "not found"}
            run["state"] = "CANCELING"
            return 200, {}
        if template == "/apis/v2beta1/recurringruns" and method == "POST":
            rid = next(self._ids)
            self.recurring[rid] = {**body, "recurring_run_id": rid, "status": "ENABLED", "created_at": self._now()}
            return 200, self.recurring[rid]
        if template == "/apis/v2beta1/recurringruns" and method == "GET":
            found = [r for r in self.recurring.values()
                     if "experiment_id" not in query or r.get("experiment_id") == query["experiment_id"]]
            return 200, {"recurringRuns": found, "total_size": len(found)}
        if template == "/apis/v2beta1/recurringruns/{recurring_run_id}":
            if parts[-1] not in self.recurring:
                return 404, {"error": "not found", "code": 5, "message": f"recurring run {parts[-1]} not found"}
            if method == "DELETE":
                del self.recurring[parts[-1]]
                return 200, {}
            return 200, self.recurring[parts[-1]]
        return 501, {"error": f"{method} {template} not implemented by the double", "code": 12, "message": "unimplemented"}
