"""Backend settings applied to tasks at compile time: credentials, endpoints and the GPU request.

Only names of secrets and non-secret settings ever enter the compiled YAML. The two targets differ:
KFP takes Kubernetes-specific settings (secrets as env, tolerations, node selectors) as a second YAML
document that Vertex cannot load, and the two name accelerators differently.
"""
import os
from dataclasses import dataclass, field

from imgclf.components import __version__
from imgclf.components.lib import quantity

# KFP's own MinIO credentials secret, present in every KFP namespace that uses MinIO.
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"
TARGETS = ("kfp", "vertex")
DEFAULT_GPU_TYPE = {"kfp": "nvidia.com/gpu", "vertex": "NVIDIA_TESLA_T4"}
VERTEX_GPU_TYPES = ("NVIDIA_TESLA_T4", "NVIDIA_L4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4",
                    "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB",
                    "NVIDIA_H200_141GB", "NVIDIA_B200")


def cpu_image() -> str:
    """The image the components were built with (IMGCLF_IMAGE, else the local build's name)."""
    from imgclf.components.kfp_glue.wrappers import IMAGE

    return IMAGE


def gpu_image() -> str:
    """The train task's image when it requests a GPU (TensorFlow with CUDA): one setting, like IMGCLF_IMAGE."""
    return os.environ.get("IMGCLF_GPU_IMAGE", f"imgclf-gpu:{__version__}")


def image_problem(name: str) -> str:
    """Why a cluster cannot pull `name` ("" if it can): a name without a registry or namespace part
    (`imgclf:0.2.0`) means docker.io/library/imgclf, which is not ours; it exists only where it was built."""
    if not name or any(c.isspace() for c in name):
        return "an image name must be non-empty with no spaces"
    if "/" not in name.split("@")[0]:
        return (f"{name!r} is an unqualified local name that a cluster cannot pull; push it (make push "
                f"REGISTRY=us-docker.pkg.dev/PROJECT/REPO) and pass --image REGISTRY/{name} (or set IMGCLF_IMAGE), "
                f"or --allow-local-image for a cluster that has the image loaded (kind, minikube)")
    return ""


@dataclass(frozen=True)
class Resources:
    """CPU and memory one task asks for (request) and may use (limit), in Kubernetes quantities.
    Vertex AI sizes its machine from the limits."""
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def __post_init__(self):
        for what, request, limit, parse in (("cpu", self.cpu_request, self.cpu_limit, cpu_quantity),
                                            ("memory", self.memory_request, self.memory_limit, memory_quantity)):
            if parse(request) > parse(limit):
                raise ValueError(f"{what} request {request} is above its limit {limit}")

    def text(self) -> str:
        return f"cpu {self.cpu_request}/{self.cpu_limit}, memory {self.memory_request}/{self.memory_limit}"


def cpu_quantity(text: str) -> float:
    """Cores in a Kubernetes CPU quantity ("500m", "2", "1.5"): components/lib/quantity.py's parser."""
    return float(quantity.cpu_cores(text))


def memory_quantity(text: str) -> float:
    """Bytes in a Kubernetes memory quantity ("512Mi", "1.5Gi", "2G"): components/lib/quantity.py's parser."""
    return float(quantity.memory_bytes(text))


# What each task asks for by default: light bookkeeping tasks, TensorFlow steps, and train larger.
# Changed per step with --cpu STEP=REQUEST[:LIMIT] and --memory STEP=REQUEST[:LIMIT] (STEP "all" for every task).
LIGHT = Resources("500m", "1", "1Gi", "2Gi")
TF_STEP = Resources("1", "2", "4Gi", "8Gi")
TRAIN = Resources("4", "8", "16Gi", "32Gi")
LISTING = Resources("1", "2", "2Gi", "8Gi")  # ingest's plan and merge: a whole listing's metadata, no images
DEFAULT_RESOURCES = {"validate": LIGHT, "ingest-plan": LISTING, "ingest-shard": Resources("1", "4", "4Gi", "8Gi"),
                     "ingest": LISTING,
                     "preprocess-plan": LIGHT, "preprocess-shard": Resources("2", "4", "4Gi", "8Gi"),
                     "preprocess-merge": LIGHT, "champion": TF_STEP, "train": TRAIN, "trial": TRAIN,
                     "select": LIGHT, "evaluate": TF_STEP, "export": TF_STEP, "gate": TF_STEP, "publish": LIGHT,
                     "deploy": LIGHT, "not-published": LIGHT, "training-skipped": LIGHT,
                     "predict": Resources("2", "4", "4Gi", "8Gi"), "audit": LIGHT}


