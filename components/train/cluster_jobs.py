"""Train on N workers of the engine the pipeline already runs on: the train task (train_workers > 1 on
KFP or Vertex AI) launches the workers, waits for them, and brings the chief's model back as its output.

- KFP: a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1) naming the `imgclf-workers`
  ClusterTrainingRuntime (containers/trainer-runtime.yaml, installed once per cluster). Trainer runs it
  as a JobSet of N indexed pods. Each pod gets IMGCLF_WORKER_HOSTS, every pod's stable JobSet hostname
  (`<trainjob>-node-0-<i>.<trainjob>:PORT`, the same list everywhere), and Kubernetes gives each its
  JOB_COMPLETION_INDEX; that is what components/train/distributed.py reads.
- Vertex AI: a CustomJob with two worker pools (the chief, then N-1 workers) of the same machine type,
  accelerators, image and command; Vertex sets TF_CONFIG on each replica.

Why the task launches the job itself rather than a compile-time operator: on KFP the TrainJob is a
custom resource no KFP component creates (the KServe deploy step is the same pattern), and on Vertex
Google's own operator (google-cloud-pipeline-components' create_custom_training_job_from_component)
requires google-cloud-aiplatform<2 while we pin 2.7.0. One path for both keeps the worker's command,
the outputs and the retry behaviour the same.

Every worker runs the task's image with the command `python3 -m imgclf.components train` and the same
options, reading the records from the artifact store (the records artifact's URI), backing up to the
task's backup URI (a retried task resumes from it, as a single-node task does) and, on the chief,
writing the model and curves under `<model URI>.workers/`; the task then copies them into its outputs.

The cluster settings (image, CPU/memory, GPUs, node selector, secret *names*, machine type) are fixed
when the pipeline is compiled (pipelines/definitions/platform.py) and reach the task as one JSON
environment variable, IMGCLF_TRAIN_CLUSTER. No credential is ever in it, in a manifest or in a log:
the workers get the S3 keys from the same Kubernetes secret the task has (by reference), Google
credentials from their service account; the task talks to the API with its in-cluster credentials or
a kubeconfig (KFP) and the standard Google chain (Vertex).

A job is named after the model's output URI, so a retried attempt of the same task finds its
predecessor's job: a running one is waited on again, a finished-and-succeeded one is taken as done, a
failed or different one is replaced. On our own failure (a timeout, the task cancelled, an API error)
the job is deleted (KFP) or cancelled (Vertex), so no worker keeps a GPU; a job that failed by itself is
left in place for its logs and replaced by the next attempt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from imgclf.components.contracts import TRAIN_FILE
from imgclf.components.lib import kube, quantity, storage
from imgclf.components.train.distributed import stopped_by_sigterm

SETTINGS_ENV = "IMGCLF_TRAIN_CLUSTER"
"""The compiled pipeline's cluster settings for the train task (JSON of ClusterSettings)."""
HOSTS_ENV = "IMGCLF_WORKER_HOSTS"
"""host:port of every worker, comma-separated, in worker order, identical on all workers."""
PORT = 2222
"""The port each worker listens on for the others (each worker has its own pod or machine)."""
TARGETS = ("kfp", "vertex")
COMMAND = ["python3", "-m", "imgclf.components", "train"]
WORKER_ENV = {"KERAS_BACKEND": "jax"}
"""Every worker's: multi-worker training runs Keras on JAX (see distributed.py for why)."""
PASSED_ENV = ("IMGCLF_S3_ENDPOINT_URL", "IMGCLF_HTTP_AUTH_HOSTS", "AWS_REGION", "AWS_DEFAULT_REGION")
"""Non-secret settings of the task's own environment that its workers get too (when set)."""

# Kubeflow Trainer v2.
GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME = "imgclf-workers"
NODE = "node"
"""The runtime's trainer replicated job and container name (Trainer's convention; its hostnames use it)."""
MANAGER = "imgclf.io/train"
"""Our entry in a TrainJob's runtimePatches (Trainer keys patches by manager)."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "imgclf"}
MAX_ARGS = 128
"""Trainer's limit on trainer.args (and Vertex has none lower)."""

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL = "imgclf-train"
"""The CustomJob label (the job name's hash) a retried attempt finds its predecessor's job by."""
VERTEX_DONE = {"JOB_STATE_SUCCEEDED"}
VERTEX_FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


