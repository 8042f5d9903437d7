"""The deploy step's options, declared once. The registry location and model name are the ones publish
uses (`RegistryTarget`, shared through the registry library), so the pipeline deploys what publish wrote."""
from __future__ import annotations

import re
from dataclasses import dataclass

from imgclf.components.lib.options import ParameterError, option
from imgclf.components.lib.quantity import cpu_problem, memory_problem
from imgclf.components.lib.registry import RegistryTarget

SERVES = {
    "none": ("nothing", "nothing deployed"),
    "kserve": ("a KServe InferenceService", "an InferenceService manifest, applied when a cluster is configured"),
    "vertex": ("a Vertex AI model version on an endpoint", "a Model Registry version on an endpoint"),
    "tf-serving": ("a TF Serving config", "models.config and the docker line"),
}
"""Every deploy target, declared once: target -> (what it serves, in a sentence; what it writes or calls).
The deploy option's choices, its help, `imgclf deploy`'s and the component's text are derived from it;
each target but "none" has its handler in step.HANDLERS."""
TARGETS = tuple(SERVES)


def listed(items: list[str]) -> str:
    """"a, b or c"."""
    return ", ".join(items[:-1]) + (" or " if len(items) > 1 else "") + items[-1]


def targets_help(targets=TARGETS) -> str:
    """"kserve: ...; vertex: ..." for the named targets (help text that says what each one does)."""
    return "; ".join(f"{t}: {SERVES[t][1]}" for t in targets)


def served(targets=TARGETS) -> str:
    """"a KServe InferenceService, ... or a TF Serving config" for the named targets."""
    return listed([SERVES[t][0] for t in targets])
VERTEX_TF_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
# KServe refuses InferenceService names that are not DNS-1035 labels (its IsvcNameFmt), and Kubernetes
# caps a label at 63 characters.
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def dns_label_problem(name: str) -> str:
    """Why `name` cannot name a Kubernetes object such as an InferenceService ("" if it can)."""
    if name and (len(name) > 63 or not _DNS_LABEL.fullmatch(name)):
        return ("not a DNS-1035 label: lower-case letters, digits and '-', starting with a letter, ending with a "
                "letter or digit, at most 63 characters")
    return ""


@dataclass(frozen=True, kw_only=True)
class DeployOptions(RegistryTarget):
    deploy: str = option("none", "after publish, serve the new version: "
                                 + listed([f"{t} ({SERVES[t][1]})" for t in TARGETS]), choices=TARGETS)
    model_version: int = option(0, "the registry version to deploy; 0: the champion", min=0, pipeline=False)
    canary_percent: int = option(10, "traffic share the new version gets while the previous one keeps the rest "
                                     "(KServe canaryTrafficPercent, Vertex traffic split); 100: all at once",
                                 min=0, max=100)
    service_name: str = option("", "KServe InferenceService / Vertex endpoint name (default: model_name)",
                               check=dns_label_problem)
    serving_namespace: str = option("", "KServe: the Kubernetes namespace (default: the kubeconfig's, else default)",
                            check=dns_label_problem)
    serving_service_account: str = option("", "KServe: the predictor's Kubernetes service account (bucket "
                                              "credentials); Vertex: the service account the deployed model runs as")
    storage_uri: str = option("", "KServe: where the cluster reads the model folder (default: REGISTRY/MODEL_NAME; "
                                  "gs://, s3:// or pvc://CLAIM/PATH for a registry on a volume)")
    serving_cpu: str = option("1", "CPU request and limit of a serving replica (Kubernetes quantity)",
                              check=cpu_problem)
    serving_memory: str = option("2Gi", "memory request and limit of a serving replica (Kubernetes quantity)",
                                 check=memory_problem)
    min_replicas: int = option(1, "serving replicas kept running (KServe minReplicas, Vertex min_replica_count)",
                               min=0, max=1000)
    max_replicas: int = option(3, "serving replicas at most", min=1, max=1000)
    apply_manifest: bool = option(True, "KServe: apply the manifest when a cluster is configured (kubeconfig or "
                                        "in-cluster); off, or without one, only write it")
    vertex_project: str = option("", "Vertex: Google Cloud project (default: the environment's)")
    vertex_region: str = option("us-central1", "Vertex: region of the model and endpoint")
    vertex_machine_type: str = option("n1-standard-2", "Vertex: machine type of the endpoint's replicas")
    vertex_serving_image: str = option(VERTEX_TF_IMAGE, "Vertex: the prebuilt TensorFlow serving container")
    vertex_api_endpoint: str = option("", "Vertex: API endpoint (Private Service Connect; uses REST)",
                                      pipeline=False)

    def __post_init__(self):
        super().__post_init__()
        if self.min_replicas > self.max_replicas:
            raise ParameterError(f"parameter min_replicas={self.min_replicas}: more than max_replicas="
                                 f"{self.max_replicas}")

    @property
    def name(self) -> str:
        """The served name: the InferenceService, the Vertex endpoint and model, TF Serving's model."""
        return self.service_name or self.model_name
