"""A strict test double of the Kubernetes API server's custom-objects paths for KServe InferenceServices,
on 127.0.0.1, that the real `kubernetes` client talks to through a kubeconfig.

It answers get, create and merge-patch the way the API server does (404 for a missing object, 409 for a
second create, resourceVersion and generation kept, RFC 7386 merge patches) and checks what it is sent
the way the server and KServe's webhook would: the bearer token, the content type, the query
parameters, object names (KServe's DNS-1035 rule) and every body against KServe's own v1beta1 CRD schema
(tests/contracts/), with fields the schema does not declare refused, as `--validate=strict` does.
Anything else is answered 400 (or 401) and recorded as rejected.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.http_double import JsonHandler, Served

SCHEMA = Path(__file__).parent / "contracts" / "kserve_inferenceservice_v1beta1.schema.json"
BASE = r"/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices"
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
WRITE_QUERY = {"dryRun", "fieldManager", "fieldValidation", "pretty"}
ROUTES = [
    ("GET", re.compile(BASE + r"/(?P<name>[^/]+)$"), {"pretty", "resourceVersion"}),
    ("POST", re.compile(BASE + r"$"), WRITE_QUERY),
    ("PATCH", re.compile(BASE + r"/(?P<name>[^/]+)$"), WRITE_QUERY | {"force"}),
]


def _closed(node):
    """The schema with `additionalProperties: false` wherever it lists properties and allows no others."""
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


@lru_cache(maxsize=1)
def strict_validator():
    import jsonschema

    schema = _closed(json.loads(SCHEMA.read_text(encoding="utf-8")))
    return jsonschema.Draft7Validator(schema)


def problems(doc: dict) -> list[str]:
    """What KServe's CRD schema (closed) finds wrong with an InferenceService; [] when it is valid."""
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
             for e in strict_validator().iter_errors(doc)]
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1" or doc.get("kind") != "InferenceService":
        found.append(f"not a serving.kserve.io/v1beta1 InferenceService: {doc.get('apiVersion')} {doc.get('kind')}")
    name = (doc.get("metadata") or {}).get("name", "")
    if not (NAME.fullmatch(name or "") and len(name) <= 63):
        found.append(f"metadata.name {name!r}: not a DNS-1035 label")
    return found


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class KubeDouble(Served):
    def __init__(self, token: str):
        self.token = token
        self.requests, self.rejected = [], []
        self.objects: dict[tuple[str, str], dict] = {}
        self._versions = itertools.count(1)
        double = self

        class Handler(JsonHandler):
            def do_PATCH(self):
                self.handle_request("PATCH")

            def handle_request(self, method):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = {"method": method, "path": url.path, "query": query,
                          "content_type": self.headers.get("Content-Type", ""),
                          "auth": self.headers.get("Authorization", "")}
                double.requests.append(record)
                if record["auth"] != f"Bearer {double.token}":
                    double.rejected.append(f"{method} {url.path}: wrong or missing bearer token")
                    return self.send_json(401, double.status(401, "Unauthorized", "Unauthorized"))
                try:
                    record["body"] = json.loads(raw) if raw else None
                    match = double.check(method, url.path, query, record["content_type"], record["body"])
                except ValueError as e:
                    record["rejected"] = str(e)
                    double.rejected.append(str(e))
                    return self.send_json(400, double.status(400, "BadRequest", str(e)))
                self.send_json(*double.respond(method, match, record["body"]))

        self.start(Handler)

    def stop(self) -> None:
        super().stop()
        self.server.server_close()  # a client still pointed here is refused, not left waiting

    @staticmethod
    def status(code: int, reason: str, message: str) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
                "code": code}

    ROUTES = ROUTES
    KIND = "an InferenceService"

    def check(self, method, path, query, content_type, body):
        """The route `path` takes (its match), refusing unknown routes and query parameters as the API
        server does; a write's content type and body are the subclass's `check_write`."""
        for m, rx, allowed in self.ROUTES:
            match = rx.match(path)
            if m != method or not match:
                continue
            if extra := set(query) - allowed:
                raise ValueError(f"{method} {path}: unexpected query parameters {sorted(extra)}")
            if method == "GET":
                if body:
                    raise ValueError(f"GET {path} takes no body")
            else:
                self.check_write(method, path, match, content_type, body)
            return match
        raise ValueError(f"{method} {path} is not {self.KIND} call this double knows")

    def check_write(self, method, path, match, content_type, body) -> None:
        if method == "PATCH" and content_type != "application/merge-patch+json":
            raise ValueError(f"PATCH {path}: this double takes merge patches only, not {content_type!r}")
        if method == "POST" and content_type != "application/json":
            raise ValueError(f"POST {path}: expected application/json, not {content_type!r}")
        if not isinstance(body, dict):
            raise ValueError(f"{method} {path}: expected an InferenceService object")
        if method == "POST" and (errors := problems(body)):
            raise ValueError(f"POST {path}: invalid InferenceService: {errors}")
        meta = body.get("metadata") or {}
        if meta.get("namespace", match["ns"]) != match["ns"]:
            raise ValueError(f"{method} {path}: metadata.namespace {meta['namespace']!r} is not the path's")
        if method == "PATCH" and meta.get("name", match["name"]) != match["name"]:
            raise ValueError(f"PATCH {path}: metadata.name {meta['name']!r} is not the path's")

    def created(self, ns: str, body: dict) -> dict:
        """A created object as the server stores it: namespace, uid, generation, resourceVersion."""
        stored = copy.deepcopy(body)
        stored["metadata"].update(namespace=ns, uid=f"uid-{len(self.objects) + 1}", generation=1,
                                  resourceVersion=str(next(self._versions)), creationTimestamp="2026-12-02T00:00:00Z")
        return stored

    def respond(self, method, match, body):
        ns = match["ns"]
        if method == "POST":
            key = (ns, body["metadata"]["name"])
            if key in self.objects:
                return 409, self.status(409, "AlreadyExists", f"inferenceservices {key[1]!r} already exists")
            stored = self.created(ns, body)
            self.objects[key] = stored
            return 201, stored
        key = (ns, match["name"])
        if key not in self.objects:
            return 404, self.status(404, "NotFound", f"inferenceservices {match['name']!r} not found")
        if method == "GET":
            return 200, self.objects[key]
        merged = merge_patch(self.objects[key], body)
        if errors := problems(merged):
            return 422, self.status(422, "Invalid", f"the patched InferenceService is invalid: {errors}")
        if merged.get("spec") != self.objects[key].get("spec"):
            merged["metadata"]["generation"] = self.objects[key]["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = merged
        return 200, merged