class ClusterError(RuntimeError):
    """The workers could not be run, or did not finish; the message says which job and why."""


class WorkersFailed(ClusterError):
    """The job itself ended failed (a worker failed, its deadline passed): it is left for its logs."""


@dataclass(frozen=True)
class ClusterSettings:
    """What the workers run on, fixed at compile time; never a credential (secrets by name only)."""
    target: str
    image: str
    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    gpus: int = 0
    accelerator: str = ""
    """KFP: the GPU resource name (nvidia.com/gpu); Vertex: the accelerator type (NVIDIA_L4)."""
    node_selector: tuple = ()
    """KFP: (label, value) for the workers' nodes."""
    s3_secret: str = ""
    """KFP: the secret whose keys become AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (as on the task)."""
    s3_secret_keys: tuple = ("accesskey", "secretkey")
    runtime: str = RUNTIME
    """KFP: the ClusterTrainingRuntime the TrainJob names."""
    machine_type: str = ""
    """Vertex: every worker's machine type."""
    service_account: str = ""
    """Vertex: the workers' service account ("" : the task's own, when it can be told)."""
    vertex_api_endpoint: str = ""
    """Vertex: another API endpoint (a private one); "" for the region's."""
    timeout_s: int = 7 * 24 * 3600
    """The longest the workers may run (TrainJob activeDeadlineSeconds, CustomJob timeout)."""

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"{SETTINGS_ENV}: target must be one of {TARGETS}, got {self.target!r}")
        if not self.image:
            raise ValueError(f"{SETTINGS_ENV}: no image")
        if self.gpus < 0 or (self.gpus and not self.accelerator):
            raise ValueError(f"{SETTINGS_ENV}: {self.gpus} GPUs of accelerator {self.accelerator!r}")
        if self.node_selector and len(self.node_selector) != 2:
            raise ValueError(f"{SETTINGS_ENV}: node_selector is (label, value), got {self.node_selector!r}")
        if not _SUBDOMAIN.fullmatch(self.runtime) or len(self.runtime) > 253:
            raise ValueError(f"Trainer runtime {self.runtime!r}: not a Kubernetes object name (a DNS-1123 subdomain)")
        if self.timeout_s < 1:
            raise ValueError(f"{SETTINGS_ENV}: timeout_s must be positive")

    def to_env(self) -> str:
        """Compact JSON of the fields that differ from their defaults (what a reader of the YAML needs)."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default}
        return json.dumps(given, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_env(cls, environ=None) -> ClusterSettings | None:
        """The settings the compiled pipeline gave this task; None where it gave none (kfp.local, a shell)."""
        text = (os.environ if environ is None else environ).get(SETTINGS_ENV, "")
        if not text:
            return None
        try:
            d = json.loads(text)
            fields = {f.name for f in dataclasses.fields(cls)}
            if not isinstance(d, dict) or set(d) - fields:
                raise ValueError(f"unknown fields {sorted(set(d) - fields) if isinstance(d, dict) else d!r}")
            for k in ("node_selector", "s3_secret_keys"):
                if k in d:
                    d[k] = tuple(d[k])
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{SETTINGS_ENV} is not the settings a compiled pipeline sets: {e}") from None


# --- what every worker runs --------------------------------------------------------------------------

def staging_uri(model_uri: str) -> str:
    """Where the chief writes the model and curves: beside the task's output, like its backup."""
    return model_uri.rstrip("/") + ".workers"