def resources_with(changes: list[tuple[str, str, str]], tasks=tuple(DEFAULT_RESOURCES)) -> dict[str, Resources]:
    """The default table with (step or "all", "cpu" or "memory", "REQUEST[:LIMIT]") changes applied in order."""
    table = {name: DEFAULT_RESOURCES.get(name, LIGHT) for name in tasks}
    for step, what, text in changes:
        if step != "all" and step not in table:
            raise ValueError(f"--{what} {step}={text}: no task {step!r}; tasks: all, {', '.join(table)}")
        request, _, limit = text.partition(":")
        # The canonical spelling: what the KFP compiler accepts (1.5Gi becomes 1536Mi).
        canonical = quantity.cpu_text if what == "cpu" else quantity.memory_text
        request, limit = canonical(request), canonical(limit or request)
        for name in (table if step == "all" else [step]):
            old = table[name]
            table[name] = Resources(request, limit, old.memory_request, old.memory_limit) if what == "cpu" else \
                Resources(old.cpu_request, old.cpu_limit, request, limit)
    return table


@dataclass(frozen=True)
class Platform:
    target: str = "local"
    s3_secret: str = ""
    """Kubernetes secret whose `accesskey`/`secretkey` become AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (KFP)."""
    s3_secret_keys: tuple = ("accesskey", "secretkey")
    http_secret: str = ""
    """Kubernetes secret whose `token` becomes IMGCLF_HTTP_TOKEN (KFP): the bearer token for http(s) data."""
    http_auth_hosts: str = ""
    """IMGCLF_HTTP_AUTH_HOSTS on every task: the hosts the token may be sent to (not a secret)."""
    s3_endpoint: str = ""
    """S3-compatible endpoint for s3:// URIs (e.g. http://minio-service.kubeflow:9000); not a secret."""
    gpus: int = 0
    gpu_type: str = ""
    gpu_node_selector: tuple = ()
    """(label, value) for GPU nodes on KFP, e.g. ("cloud.google.com/gke-accelerator", "nvidia-tesla-t4")."""
    image: str = ""
    """Every task's image ("" keeps the one the components were built with: IMGCLF_IMAGE)."""
    gpu_image: str = ""
    """The train task's image when it requests GPUs ("" means IMGCLF_GPU_IMAGE)."""
    resources: dict = field(default_factory=dict)
    """Task name -> Resources; tasks not named get none (kfp.local ignores them anyway)."""
    train_machine_type: str = ""
    """Vertex: each training worker's machine type when train_workers > 1 ("" : the smallest that fits the
    train task's limits and GPUs, components/train/cluster_jobs.py)."""
    trainer_runtime: str = "imgclf-workers"
    """KFP: the Kubeflow Trainer ClusterTrainingRuntime a multi-worker train task's TrainJob names."""

    def __post_init__(self):
        if self.target not in (*TARGETS, "local"):
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "vertex":
            if self.s3_secret:
                raise ValueError("Vertex AI has no Kubernetes secrets: drop --s3-secret (use workload identity)")
            if self.http_secret or self.http_auth_hosts:
                raise ValueError("Vertex AI has no Kubernetes secrets: drop --http-secret/--http-auth-hosts (put "
                                 "the data in GCS, "
                                 "or give signed URLs)")
            if self.gpus and self.accelerator not in VERTEX_GPU_TYPES:
                raise ValueError(f"Vertex accelerator {self.accelerator!r} is not one of {', '.join(VERTEX_GPU_TYPES)}")
        if self.target == "kfp" and self.gpus and "/" not in self.accelerator:
            raise ValueError(f"KFP accelerators are Kubernetes resource names such as nvidia.com/gpu, "
                             f"got {self.accelerator!r}")

    @property
    def accelerator(self) -> str:
        return self.gpu_type or DEFAULT_GPU_TYPE.get(self.target, "")

    def apply(self, *tasks) -> None:
        """Image, resources, credentials and endpoints on the tasks given (the pipelines pass every task
        they built)."""
        for task in tasks:
            if self.image:
                task.set_container_image(self.image)
            # A second task of a component in one pipeline is named "<task>-2" by KFP (the training
            # pipeline with an audit beside it trains and evaluates twice): it gets its component's setting.
            name = task.name if task.name in self.resources else task.name.rsplit("-", 1)[0]
            if self.target != "local" and name in self.resources and (name == task.name or
                                                                      task.name.rsplit("-", 1)[1].isdigit()):
                r = self.resources[name]
                task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
                task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
        if self.s3_secret:
            from kfp import kubernetes

            access, secret = self.s3_secret_keys
            for task in tasks:
                kubernetes.use_secret_as_env(task, secret_name=self.s3_secret, secret_key_to_env={
                    access: "AWS_ACCESS_KEY_ID", secret: "AWS_SECRET_ACCESS_KEY"})
        if self.http_secret:
            from kfp import kubernetes

            for task in tasks:  # every task may read the images: ingest, preprocess's shards, evaluate, predict
                kubernetes.use_secret_as_env(task, secret_name=self.http_secret,
                                             secret_key_to_env={"token": "IMGCLF_HTTP_TOKEN"})
        if self.http_auth_hosts:
            for task in tasks:
                task.set_env_variable("IMGCLF_HTTP_AUTH_HOSTS", self.http_auth_hosts)
        if self.s3_endpoint:
            for task in tasks:
                task.set_env_variable("IMGCLF_S3_ENDPOINT_URL", self.s3_endpoint)

    def apply_retry(self, task) -> None:
        """Preemptible GPU nodes and flaky nodes: on a cluster the train task is retried, and the attempt
        resumes from the last saved epoch. Parameter errors never get there (the validate task refused
        them). Locally nothing preempts a task: a retry would only delay a failure by minutes of backoff."""
        if self.target != "local":
            task.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")

    def apply_gpu(self, task) -> None:
        """Request GPUs for a task (train): the accelerator, the GPU image, and on KFP the toleration
        GPU node pools carry plus an optional node selector. Also, on a cluster, the settings its workers
        get when it runs with train_workers > 1 (apply_workers)."""
        self.apply_workers(task)
        if not self.gpus or self.target == "local":
            return
        task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        task.set_container_image(self.gpu_image or gpu_image())
        if self.target == "kfp":
            from kfp import kubernetes

            kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
            if self.gpu_node_selector:
                kubernetes.add_node_selector(task, *self.gpu_node_selector)


    def worker_settings(self, task_name: str):
        """What each worker of a multi-worker train task runs on (cluster_jobs.ClusterSettings): the task's
        own image, CPU/memory, GPUs and node selector per worker, the S3 secret by name; on Vertex a
        machine type for them (None on kfp.local, where the train step starts its workers itself)."""
        from imgclf.components.train import cluster_jobs

        if self.target == "local":
            return None
        r = self.resources.get(task_name)
        image = (self.gpu_image or gpu_image()) if self.gpus else (self.image or cpu_image())
        machine = self.train_machine_type
        if self.target == "vertex" and not machine:
            try:
                machine = cluster_jobs.vertex_machine_type(r.cpu_limit if r else "", r.memory_limit if r else "",
                                                           self.accelerator if self.gpus else "", self.gpus)
            except ValueError:
                machine = ""  # told at run time, and only to a run that asks for several workers
        return cluster_jobs.ClusterSettings(
            target=self.target, image=image, cpu_request=r.cpu_request if r else "",
            cpu_limit=r.cpu_limit if r else "", memory_request=r.memory_request if r else "",
            memory_limit=r.memory_limit if r else "", gpus=self.gpus, accelerator=self.accelerator if self.gpus else "",
            node_selector=tuple(self.gpu_node_selector) if self.gpus else (), s3_secret=self.s3_secret,
            s3_secret_keys=tuple(self.s3_secret_keys), runtime=self.trainer_runtime, machine_type=machine)

    def apply_workers(self, task) -> None:
        """The train task's worker settings as one environment variable (IMGCLF_TRAIN_CLUSTER, JSON; names
        of secrets only). Unused unless the run asks for train_workers > 1."""
        from imgclf.components.train.cluster_jobs import SETTINGS_ENV

        name = task.name if task.name in self.resources else task.name.rsplit("-", 1)[0]
        settings = self.worker_settings(name)
        if settings is not None:
            task.set_env_variable(SETTINGS_ENV, settings.to_env())


LOCAL = Platform()
