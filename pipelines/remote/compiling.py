"""A pipeline compiled for a cluster from the command line's settings (images, CPU and memory, GPUs,
secrets), shared by `imgclf compile`, `submit` and `schedule`; settings a cluster could not use are
refused before compiling."""
from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.pipelines import PIPELINES


def compile_package(args: argparse.Namespace, target: str, out: Path) -> Path:
    """Compile args.pipeline for `target` with the cluster settings the flags give (images, resources,
    GPUs, secrets), refusing settings a cluster could not use."""
    from kfp import compiler

    from imgclf.components.audit.options import MAX_FOLDS
    from imgclf.pipelines.definitions.platform import (
        KFP_MINIO_SECRET,
        Platform,
        cpu_image,
        gpu_image,
        image_problem,
        resources_with,
    )

    sweep = sweep_of(args)
    if sweep is not None and args.pipeline != "training":
        raise ValueError("--sweep is for the training pipeline")
    if args.gpus < 0:
        raise ValueError(f"--gpus {args.gpus}: must be 0 (CPU only) or more")
    secret = args.s3_secret if args.s3_secret is not None else (KFP_MINIO_SECRET if target == "kfp" else "")
    selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else ()
    if selector and len(selector) != 2:
        raise ValueError(f"--gpu-node-selector takes LABEL=VALUE, got {args.gpu_node_selector!r}")
    images = [("--image", args.image or cpu_image())] + ([("--gpu-image", args.gpu_image or gpu_image())]
                                                          if args.gpus and args.pipeline in ("training", "audit") else [])
    for flag, name in images:
        if (problem := image_problem(name)) and not (args.allow_local_image and "unqualified" in problem):
            raise ValueError(f"{flag}: {problem}")
    changes = [(*_step_setting(flag, text), text.partition("=")[2]) for flag, given in
               (("cpu", args.cpu), ("memory", args.memory)) for text in given]
    platform = Platform(target=target, s3_secret=secret, http_secret=args.http_secret,
                        http_auth_hosts=args.http_auth_hosts,
                        s3_endpoint=args.s3_endpoint, gpus=args.gpus,
                        gpu_type=args.gpu_type, gpu_node_selector=selector, image=args.image,
                        gpu_image=args.gpu_image, resources=resources_with(changes),
                        train_machine_type=getattr(args, "train_machine_type", ""),
                        trainer_runtime=getattr(args, "trainer_runtime", "") or "imgclf-workers")
    audit_folds = getattr(args, "audit_folds", 0)
    if audit_folds and args.pipeline == "predict":
        raise ValueError("--audit-folds is for the training pipeline (an audit beside it) or the audit pipeline")
    if audit_folds and not 2 <= audit_folds <= MAX_FOLDS:
        raise ValueError(f"--audit-folds {audit_folds}: 0 (none) or 2 to {MAX_FOLDS}")
    extra = {"sweep": sweep} if sweep is not None else {}
    if args.pipeline == "training" and audit_folds:
        extra["audit_folds"] = audit_folds
    if args.pipeline == "audit" and audit_folds:
        extra["folds"] = audit_folds
    pipeline = _pipeline_builder(args.pipeline)(platform, **extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out


def _step_setting(what: str, text: str) -> tuple[str, str]:
    step, sep, value = text.partition("=")
    if not sep or not step or not value:
        raise ValueError(f"--{what} takes STEP=REQUEST[:LIMIT] (STEP a task name or all), got {text!r}")
    return step, what


def _pipeline_builder(name: str):
    from imgclf.pipelines.definitions.audit import build_audit_pipeline
    from imgclf.pipelines.definitions.prediction import build_prediction_pipeline
    from imgclf.pipelines.definitions.training import build_training_pipeline

    return {"training": build_training_pipeline, "predict": build_prediction_pipeline,
            "audit": build_audit_pipeline}[name]


def add_compile_options(p: argparse.ArgumentParser) -> None:
    from imgclf.pipelines.definitions.platform import DEFAULT_RESOURCES, KFP_MINIO_SECRET

    p.add_argument("--pipeline", choices=list(PIPELINES), default="training")
    add_sweep_argument(p)
    p.add_argument("--audit-folds", type=int, default=0, metavar="K",
                   help="training: also audit the labels with K fold trainings beside it (imgclf audit's pipeline; "
                        "its suspects are in the run's artifacts); audit: K folds instead of 5; 0: as compiled by "
                        "default")
    p.add_argument("--image", default="",
                   help="every task's image, pullable by the cluster (default: IMGCLF_IMAGE, else imgclf:VERSION)")
    p.add_argument("--gpu-image", default="",
                   help="the train task's image when it asks for GPUs (default: IMGCLF_GPU_IMAGE, else imgclf-gpu:VERSION)")
    p.add_argument("--allow-local-image", action="store_true",
                   help="compile with an unqualified image name (a kind or minikube cluster that has it loaded)")
    p.add_argument("--cpu", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]",
                   help="CPU for a task (or all), e.g. train=8 or train=4:8; repeatable. Defaults: "
                        + ", ".join(f"{n} {r.cpu_request}:{r.cpu_limit}" for n, r in DEFAULT_RESOURCES.items()))
    p.add_argument("--memory", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]",
                   help="memory for a task (or all), e.g. train=32Gi or train=16Gi:32Gi; repeatable")
    p.add_argument("--s3-secret", default=None,
                   help="KFP: Kubernetes secret mapped to AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY on every task "
                        f"(its keys accesskey/secretkey; default {KFP_MINIO_SECRET}; '' for none)")
    p.add_argument("--http-secret", default="",
                   help="KFP: Kubernetes secret whose key `token` becomes IMGCLF_HTTP_TOKEN on every task, the bearer "
                        "token for http(s) zip URLs and table rows (see docs/how-to/storage.md)")
    p.add_argument("--http-auth-hosts", default="", metavar="HOST[:PORT],...",
                   help="KFP: the hosts that token is sent to (IMGCLF_HTTP_AUTH_HOSTS on every task; not a secret)")
    p.add_argument("--s3-endpoint", default="", help="S3/MinIO endpoint URL set on every task (not a secret)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs requested by the train task (0: CPU only)")
    p.add_argument("--gpu-type", default="",
                   help="accelerator: KFP resource name (default nvidia.com/gpu) or Vertex type "
                        "(default NVIDIA_TESLA_T4; e.g. NVIDIA_L4)")
    p.add_argument("--gpu-node-selector", default="", metavar="LABEL=VALUE",
                   help="KFP: schedule the train task on nodes with this label")
    p.add_argument("--train-machine-type", default="", metavar="TYPE",
                   help="Vertex: each training worker's machine type when a run sets train_workers > 1 (default: "
                        "the smallest that fits the train task's CPU and memory limits and GPUs)")
    p.add_argument("--trainer-runtime", default="imgclf-workers", metavar="NAME",
                   help="KFP: the Kubeflow Trainer ClusterTrainingRuntime for train_workers > 1 (default: the one "
                        "in containers/trainer-runtime.yaml)")


def add_sweep_argument(p: argparse.ArgumentParser) -> None:
    """`--sweep FILE` for run, compile, submit and schedule (see pipelines/definitions/sweep.py)."""
    p.add_argument("--sweep", metavar="FILE", default="",
                   help="a YAML/JSON grid or seeded random sample over train options: trials run as a ParallelFor, "
                        "the best on validation is evaluated, exported, gated and published")


def sweep_of(args: argparse.Namespace, params: dict | None = None):
    """The checked sweep of `--sweep` (None without one); with `params`, checked with them too."""
    if not getattr(args, "sweep", ""):
        return None
    from imgclf.pipelines.definitions import sweep

    found = sweep.load(args.sweep)
    if params is not None:
        sweep.check_with(found, params)
    return found