def worker_args(options: dict, records_uri: str, model_uri: str, backup_uri: str) -> list[str]:
    """The arguments after `python3 -m imgclf.components train` for every worker: the records, the
    chief's outputs under staging_uri(model_uri), the shared backup, then every train option as given
    (each declared option's flag; booleans as --x / --no-x)."""
    from imgclf.components.train.options import TrainOptions

    staging = staging_uri(model_uri)
    args = ["--dataset-dir", records_uri, "--model-dir", storage.join(staging, "model"),
            "--backup-uri", backup_uri, "--curves-html", storage.join(staging, "curves.html")]
    declared = {o.name: o for o in TrainOptions.declared()}
    if unknown := sorted(set(options) - set(declared)):
        raise ValueError(f"not train options: {unknown}")
    for name, o in declared.items():
        if name not in options:
            continue
        value = options[name]
        if o.type is bool:
            args.append(o.flag if value else "--no-" + o.flag[2:])
        else:
            args += [o.flag, str(value)]
    return args


def job_name(model_uri: str) -> str:
    """One name per train task output: a retried attempt finds the job its predecessor started. A DNS-1035
    label short enough for JobSet's pod hostnames (`<name>-node-0-<i>`)."""
    return "imgclf-train-" + hashlib.sha256(model_uri.rstrip("/").encode()).hexdigest()[:12]


def passed_env(environ=None) -> list[dict]:
    """WORKER_ENV, then the task's own non-secret settings (PASSED_ENV) where it has them."""
    environ = os.environ if environ is None else environ
    return [{"name": k, "value": v} for k, v in WORKER_ENV.items()] + \
        [{"name": k, "value": environ[k]} for k in PASSED_ENV if environ.get(k)]


# --- KFP: a Kubeflow Trainer TrainJob -------------------------------------------------------------

def worker_hosts(name: str, workers: int, port: int = PORT) -> list[str]:
    """Every pod's stable hostname: JobSet's `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>`,
    the JobSet and its subdomain being named after the TrainJob (Trainer's own convention)."""
    return [f"{name}-{NODE}-0-{i}.{name}:{port}" for i in range(workers)]


