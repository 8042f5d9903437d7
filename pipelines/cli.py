"""`imgclf`: run the training pipeline locally, compile pipelines, predict with an exported model,
run one step, or build Fashion-MNIST folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import PIPELINES, steps_of  # noqa: E402 - light: nothing of kfp
from pipelines.deploy_cli import add_deploy_parser


def check_parameters(values: dict, pipeline: str = "training", check_paths: bool = False) -> dict:
    """Every value checked against the steps' declarations before anything runs or is sent."""
    from components import steps
    from components.lib.options import validate

    return validate(values, *steps.pipeline_options(list(steps_of(pipeline))), check_paths=check_paths,
                    pipeline_only=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.declare import parameters
    from pipelines.local import run_local
    from pipelines.training import STEPS

    names = {o.name for o in parameters(STEPS)}
    params = check_parameters({k: v for k, v in vars(args).items() if k in names}, check_paths=True)
    runner = None
    if args.runner == "docker":
        from components.kfp_glue.wrappers import IMAGE
        from pipelines.docker_local import docker_runner

        runner, params = docker_runner(params, IMAGE, network=args.network)
    result = run_local(params, pipeline_root=args.pipeline_root, runner=runner)
    print(result.summary())
    return 0


def _compile(args: argparse.Namespace, target: str, out: Path) -> Path:
    from kfp import compiler

    from pipelines.platform import KFP_MINIO_SECRET, Platform
    from pipelines.prediction import build_prediction_pipeline
    from pipelines.training import build_training_pipeline

    if args.gpus < 0:
        raise ValueError(f"--gpus {args.gpus}: must be 0 (CPU only) or more")
    secret = args.s3_secret if args.s3_secret is not None else (KFP_MINIO_SECRET if target == "kfp" else "")
    selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else ()
    if selector and len(selector) != 2:
        raise ValueError(f"--gpu-node-selector takes LABEL=VALUE, got {args.gpu_node_selector!r}")
    platform = Platform(target=target, s3_secret=secret, s3_endpoint=args.s3_endpoint, gpus=args.gpus,
                        gpu_type=args.gpu_type, gpu_node_selector=selector)
    build = {"training": build_training_pipeline, "predict": build_prediction_pipeline}[args.pipeline]
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(platform), str(out))
    return out


def _cmd_compile(args: argparse.Namespace) -> int:
    out = _compile(args, args.target, Path(args.output or f"build/imgclf-{args.pipeline}.yaml"))
    print(f"compiled imgclf-{args.pipeline} ({args.target}) to {out}")
    return 0


def _backend(args: argparse.Namespace):
    from pipelines.backends import Kfp, Vertex

    if args.backend == "kfp":
        return Kfp(args.host, token=args.token, namespace=args.namespace)
    if not args.project or not args.region:
        raise ValueError("--backend vertex needs --project and --region")
    return Vertex(args.project, args.region, api_endpoint=args.api_endpoint)


def _package_and_params(args: argparse.Namespace, tmp: str) -> tuple[str, dict]:
    from pipelines import params

    package = args.package or str(_compile(args, args.backend, Path(tmp) / "pipeline.yaml"))
    values = params.parse(package, args.params)
    if not args.package:  # our own pipeline: its declarations know every parameter
        check_parameters(values, args.pipeline)
    return package, values


def _labels(text: str) -> dict:
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--labels takes key=value,key=value; got {text!r}")
    return dict(pairs)


