"""The Kubernetes API client for the steps that create custom resources (deploy's KServe
InferenceService, train's Kubeflow Trainer TrainJob): credentials from the pod's in-cluster service
account first, then a kubeconfig, never from parameters."""
from __future__ import annotations

import os


def custom_objects():
    """CustomObjectsApi and the namespace the configuration names (in-cluster first, then kubeconfig);
    raises kubernetes.config.ConfigException when neither can be used."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            namespace = f.read().strip()
    except (config.ConfigException, OSError):
        # Read KUBECONFIG now: the client's default is the value it had when kubernetes was imported.
        files = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        config.load_kube_config(config_file=files)
        _, active = config.list_kube_config_contexts(config_file=files)
        namespace = (active or {}).get("context", {}).get("namespace", "")
    return client.CustomObjectsApi(), namespace or "default"