def trainjob_manifest(settings: ClusterSettings, name: str, workers: int, args: list[str],
                      namespace: str = "", environ=None) -> dict:
    """The TrainJob for `workers` workers running `args`; no secret values, only references."""
    if workers < 2:
        raise ValueError(f"a TrainJob is for 2 or more workers, not {workers}")
    if len(args) > MAX_ARGS:
        raise ValueError(f"{len(args)} worker arguments: Trainer takes at most {MAX_ARGS}")
    env = [{"name": HOSTS_ENV, "value": ",".join(worker_hosts(name, workers))}, *passed_env(environ)]
    if settings.s3_secret:
        access, secret = settings.s3_secret_keys
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key}}}
                for var, key in (("AWS_ACCESS_KEY_ID", access), ("AWS_SECRET_ACCESS_KEY", secret))]
    requests = {k: v for k, v in (("cpu", settings.cpu_request), ("memory", settings.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", settings.cpu_limit), ("memory", settings.memory_limit)) if v}
    if settings.gpus:
        limits[settings.accelerator] = str(settings.gpus)
    trainer: dict = {"image": settings.image, "command": list(COMMAND), "args": list(args), "env": env,
                     "numNodes": workers}
    if requests or limits:
        trainer["resourcesPerNode"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    spec: dict = {"runtimeRef": {"name": settings.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
                  "trainer": trainer, "activeDeadlineSeconds": settings.timeout_s}
    pod: dict = {}
    if settings.gpus:  # GPU node pools carry this taint, as the single train task tolerates it
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if settings.node_selector:
        pod["nodeSelector"] = {settings.node_selector[0]: settings.node_selector[1]}
    if pod:
        spec["runtimePatches"] = [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}]
    metadata: dict = {"name": name, "labels": dict(MANAGED_BY)}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def condition(obj: dict, kind: str) -> dict | None:
    """The TrainJob's `kind` condition (Complete, Failed) when its status is True."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _progress(obj: dict) -> str:
    jobs = (obj.get("status") or {}).get("jobsStatus") or []
    conds = [f"{c.get('type')}={c.get('status')}" for c in (obj.get("status") or {}).get("conditions") or []]
    counts = [f"{j.get('name')}: " + ", ".join(f"{k} {j[k]}" for k in ("active", "ready", "succeeded", "failed")
                                              if j.get(k)) for j in jobs]
    return "; ".join(conds + counts) or "no status yet"


def _same_job(existing: dict, wanted: dict) -> bool:
    return (existing.get("spec") or {}).get("trainer") == wanted["spec"]["trainer"] and \
        (existing.get("spec") or {}).get("runtimeRef", {}).get("name") == wanted["spec"]["runtimeRef"]["name"]


def _status_message(body) -> str:
    """The message of the Status object the API server answers with (admission webhooks' reasons are in it)."""
    try:
        return str(json.loads(body)["message"])[:1000]
    except (TypeError, ValueError, KeyError):
        return str(body or "")[:300]


def run_trainjob(manifest: dict, *, poll_s: float = 15.0, wait_s: float | None = None, log=print) -> dict:
    """Create the TrainJob (or take over the one a previous attempt left), wait until it is Complete,
    and return it. Raises ClusterError naming the Failed condition's reason and message, or the
    timeout; on any failure of ours (timeout, cancellation, API error) the TrainJob is deleted first."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    try:
        api, namespace = kube.custom_objects()
    except ConfigException as e:
        raise ClusterError(f"the Kubernetes configuration cannot be used: {e}") from None
    namespace = manifest["metadata"].get("namespace") or namespace
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    name = manifest["metadata"]["name"]
    where = f"TrainJob {namespace}/{name}"
    wait_s = manifest["spec"].get("activeDeadlineSeconds", 7 * 24 * 3600) + 600 if wait_s is None else wait_s

    def get():
        try:
            return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def delete():
        with contextlib.suppress(ApiException, OSError, urllib3.exceptions.HTTPError):
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                propagation_policy="Background")
            log(f"train: deleted {where} (its workers stop)")

    try:
        with stopped_by_sigterm():
            existing = get()
            if existing is not None and condition(existing, "Complete") and _same_job(existing, manifest):
                log(f"train: {where} already completed (an earlier attempt of this task started it)")
                return existing
            if existing is not None and (condition(existing, "Failed") or not _same_job(existing, manifest)):
                log(f"train: replacing {where} left by an earlier attempt ({_progress(existing)})")
                delete()
                deadline = time.monotonic() + 300
                while get() is not None:  # deletion is asynchronous (finalizers, cascading)
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{where}: an earlier attempt's TrainJob is still being deleted after 300 s")
                    time.sleep(min(poll_s, 5.0))
                existing = None
            if existing is None:
                try:
                    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
                    log(f"train: created {where}: {manifest['spec']['trainer']['numNodes']} workers of "
                        f"{manifest['spec']['trainer']['image']} (runtime {manifest['spec']['runtimeRef']['name']})")
                except ApiException as e:
                    if e.status != 409:
                        raise
            else:
                log(f"train: waiting again on {where}, which an earlier attempt of this task started")
            deadline, last = time.monotonic() + wait_s, ""
            while True:
                obj = get()
                if obj is None:
                    raise ClusterError(f"{where} was deleted while the train task waited on it")
                if condition(obj, "Complete"):
                    log(f"train: {where} completed")
                    return obj
                if failed := condition(obj, "Failed"):
                    raise WorkersFailed(f"{where} failed: {failed.get('reason', '')}: {failed.get('message', '')} "
                                       f"(kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name})")
                if (now := _progress(obj)) != last:
                    log(f"train: {where}: {now}")
                    last = now
                if time.monotonic() > deadline:
                    raise ClusterError(f"{where} did not finish within {wait_s:.0f} s (the train task stopped waiting)")
                time.sleep(poll_s)
    except WorkersFailed:  # a TrainJob that failed by itself stays for its logs
        raise
    except ClusterError:
        delete()
        raise
    except ApiException as e:
        delete()
        raise ClusterError(f"{where}: the cluster answered {e.status} {e.reason}: {_status_message(e.body)}") from None
    except (OSError, urllib3.exceptions.HTTPError) as e:
        delete()
        raise ClusterError(f"{where}: cannot reach the cluster: {e}") from None
    except BaseException:  # timeout, SIGTERM (cancelled), KeyboardInterrupt, our own bug
        delete()
        raise


# --- Vertex AI: a CustomJob with worker pools ---------------------------------------------------------

# Machine families per accelerator: (machine type, vCPUs, memory GB, GPUs it carries or None for "1, 2, 4
# or 8 of them attached"). Vertex only takes these combinations; n1 takes the older GPUs attached.
_N1 = [(f"n1-{kind}-{n}", n, n * per) for n in (4, 8, 16, 32, 64, 96) for kind, per in (("standard", 3.75),
                                                                                          ("highmem", 6.5))]
_G2 = [("g2-standard-4", 4, 16, 1), ("g2-standard-8", 8, 32, 1), ("g2-standard-12", 12, 48, 1),
       ("g2-standard-16", 16, 64, 1), ("g2-standard-32", 32, 128, 1), ("g2-standard-24", 24, 96, 2),
       ("g2-standard-48", 48, 192, 4), ("g2-standard-96", 96, 384, 8)]
_BY_GPUS = {"NVIDIA_TESLA_A100": ("a2-highgpu-{n}g", 12, 85), "NVIDIA_A100_80GB": ("a2-ultragpu-{n}g", 12, 170),
            "NVIDIA_H100_80GB": ("a3-highgpu-{n}g", 26, 234)}
_FIXED = {"NVIDIA_H100_MEGA_80GB": ("a3-megagpu-8g", 8), "NVIDIA_H200_141GB": ("a3-ultragpu-8g", 8),
          "NVIDIA_B200": ("a4-highgpu-8g", 8)}
N1_GPUS = ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4")


def vertex_machine_type(cpu: str, memory: str, accelerator: str = "", gpus: int = 0) -> str:
    """The smallest Vertex machine type with at least `cpu` vCPUs and `memory` for `gpus` accelerators
    of that type: what the single train task's limits ask for, per worker. ValueError where the table has
    no fitting type (name one with --train-machine-type)."""
    cores = float(quantity.cpu_cores(cpu)) if cpu else 1.0
    gb = quantity.memory_bytes(memory) / 1e9 if memory else 1.0
    fits = []
    if not gpus or accelerator in N1_GPUS:
        fits = [m for m, c, g in _N1 if c >= cores and g >= gb]
    elif accelerator == "NVIDIA_L4":
        fits = [m for m, c, g, n in _G2 if n == gpus and c >= cores and g >= gb]
    elif accelerator in _BY_GPUS and gpus in (1, 2, 4, 8):
        pattern, c, g = _BY_GPUS[accelerator]
        fits = [pattern.format(n=gpus)] if c * gpus >= cores and g * gpus >= gb else []
    elif accelerator in _FIXED and gpus == _FIXED[accelerator][1]:
        fits = [_FIXED[accelerator][0]]
    if not fits:
        what = f"{gpus} x {accelerator}, " if gpus else ""
        raise ValueError(f"no Vertex machine type in imgclf's table fits {what}{cpu or 1} CPUs and "
                         f"{memory or '1G'} memory per worker: name one with --train-machine-type")
    return fits[0]


def worker_pool_specs(settings: ClusterSettings, workers: int, args: list[str], environ=None) -> list[dict]:
    """Pool 0: the chief (one replica); pool 1: the other workers. Same machine, accelerators, image,
    command and arguments everywhere, as data-parallel training needs; Vertex sets TF_CONFIG."""
    if workers < 2:
        raise ValueError(f"a multi-worker CustomJob is for 2 or more workers, not {workers}")
    machine: dict = {"machine_type": settings.machine_type}
    if settings.gpus:
        machine.update(accelerator_type=settings.accelerator, accelerator_count=settings.gpus)
    container = {"image_uri": settings.image, "command": list(COMMAND), "args": list(args),
                 "env": passed_env(environ)}
    return [{"machine_spec": machine, "replica_count": count, "container_spec": container,
             "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100}}
            for count in (1, workers - 1)]


def _vertex_location(settings: ClusterSettings) -> tuple[str, str]:
    """Project and region of the task's own Vertex job: Vertex sets them in every training container."""
    project, region = os.environ.get("CLOUD_ML_PROJECT_ID", ""), os.environ.get("CLOUD_ML_REGION", "")
    if not project or not region:
        raise ClusterError("the train task does not know its Vertex project and region (CLOUD_ML_PROJECT_ID, "
                           "CLOUD_ML_REGION are unset): multi-worker training on Vertex runs from a Vertex "
                           "pipeline's train task")
    return project, region


def _own_service_account() -> str | None:
    """The task's service account (workload credentials on Vertex), so the workers read what it reads."""
    import google.auth

    with contextlib.suppress(Exception):
        credentials, _ = google.auth.default()
        email = getattr(credentials, "service_account_email", "")
        if email and "@" not in email:  # a metadata-server credential says "default" until refreshed
            import google.auth.transport.requests

            credentials.refresh(google.auth.transport.requests.Request())
            email = getattr(credentials, "service_account_email", "")
        if email and "@" in email:
            return email
    return None


def run_custom_job(settings: ClusterSettings, name: str, workers: int, args: list[str], staging: str, *,
                   poll_s: float = 30.0, wait_s: float | None = None, log=print) -> str:
    """Submit the CustomJob, wait until it succeeds, return its resource name. Raises ClusterError with
    Vertex's error for a failed job; on our own failure (timeout, cancellation, API error) the job is
    cancelled first."""
    import google.auth.exceptions
    from google.api_core import exceptions
    from google.cloud import aiplatform

    if not settings.machine_type:
        raise ClusterError("no Vertex machine type for the training workers fits the train task's CPUs, memory and "
                           "GPUs in imgclf's table: compile with --train-machine-type")
    project, region = _vertex_location(settings)
    init = {"project": project, "location": region}
    if settings.vertex_api_endpoint:
        init.update(api_endpoint=settings.vertex_api_endpoint, api_transport="rest")
    wait_s = settings.timeout_s + 600 if wait_s is None else wait_s
    job = None
    try:
        with stopped_by_sigterm():
            aiplatform.init(**init)
            label = {LABEL: name[len("imgclf-train-"):]}
            # A retried attempt of this task: its predecessor's job, still running or done, is taken over.
            earlier = [j for j in aiplatform.CustomJob.list(filter=f'labels.{LABEL}="{label[LABEL]}"')
                       if j.gca_resource.state.name not in VERTEX_FAILED | {"JOB_STATE_CANCELLING"}]
            if earlier:
                job = max(earlier, key=lambda j: j.gca_resource.create_time)
                log(f"train: waiting again on Vertex CustomJob {job.resource_name}, which an earlier attempt of "
                    f"this task started")
            else:
                job = aiplatform.CustomJob(display_name=name, worker_pool_specs=worker_pool_specs(settings, workers, args),
                                           base_output_dir=staging, staging_bucket="/".join(staging.split("/")[:3]),
                                           labels=label)
                # Workers that leave and rejoin do not fit a collective: Vertex restarts the whole job, and
                # the workers resume from the backup.
                job.submit(service_account=settings.service_account or _own_service_account(),
                           timeout=settings.timeout_s, restart_job_on_worker_restart=True)
                log(f"train: created Vertex CustomJob {job.resource_name}: {workers} workers of {settings.image} "
                    f"on {settings.machine_type}" +
                    (f" with {settings.gpus} x {settings.accelerator}" if settings.gpus else ""))
            deadline, last = time.monotonic() + wait_s, ""
            while True:
                state = job.state.name
                if state != last:
                    log(f"train: {job.resource_name}: {state}")
                    last = state
                if state in VERTEX_DONE:
                    return job.resource_name
                if state in VERTEX_FAILED:
                    error = job.gca_resource.error
                    raise WorkersFailed(f"Vertex CustomJob {job.resource_name} ended {state}: "
                                       f"{error.message or 'no error message'}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"Vertex CustomJob {job.resource_name} did not finish within {wait_s:.0f} s "
                                       "(the train task stopped waiting)")
                time.sleep(poll_s)  # job.state fetches the job again
    except WorkersFailed:
        raise
    except ClusterError:
        _cancel(job, log)
        raise
    except exceptions.GoogleAPICallError as e:
        _cancel(job, log)
        raise ClusterError(f"Vertex AI refused or lost the CustomJob {name}: {e}") from None
    except google.auth.exceptions.GoogleAuthError as e:
        raise ClusterError(f"no usable Google credentials for Vertex AI: {e}") from None
    except BaseException:  # timeout, SIGTERM (cancelled), KeyboardInterrupt, our own bug
        _cancel(job, log)
        raise


def _cancel(job, log) -> None:
    if job is None:
        return
    with contextlib.suppress(Exception):
        job.cancel()
        log(f"train: cancelled Vertex CustomJob {job.resource_name} (its workers stop)")


# --- the train task's entry ------------------------------------------------------------------------

def train_on_cluster(options: dict, *, records_uri: str, model_uri: str, backup_uri: str, model_path: str,
                     curves_path: str = "", settings: ClusterSettings | None = None, poll_s: float | None = None,
                     log=print) -> str:
    """Run options["train_workers"] workers on the engine the settings name, wait for them, and copy the
    chief's model folder to `model_path` (and its curves page to `curves_path`): the task's outputs, as a
    single-node train would have written them (train.json holds the result). Returns the job's name.
    The task calls this when train_workers > 1 and ClusterSettings.from_env() is not None (a compiled
    pipeline's train task); the workers run the train step inside `staged`."""
    workers = int(options.get("train_workers", 1))
    settings = settings or ClusterSettings.from_env()
    if settings is None:
        raise ClusterError(f"no {SETTINGS_ENV}: multi-worker training on a cluster needs a pipeline compiled "
                           f"for KFP or Vertex (`imgclf compile --target ...`)")
    args = worker_args(options, records_uri, model_uri, backup_uri)
    name, staging = job_name(model_uri), staging_uri(model_uri)
    if settings.target == "kfp":
        run_trainjob(trainjob_manifest(settings, name, workers, args), log=log,
                     **({"poll_s": poll_s} if poll_s else {}))
    else:
        run_custom_job(settings, name, workers, args, staging, log=log, **({"poll_s": poll_s} if poll_s else {}))
    model_dir = storage.join(staging, "model")
    if not storage.exists(storage.join(model_dir, TRAIN_FILE)):
        raise ClusterError(f"the workers' job {name} succeeded but left no model at {model_dir}")
    with storage.atomic_dir(model_path) as out:
        storage.download_dir(model_dir, str(out))
    if curves_path and storage.exists(storage.join(staging, "curves.html")):
        storage.atomic_write_text(curves_path, storage.read_text(storage.join(staging, "curves.html")))
    return name


# --- the worker's side ---------------------------------------------------------------------------------

@contextlib.contextmanager
def staged(dataset_dir: str, model_dir: str, curves_html: str = ""):
    """The train step's paths as local ones, for a worker that train_on_cluster launched with store URIs:
    the records downloaded first (TensorFlow reads local files), the model folder and curves page written
    locally and uploaded when the block succeeds, the model's train.json last (what train_on_cluster
    looks for). Only what the block wrote is uploaded: a worker that is not the chief writes elsewhere
    (distributed.chief_outputs), so nothing is. Local paths pass through unchanged, with no copy."""
    import shutil
    import tempfile
    from pathlib import Path

    if storage.is_local(dataset_dir) and storage.is_local(model_dir) and (not curves_html or
                                                                           storage.is_local(curves_html)):
        yield dataset_dir, model_dir, curves_html
        return
    tmp = Path(tempfile.mkdtemp(prefix="imgclf-worker-"))
    try:
        records = dataset_dir
        if not storage.is_local(dataset_dir):
            records = str(tmp / "records")
            storage.download_dir(dataset_dir, records)
        model = model_dir if storage.is_local(model_dir) else str(tmp / "model")
        curves = curves_html if not curves_html or storage.is_local(curves_html) else str(tmp / "curves.html")
        yield records, model, curves
        if model != model_dir and Path(model).is_dir():
            if storage.exists(model_dir):  # an earlier attempt's chief got this far: this one's replaces it
                storage.remove(model_dir, recursive=True)
            storage.publish_dir(model, model_dir, last=(TRAIN_FILE,))
        if curves != curves_html and Path(curves).is_file():
            storage.copy_file(curves, curves_html)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