def _cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        package, values = _package_and_params(args, tmp)   # checked before anything is sent
        backend = _backend(args)
        if args.backend == "kfp":
            result = backend.submit(package, f"imgclf-{args.pipeline}", args.experiment, values, args.pipeline_root,
                                    args.no_cache, args.wait, args.timeout, args.service_account)
        else:
            result = backend.submit(package, values, args.pipeline_root or "", args.no_cache, args.wait,
                                    args.service_account, _labels(args.labels))
    print(f"submitted run {result.run_id}" + (f": {result.url}" if result.url else "")
          + (f"; finished {result.state}" if args.wait else ""))
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    import tempfile

    if args.action == "create":
        with tempfile.TemporaryDirectory() as tmp:
            package, values = _package_and_params(args, tmp)
            if args.backend == "vertex" and args.interval:
                raise ValueError("Vertex schedules are cron only: use --cron")
            from pipelines import cron

            if args.cron:  # validated before anything is sent
                (cron.for_kfp if args.backend == "kfp" else cron.for_vertex)(args.cron)
            backend = _backend(args)
            if args.backend == "kfp":
                sid = backend.create_schedule(package, f"imgclf-{args.pipeline}", args.experiment, values,
                                              args.pipeline_root, args.cron, args.interval, args.max_concurrency,
                                              args.service_account)
            else:
                sid = backend.create_schedule(package, f"imgclf-{args.pipeline}", values, args.pipeline_root or "",
                                              args.cron, args.max_concurrency, args.service_account,
                                              _labels(args.labels))
        print(f"created schedule {sid}")
    elif args.action == "list":
        backend = _backend(args)
        rows = backend.list_schedules(args.experiment) if args.backend == "kfp" else backend.list_schedules()
        print(f"{'id':<40} {'name':<30} {'status':<10} trigger")
        for r in rows:
            print(f"{r['id']:<40} {r['name']:<30} {r['status']:<10} {r['trigger']}")
        print(f"{len(rows)} schedule(s)")
    else:
        _backend(args).delete_schedule(args.schedule_id)
        print(f"deleted schedule {args.schedule_id}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from components.predict.step import format_table, predict

    from components.predict.options import PredictOptions

    result = predict(inputs=args.inputs, output=args.output, keep_rows=not args.output,
                     **PredictOptions.pick(vars(args)))
    if not args.output:
        print(format_table(result.rows))
    print(f"\n{result.predicted} classified, {result.failed} failed in {result.seconds:.1f} s; class counts: "
          + ", ".join(f"{c} {n}" for c, n in result.class_counts.items()))
    return 0 if result.predicted or not result.failed else 1


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from pipelines.sample_data import build_folder

    counts = build_folder(args.out, per_class=args.per_class, seed=args.seed, idx_dir=args.idx_dir)
    print(f"wrote {sum(counts.values())} PNG images in {len(counts)} class folders under {args.out}")
    return 0


def _add_run(sub) -> None:
    from components.lib.options import add_arguments
    from pipelines.declare import parameters
    from pipelines.training import STEPS

    run = sub.add_parser("run", help="run the whole pipeline locally with kfp.local on a folder of images",
                         description="Run the training pipeline locally; every parameter is checked first.")
    add_arguments(run.add_argument_group("pipeline parameters"), parameters(STEPS))
    run.add_argument("--pipeline-root", default="runs", help="local folder for all artifacts (default: runs)")
    run.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                     help="subprocess: tasks in this virtualenv; docker: tasks in the image IMGCLF_IMAGE names")
    run.add_argument("--network", choices=["auto", "none", "host", "bridge"], default="auto",
                     help="docker: the containers' network (auto: none if all inputs are local, else host)")
    run.set_defaults(func=_cmd_run)


def _compile_options(p: argparse.ArgumentParser) -> None:
    from pipelines.platform import KFP_MINIO_SECRET

    p.add_argument("--pipeline", choices=list(PIPELINES), default="training")
    p.add_argument("--s3-secret", default=None,
                   help="KFP: Kubernetes secret mapped to AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY on every task "
                        f"(its keys accesskey/secretkey; default {KFP_MINIO_SECRET}; '' for none)")
    p.add_argument("--s3-endpoint", default="", help="S3/MinIO endpoint URL set on every task (not a secret)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs requested by the train task (0: CPU only)")
    p.add_argument("--gpu-type", default="",
                   help="accelerator: KFP resource name (default nvidia.com/gpu) or Vertex type "
                        "(default NVIDIA_TESLA_T4; e.g. NVIDIA_L4)")
    p.add_argument("--gpu-node-selector", default="", metavar="LABEL=VALUE",
                   help="KFP: schedule the train task on nodes with this label")


