"""Cluster settings applied to every task at compile time: how tasks get store credentials and
endpoints. Only names of secrets and non-secret settings ever enter the compiled YAML."""
from dataclasses import dataclass

# KFP's own MinIO credentials secret, present in every KFP namespace that uses MinIO.
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"


@dataclass(frozen=True)
class Platform:
    s3_secret: str = ""
    """Kubernetes secret whose `accesskey`/`secretkey` become AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    s3_secret_keys: tuple = ("accesskey", "secretkey")
    s3_endpoint: str = ""
    """S3-compatible endpoint for s3:// URIs (e.g. http://minio-service.kubeflow:9000); not a secret."""

    def apply(self, *tasks) -> None:
        if self.s3_secret:
            from kfp import kubernetes

            access, secret = self.s3_secret_keys
            for task in tasks:
                kubernetes.use_secret_as_env(task, secret_name=self.s3_secret, secret_key_to_env={
                    access: "AWS_ACCESS_KEY_ID", secret: "AWS_SECRET_ACCESS_KEY"})
        if self.s3_endpoint:
            for task in tasks:
                task.set_env_variable("IMGCLF_S3_ENDPOINT_URL", self.s3_endpoint)


LOCAL = Platform()
