"""Submitting runs and schedules to Kubeflow Pipelines (kfp.Client, v2beta1 REST) and Vertex AI
Pipelines (google-cloud-aiplatform). No secret is ever passed as a pipeline parameter or printed."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from imgclf.pipelines import kfp_seams
from imgclf.pipelines.remote import cron

TERMINAL_OK = {"SUCCEEDED"}


class SubmitError(RuntimeError):
    """A backend refused or a run ended badly; the message says which and why."""


@dataclass
class Submitted:
    run_id: str
    state: str = ""
    url: str = ""


@dataclass(frozen=True)
class RunRequest:
    """One run (or a schedule's runs) as either backend takes it: the compiled package and what goes
    with it. A backend ignores what it has no use for (KFP has no labels, Vertex no experiments)."""
    package: str
    name: str
    """The pipeline's name on the backend: KFP uploads the package under it; schedules are named after it."""
    params: dict
    pipeline_root: str | None = None
    experiment: str | None = None
    no_cache: bool = False
    service_account: str | None = None
    labels: dict = field(default_factory=dict)
    run_name: str = ""


class Backend(ABC):
    """What `imgclf submit | schedule | runs` needs from a pipelines service. The CLI chooses one class by
    name (BACKENDS) and never asks which one it holds: each difference between Kubeflow Pipelines and
    Vertex AI lives in its class."""

    name: ClassVar[str]
    check_cron: ClassVar  # raises ValueError for a cron expression this backend cannot schedule

    @classmethod
    @abstractmethod
    def from_args(cls, args: argparse.Namespace) -> Backend:
        """A client for the endpoint the command line names."""

    @classmethod  # noqa: B027 - not abstract: KFP takes every request
    def check_request(cls, args: argparse.Namespace) -> None:
        """Refuse, before anything is compiled or sent, what only this backend cannot take."""

    @classmethod
    def check_schedule(cls, args: argparse.Namespace) -> None:
        """Refuse, before anything is compiled or sent, a schedule this backend cannot create."""
        if args.cron:
            cls.check_cron(args.cron)

    @classmethod
    @abstractmethod
    def destination(cls, args: argparse.Namespace, labels: dict) -> dict:
        """Where a dry run would have sent the request (host and experiment, or project and region)."""

    @abstractmethod
    def submit(self, request: RunRequest, wait: bool, timeout: int) -> Submitted: ...

    @abstractmethod
    def create_schedule(self, request: RunRequest, cron_expr: str | None, interval_s: int | None,
                        max_concurrency: int, latest: bool = False) -> str: ...

    @abstractmethod
    def list_schedules(self, experiment: str | None) -> list[dict]: ...

    @abstractmethod
    def delete_schedule(self, schedule_id: str) -> None: ...

    @abstractmethod
    def list_runs(self, experiment: str | None, limit: int) -> list[dict]: ...

    @abstractmethod
    def get_run(self, run_id: str) -> dict: ...

    @abstractmethod
    def logs(self, run_id: str, namespace: str | None) -> list[dict]: ...

    @abstractmethod
    def cancel(self, run_id: str) -> None: ...


def _version_name(package: str) -> str:
    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    return f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{digest}"


def pipeline_name(package: str) -> str:
    """The compiled pipeline's own name (imgclf-training, imgclf-predict): what its runs are called."""
    import yaml

    with open(package, encoding="utf-8") as f:
        return next(yaml.safe_load_all(f))["pipelineInfo"]["name"]


def without_cache(package: str, out_dir: str) -> str:
    """A copy of a compiled pipeline, written into `out_dir`, with caching off for every task (the
    platform document kept). Never beside `package`: that may be the user's file."""
    import yaml

    with open(package, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    for component in [docs[0]["root"], *docs[0].get("components", {}).values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            task["cachingOptions"] = {}
    out = os.path.join(out_dir, "pipeline-nocache.yaml")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return out


def _api_error(e: Exception) -> str:
    body = getattr(e, "body", None)
    return f"{getattr(e, 'status', '')} {getattr(e, 'reason', '')}: {body or e}".strip()


class Kfp(Backend):
    """Kubeflow Pipelines. `host=None` uses in-cluster credentials (a pod's service account)."""

    name = "kfp"
    check_cron = staticmethod(cron.for_kfp)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Kfp:
        return cls(args.host, token=args.token, namespace=args.namespace)

    @classmethod
    def destination(cls, args: argparse.Namespace, labels: dict) -> dict:
        return {"host": args.host or "in-cluster", "experiment": args.experiment, "namespace": args.namespace or ""}

    def __init__(self, host: str | None, token: str | None = None, namespace: str | None = None):
        import kfp

        self.namespace = namespace
        try:
            self.client = kfp.Client(host=host, existing_token=token or os.environ.get("IMGCLF_KFP_TOKEN"),
                                     namespace=namespace or "kubeflow")
        except Exception as e:  # noqa: BLE001 - kfp raises many types for an unreachable host
            raise SubmitError(f"cannot reach Kubeflow Pipelines at {host or 'in-cluster'}: {e}") from None

    def ensure_pipeline(self, package: str, name: str) -> tuple[str, str]:
        """(pipeline_id, version_id): upload the pipeline, or a new version of it if it exists."""
        from kfp_server_api.exceptions import ApiException

        try:
            pid = self.client.get_pipeline_id(name)
            if pid is None:
                pid = self.client.upload_pipeline(package, pipeline_name=name).pipeline_id
                versions = self.client.list_pipeline_versions(pid, sort_by="created_at desc", page_size=1)
                return pid, versions.pipeline_versions[0].pipeline_version_id
            version = self.client.upload_pipeline_version(package, pipeline_version_name=_version_name(package),
                                                          pipeline_id=pid)
            return pid, version.pipeline_version_id
        except ApiException as e:
            raise SubmitError(f"uploading pipeline {name!r} failed: {_api_error(e)}") from None

    def experiment_id(self, name: str) -> str:
        try:
            return self.client.get_experiment(experiment_name=name, namespace=self.namespace).experiment_id
        except ValueError:
            return self.client.create_experiment(name, namespace=self.namespace).experiment_id

    def submit(self, request: RunRequest, wait: bool, timeout: int) -> Submitted:
        r = request
        # kfp.Client only applies enable_caching to a package it sends itself, not to an uploaded
        # version: the version must carry caching off.
        with tempfile.TemporaryDirectory() as tmp:
            pid, vid = self.ensure_pipeline(without_cache(r.package, tmp) if r.no_cache else r.package, r.name)
        run = self.client.run_pipeline(self.experiment_id(r.experiment),
                                       r.run_name or f"{r.name} {time.strftime('%Y-%m-%d %H:%M')}",
                                       params=r.params, pipeline_id=pid, version_id=vid,
                                       pipeline_root=r.pipeline_root, service_account=r.service_account)
        result = Submitted(run.run_id, str(run.state or ""), self.run_url(run.run_id))
        if wait:
            done = self.client.wait_for_run_completion(run.run_id, timeout=timeout, sleep_duration=5)
            result.state = str(done.state)
            if result.state not in TERMINAL_OK:
                raise SubmitError(f"run {run.run_id} ended {result.state}: {result.url}")
        return result

    def create_schedule(self, request: RunRequest, cron_expr: str | None, interval_s: int | None,
                        max_concurrency: int, latest: bool = False) -> str:
        """A recurring run, never catching up, on the version uploaded now: a later ad-hoc `submit`
        (which uploads its own version, say with --gpus 0 or caching off) must not change what scheduled
        retraining runs. `latest` follows the newest version instead, as KFP does without a version id."""
        import kfp_server_api as api

        if bool(cron_expr) == bool(interval_s):
            raise ValueError("give exactly one of --cron or --interval")
        trigger = api.V2beta1Trigger(cron_schedule=api.V2beta1CronSchedule(cron=cron.for_kfp(cron_expr))) \
            if cron_expr else api.V2beta1Trigger(periodic_schedule=api.V2beta1PeriodicSchedule(interval_second=interval_s))
        r = request
        pid, vid = self.ensure_pipeline(r.package, r.name)
        body = api.V2beta1RecurringRun(
            display_name=f"{r.name} schedule", experiment_id=self.experiment_id(r.experiment),
            pipeline_version_reference=api.V2beta1PipelineVersionReference(
                pipeline_id=pid, pipeline_version_id=None if latest else vid),
            runtime_config=api.V2beta1RuntimeConfig(parameters=r.params, pipeline_root=r.pipeline_root),
            max_concurrency=max_concurrency, no_catchup=True, trigger=trigger, mode="ENABLE",
            service_account=r.service_account)
        try:
            return kfp_seams.create_recurring_run(self.client, body)
        except api.exceptions.ApiException as e:
            raise SubmitError(f"creating the schedule failed: {_api_error(e)}") from None

    def list_schedules(self, experiment: str | None) -> list[dict]:
        eid = self.experiment_id(experiment) if experiment else None
        runs = self.client.list_recurring_runs(experiment_id=eid, page_size=100).recurring_runs or []
        return [{"id": r.recurring_run_id, "name": r.display_name, "status": str(r.status or ""),
                 "trigger": (r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule
                             else f"every {r.trigger.periodic_schedule.interval_second}s" if r.trigger else "")}
                for r in runs]

    def delete_schedule(self, schedule_id: str) -> None:
        from kfp_server_api.exceptions import ApiException

        try:
            self.client.delete_recurring_run(schedule_id)
        except ApiException as e:
            raise SubmitError(f"deleting schedule {schedule_id} failed: {_api_error(e)}") from None

    def run_url(self, run_id: str) -> str:
        return kfp_seams.run_url(self.client, run_id)

    def _call(self, what: str, fn, *args, **kwargs):
        from kfp_server_api.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            raise SubmitError(f"{what} failed: {_api_error(e)}") from None

    def list_runs(self, experiment: str | None, limit: int) -> list[dict]:
        eid = self.experiment_id(experiment) if experiment else None
        runs = self._call("listing runs", self.client.list_runs, page_size=limit, sort_by="created_at desc",
                          experiment_id=eid, namespace=self.namespace).runs or []
        return [self._run_row(r) for r in runs]

    def _run_row(self, r) -> dict:
        return {"id": r.run_id, "name": r.display_name, "state": str(r.state or ""),
                "created": _time(r.created_at), "finished": _time(r.finished_at), "url": self.run_url(r.run_id),
                "error": (r.error.message if r.error and r.error.message else "")}

    def get_run(self, run_id: str) -> dict:
        r = self._call(f"reading run {run_id}", self.client.get_run, run_id)
        row = self._run_row(r)
        row["parameters"] = dict((r.runtime_config.parameters if r.runtime_config else None) or {})
        tasks = (r.run_details.task_details if r.run_details else None) or []
        row["tasks"] = [{"name": t.display_name, "state": str(t.state or ""), "started": _time(t.start_time),
                         "finished": _time(t.end_time), "error": t.error.message if t.error and t.error.message else "",
                         "pods": [c.pod_name for c in (t.child_tasks or []) if c.pod_name]} for t in tasks]
        return row

    def logs(self, run_id: str, namespace: str | None) -> list[dict]:
        """Each task's state and error, and its pods' logs when this machine can reach the cluster
        (kubeconfig or in-cluster): the KFP API itself serves no logs."""
        run = self.get_run(run_id)
        core = _kubernetes_core()
        for task in run["tasks"]:
            task["logs"] = {pod: (_pod_log(core, namespace or self.namespace or "kubeflow", pod) if core else
                                  f"(no cluster access here: kubectl logs -n {namespace or self.namespace or 'kubeflow'} "
                                  f"{pod} -c main)") for pod in task["pods"]}
        return run["tasks"]

    def cancel(self, run_id: str) -> None:
        self._call(f"cancelling run {run_id}", self.client.terminate_run, run_id)


def _time(value) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        return value
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)


def _kubernetes_core():
    """A CoreV1Api when in-cluster credentials or a kubeconfig exist, else None. KUBECONFIG is read now:
    the client's own default is whatever it was when kubernetes was first imported."""
    from kubernetes import client, config

    from imgclf.components.deploy.kserve import cluster_configured

    if not cluster_configured():
        return None
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"))
    except (config.ConfigException, OSError, TypeError, ValueError):
        return None
    return client.CoreV1Api()


def _pod_log(core, namespace: str, pod: str) -> str:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod, namespace, container="main", tail_lines=200,
                                            _request_timeout=30)
    except ApiException as e:
        return f"(pod log unavailable: {e.status} {e.reason})"
    except (urllib3.exceptions.HTTPError, OSError) as e:  # the cluster is not reachable from here
        return f"(pod log unavailable: {type(e).__name__}: {e})"


class Vertex(Backend):
    """Vertex AI Pipelines through google-cloud-aiplatform; credentials from the standard Google chain."""

    name = "vertex"
    check_cron = staticmethod(cron.for_vertex)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Vertex:
        if not args.project or not args.region:
            raise ValueError("--backend vertex needs --project and --region")
        return cls(args.project, args.region, api_endpoint=args.api_endpoint)

    @classmethod
    def check_request(cls, args: argparse.Namespace) -> None:
        if not (args.pipeline_root or "").startswith("gs://"):
            raise ValueError(f"Vertex AI needs a gs:// pipeline root (--pipeline-root), got {args.pipeline_root!r}")

    @classmethod
    def check_schedule(cls, args: argparse.Namespace) -> None:
        if args.interval:
            raise ValueError("Vertex schedules are cron only: use --cron")
        if args.latest:
            raise ValueError("--latest is KFP only: a Vertex schedule carries its own copy of the pipeline")
        super().check_schedule(args)

    @classmethod
    def destination(cls, args: argparse.Namespace, labels: dict) -> dict:
        return {"project": args.project, "region": args.region, "labels": labels}

    def __init__(self, project: str, region: str, api_endpoint: str | None = None, credentials=None):
        from google.cloud import aiplatform

        self.aiplatform = aiplatform
        kwargs = {"project": project, "location": region, "credentials": credentials}
        if api_endpoint:  # e.g. a Private Service Connect endpoint, or a test double over REST
            kwargs.update(api_endpoint=api_endpoint, api_transport="rest")
        aiplatform.init(**kwargs)
        self.project, self.region = project, region

    def _job(self, package: str, params: dict, pipeline_root: str, no_cache: bool, labels: dict, run_name: str = ""):
        if not pipeline_root.startswith("gs://"):
            raise ValueError(f"Vertex AI needs a gs:// pipeline root, got {pipeline_root!r}")
        return self.aiplatform.PipelineJob(display_name=run_name or pipeline_name(package), template_path=package,
                                           pipeline_root=pipeline_root, parameter_values=params,
                                           enable_caching=False if no_cache else None, labels=labels or None)

    def submit(self, request: RunRequest, wait: bool, timeout: int) -> Submitted:
        """`timeout` is KFP's: aiplatform's wait follows the job to its end."""
        from google.api_core import exceptions

        r = request
        job = self._job(r.package, r.params, r.pipeline_root or "", r.no_cache, r.labels, r.run_name)
        try:
            job.submit(service_account=r.service_account)
        except exceptions.GoogleAPICallError as e:
            raise SubmitError(f"Vertex AI refused the pipeline job: {e}") from None
        result = Submitted(job.resource_name, job.state.name, self.console_url(job.resource_name))
        if wait:
            try:
                job.wait()
            except RuntimeError as e:  # aiplatform raises on a failed job
                raise SubmitError(f"pipeline job {job.resource_name} failed: {e}") from None
            result.state = job.state.name
        return result

    def create_schedule(self, request: RunRequest, cron_expr: str | None, interval_s: int | None,
                        max_concurrency: int, latest: bool = False) -> str:
        r = request
        job = self._job(r.package, r.params, r.pipeline_root or "", False, r.labels)
        schedule = job.create_schedule(cron=cron.for_vertex(cron_expr), display_name=f"{r.name}-schedule",
                                       max_concurrent_run_count=max_concurrency, service_account=r.service_account)
        return schedule.resource_name

    def list_schedules(self, experiment: str | None = None) -> list[dict]:
        """Every schedule of the project and region: Vertex has no experiments to filter by."""
        return [{"id": s.resource_name, "name": s.display_name, "status": s.state.name if s.state else "",
                 "trigger": s.cron} for s in self.aiplatform.PipelineJobSchedule.list()]

    def delete_schedule(self, schedule_id: str) -> None:
        from google.api_core import exceptions

        try:
            self.aiplatform.PipelineJobSchedule.get(schedule_id).delete()
        except exceptions.GoogleAPICallError as e:
            raise SubmitError(f"deleting schedule {schedule_id} failed: {e}") from None

    def console_url(self, resource_name: str) -> str:
        job_id = resource_name.rsplit("/", 1)[-1]
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/runs/{job_id}"
                f"?project={self.project}")

    def _resource(self, run_id: str) -> str:
        return run_id if run_id.startswith("projects/") else \
            f"projects/{self.project}/locations/{self.region}/pipelineJobs/{run_id}"

    def _get(self, run_id: str):
        from google.api_core import exceptions

        try:
            return self.aiplatform.PipelineJob.get(self._resource(run_id))
        except exceptions.GoogleAPICallError as e:
            raise SubmitError(f"reading pipeline job {run_id} failed: {e}") from None

    def _run_row(self, job) -> dict:
        g = job.gca_resource
        return {"id": g.name, "name": g.display_name, "state": g.state.name, "created": _time(g.create_time),
                "finished": _time(g.end_time), "url": self.console_url(g.name),
                "error": g.error.message if g.error and g.error.message else ""}

    def list_runs(self, experiment: str | None, limit: int) -> list[dict]:
        from google.api_core import exceptions

        try:
            jobs = self.aiplatform.PipelineJob.list(order_by="create_time desc")
        except exceptions.GoogleAPICallError as e:
            raise SubmitError(f"listing pipeline jobs failed: {e}") from None
        return [self._run_row(j) for j in jobs[:limit]]

    def get_run(self, run_id: str) -> dict:
        job = self._get(run_id)
        row = self._run_row(job)
        g = job.gca_resource
        row["parameters"] = {k: _proto_value(v) for k, v in g.runtime_config.parameter_values.items()}
        row["tasks"] = [{"name": t.task_name, "state": t.state.name, "started": _time(t.start_time),
                         "finished": _time(t.end_time), "error": t.error.message if t.error and t.error.message else "",
                         "pods": []} for t in g.job_detail.task_details]
        return row

    def logs(self, run_id: str, namespace: str | None = None) -> list[dict]:
        """Each task's state and error; the logs themselves live in Cloud Logging (the filter given)."""
        tasks = self.get_run(run_id)["tasks"]
        job_id = self._resource(run_id).rsplit("/", 1)[-1]
        for task in tasks:
            task["logs"] = {"cloud-logging": f"gcloud logging read --project {self.project} "
                                             f"'resource.type=\"aiplatform.googleapis.com/PipelineJob\" "
                                             f"AND labels.pipeline_job_id=\"{job_id}\"'"}
        return tasks

    def cancel(self, run_id: str) -> None:
        from google.api_core import exceptions

        try:
            self._get(run_id).cancel()
        except exceptions.GoogleAPICallError as e:
            raise SubmitError(f"cancelling pipeline job {run_id} failed: {e}") from None


def _proto_value(v):
    """A Vertex runtime parameter (a protobuf Value) as plain Python."""
    if isinstance(v, (str, int, float, bool)) or v is None:   # proto-plus unwraps most of them
        return v
    from google.protobuf import json_format

    return json_format.MessageToDict(v._pb if hasattr(v, "_pb") else v)


BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (Kfp, Vertex)}
"""Every backend by its --backend name: the CLI's choices and its one lookup."""