def _backend_options(p: argparse.ArgumentParser, run_options: bool = True) -> None:
    p.add_argument("--backend", choices=["kfp", "vertex"], required=True)
    p.add_argument("--host", help="KFP: API endpoint, e.g. http://localhost:8080 (default: in-cluster)")
    p.add_argument("--token", help="KFP: bearer token (or IMGCLF_KFP_TOKEN; default: in-cluster credentials)")
    p.add_argument("--namespace", help="KFP (multi-user): the profile namespace")
    p.add_argument("--experiment", default="imgclf" if run_options else None, help="KFP experiment")
    p.add_argument("--project", help="Vertex: Google Cloud project")
    p.add_argument("--region", help="Vertex: region, e.g. us-central1")
    p.add_argument("--api-endpoint", help="Vertex: API endpoint (Private Service Connect); uses REST")
    if run_options:
        _compile_options(p)
        p.add_argument("--package", help="a compiled pipeline YAML to send instead of compiling one now")
        p.add_argument("--pipeline-root", help="where artifacts go: minio://, s3:// (KFP) or gs:// (both)")
        p.add_argument("--service-account", help="the run's service account (KSA on KFP, GSA on Vertex)")
        p.add_argument("--labels", default="", help="Vertex: key=value,key=value")
        p.add_argument("params", nargs="*", metavar="param=value",
                       help="pipeline parameters, checked against the pipeline and the steps' declarations")


def _add_compile_submit_schedule(sub) -> None:
    comp = sub.add_parser("compile", help="compile a pipeline to KFP IR YAML")
    _compile_options(comp)
    comp.add_argument("-o", "--output", help="default: build/imgclf-<pipeline>.yaml")
    comp.add_argument("--target", choices=["kfp", "vertex"], default="kfp",
                      help="kfp: Kubernetes settings as a second YAML document; vertex: one document")
    comp.set_defaults(func=_cmd_compile)

    sm = sub.add_parser("submit", help="submit a run to Kubeflow Pipelines or Vertex AI Pipelines")
    _backend_options(sm)
    sm.add_argument("--no-cache", action="store_true", help="run every task, even if a cached result exists")
    sm.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it succeeds")
    sm.add_argument("--timeout", type=int, default=24 * 3600, help="seconds to wait (KFP)")
    sm.set_defaults(func=_cmd_submit)

    sch = sub.add_parser("schedule", help="create, list or delete recurring runs (retraining)")
    actions = sch.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="schedule the pipeline (cron or interval)")
    _backend_options(create)
    create.add_argument("--cron", help="five fields, e.g. '0 3 * * *'; Vertex also takes 'TZ=Europe/Berlin 0 3 * * *'")
    create.add_argument("--interval", type=int, help="KFP: seconds between runs instead of --cron")
    create.add_argument("--max-concurrency", type=int, default=1)
    listing = actions.add_parser("list", help="list schedules")
    _backend_options(listing, run_options=False)
    delete = actions.add_parser("delete", help="delete a schedule by id")
    _backend_options(delete, run_options=False)
    delete.add_argument("schedule_id")
    sch.set_defaults(func=_cmd_schedule)


def _add_predict(sub) -> None:
    from components.lib.options import add_arguments
    from components.predict.options import PredictOptions

    pred = sub.add_parser("predict", help="classify images with an exported SavedModel (its serving signature)")
    add_arguments(pred, PredictOptions.declared())
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER_OR_URI")
    pred.add_argument("--output", default="", help="write .csv or .jsonl instead of printing a table")
    pred.set_defaults(func=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.sample_data import DEBIAN_IDX_DIR

    p = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_compile_submit_schedule(sub)
    _add_predict(sub)
    add_deploy_parser(sub)
    step = sub.add_parser("step", help="run one step's function directly (see `imgclf step -h`)",
                          add_help=False)
    step.add_argument("rest", nargs=argparse.REMAINDER)
    data = sub.add_parser("sample-data", help="write Fashion-MNIST as class-per-subfolder PNGs")
    data.add_argument("--out", required=True)
    data.add_argument("--per-class", type=int, default=500, help="images per class; 0 = all 70,000")
    data.add_argument("--seed", type=int, default=42)
    data.add_argument("--idx-dir", default=DEBIAN_IDX_DIR)
    data.set_defaults(func=_cmd_sample_data)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["step"]:  # argparse's REMAINDER drops a leading -h/--flag: hand over verbatim
        from components.__main__ import main as step_main

        return step_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"imgclf: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
