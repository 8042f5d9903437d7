"""Backend settings applied to tasks at compile time: credentials, endpoints and the GPU request.

Only names of secrets and non-secret settings ever enter the compiled YAML. The two targets differ:
KFP takes Kubernetes-specific settings (secrets as env, tolerations, node selectors) as a second YAML
document that Vertex cannot load, and the two name accelerators differently.
"""
import os
from dataclasses import dataclass

from components import __version__

# KFP's own MinIO credentials secret, present in every KFP namespace that uses MinIO.
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"
TARGETS = ("kfp", "vertex")
DEFAULT_GPU_TYPE = {"kfp": "nvidia.com/gpu", "vertex": "NVIDIA_TESLA_T4"}
VERTEX_GPU_TYPES = ("NVIDIA_TESLA_T4", "NVIDIA_L4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4",
                    "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB",
                    "NVIDIA_H200_141GB", "NVIDIA_B200")


def gpu_image() -> str:
    """The train task's image when it requests a GPU (TensorFlow with CUDA): one setting, like IMGCLF_IMAGE."""
    return os.environ.get("IMGCLF_GPU_IMAGE", f"imgclf-gpu:{__version__}")


@dataclass(frozen=True)
class Platform:
    target: str = "local"
    s3_secret: str = ""
    """Kubernetes secret whose `accesskey`/`secretkey` become AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (KFP)."""
    s3_secret_keys: tuple = ("accesskey", "secretkey")
    s3_endpoint: str = ""
    """S3-compatible endpoint for s3:// URIs (e.g. http://minio-service.kubeflow:9000); not a secret."""
    gpus: int = 0
    gpu_type: str = ""
    gpu_node_selector: tuple = ()
    """(label, value) for GPU nodes on KFP, e.g. ("cloud.google.com/gke-accelerator", "nvidia-tesla-t4")."""

    def __post_init__(self):
        if self.target not in (*TARGETS, "local"):
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "vertex":
            if self.s3_secret:
                raise ValueError("Vertex AI has no Kubernetes secrets: drop --s3-secret (use workload identity)")
            if self.gpus and self.accelerator not in VERTEX_GPU_TYPES:
                raise ValueError(f"Vertex accelerator {self.accelerator!r} is not one of {', '.join(VERTEX_GPU_TYPES)}")
        if self.target == "kfp" and self.gpus and "/" not in self.accelerator:
            raise ValueError(f"KFP accelerators are Kubernetes resource names such as nvidia.com/gpu, "
                             f"got {self.accelerator!r}")

    @property
    def accelerator(self) -> str:
        return self.gpu_type or DEFAULT_GPU_TYPE.get(self.target, "")

    def apply(self, *tasks) -> None:
        """Credentials and endpoints on the tasks given (the pipelines pass every task they built)."""
        if self.s3_secret:
            from kfp import kubernetes

            access, secret = self.s3_secret_keys
            for task in tasks:
                kubernetes.use_secret_as_env(task, secret_name=self.s3_secret, secret_key_to_env={
                    access: "AWS_ACCESS_KEY_ID", secret: "AWS_SECRET_ACCESS_KEY"})
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
        GPU node pools carry plus an optional node selector."""
        if not self.gpus or self.target == "local":
            return
        task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        task.set_container_image(gpu_image())
        if self.target == "kfp":
            from kfp import kubernetes

            kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
            if self.gpu_node_selector:
                kubernetes.add_node_selector(task, *self.gpu_node_selector)


LOCAL = Platform()
