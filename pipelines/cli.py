"""`imgclf`: run the training pipeline locally, compile pipelines, predict with an exported model,
run one step, or build Fashion-MNIST folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import PIPELINES, remote_cli, steps_of  # light: nothing of kfp


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
    result = run_local(params, pipeline_root=args.pipeline_root, runner=runner, quiet=args.quiet, cache=args.cache)
    print(result.summary())
    return 0


def compile_package(args: argparse.Namespace, target: str, out: Path) -> Path:
    """Compile args.pipeline for `target` with the cluster settings the flags give (images, resources,
    GPUs, secrets), refusing settings a cluster could not use."""
    from kfp import compiler

    from pipelines.platform import KFP_MINIO_SECRET, Platform, cpu_image, gpu_image, image_problem, resources_with

    if args.gpus < 0:
        raise ValueError(f"--gpus {args.gpus}: must be 0 (CPU only) or more")
    secret = args.s3_secret if args.s3_secret is not None else (KFP_MINIO_SECRET if target == "kfp" else "")
    selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else ()
    if selector and len(selector) != 2:
        raise ValueError(f"--gpu-node-selector takes LABEL=VALUE, got {args.gpu_node_selector!r}")
    images = [("--image", args.image or cpu_image())] + ([("--gpu-image", args.gpu_image or gpu_image())]
                                                          if args.gpus and args.pipeline == "training" else [])
    for flag, name in images:
        if (problem := image_problem(name)) and not (args.allow_local_image and "unqualified" in problem):
            raise ValueError(f"{flag}: {problem}")
    changes = [(*_step_setting(flag, text), text.partition("=")[2]) for flag, given in
               (("cpu", args.cpu), ("memory", args.memory)) for text in given]
    platform = Platform(target=target, s3_secret=secret, s3_endpoint=args.s3_endpoint, gpus=args.gpus,
                        gpu_type=args.gpu_type, gpu_node_selector=selector, image=args.image,
                        gpu_image=args.gpu_image, resources=resources_with(changes))
    build = _pipeline_builder(args.pipeline)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(platform), str(out))
    return out


def _step_setting(what: str, text: str) -> tuple[str, str]:
    step, sep, value = text.partition("=")
    if not sep or not step or not value:
        raise ValueError(f"--{what} takes STEP=REQUEST[:LIMIT] (STEP a task name or all), got {text!r}")
    return step, what


def _pipeline_builder(name: str):
    from pipelines.prediction import build_prediction_pipeline
    from pipelines.training import build_training_pipeline

    return {"training": build_training_pipeline, "predict": build_prediction_pipeline}[name]


def _cmd_compile(args: argparse.Namespace) -> int:
    out = compile_package(args, args.target, Path(args.output or f"build/imgclf-{args.pipeline}.yaml"))
    print(f"compiled imgclf-{args.pipeline} ({args.target}) to {out}")
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


def _add_run(sub, given: dict) -> None:
    from components.lib.options import add_arguments
    from pipelines.declare import parameters
    from pipelines.training import STEPS

    run = sub.add_parser("run", help="run the whole pipeline locally with kfp.local on a folder of images",
                         description="Run the training pipeline locally; every parameter is checked first.")
    add_arguments(run.add_argument_group("pipeline parameters"), parameters(STEPS), given)
    run.add_argument("--pipeline-root", default="runs", help="local folder for all artifacts (default: runs)")
    run.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                     help="subprocess: tasks in this virtualenv; docker: tasks in the image IMGCLF_IMAGE names")
    run.add_argument("--network", choices=["auto", "none", "host", "bridge"], default="auto",
                     help="docker: the containers' network (auto: none if all inputs are local, else host)")
    run.add_argument("--params-file", help="pipeline parameters from a YAML or JSON mapping; flags given win")
    run.add_argument("--quiet", action="store_true",
                     help="show the steps' progress and the summary, not kfp.local's executor dumps")
    run.add_argument("--cache", action="store_true",
                     help="reuse a task's outputs from an earlier run under --pipeline-root when its inputs are "
                          "unchanged (content, not paths); tasks that read the registry always run")
    run.set_defaults(func=_cmd_run)


def add_compile_options(p: argparse.ArgumentParser) -> None:
    from pipelines.platform import DEFAULT_RESOURCES, KFP_MINIO_SECRET

    p.add_argument("--pipeline", choices=list(PIPELINES), default="training")
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
    p.add_argument("--s3-endpoint", default="", help="S3/MinIO endpoint URL set on every task (not a secret)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs requested by the train task (0: CPU only)")
    p.add_argument("--gpu-type", default="",
                   help="accelerator: KFP resource name (default nvidia.com/gpu) or Vertex type "
                        "(default NVIDIA_TESLA_T4; e.g. NVIDIA_L4)")
    p.add_argument("--gpu-node-selector", default="", metavar="LABEL=VALUE",
                   help="KFP: schedule the train task on nodes with this label")


def _add_compile(sub) -> None:
    comp = sub.add_parser("compile", help="compile a pipeline to KFP IR YAML")
    add_compile_options(comp)
    comp.add_argument("-o", "--output", help="default: build/imgclf-<pipeline>.yaml")
    comp.add_argument("--target", choices=["kfp", "vertex"], default="kfp",
                      help="kfp: Kubernetes settings as a second YAML document; vertex: one document")
    comp.set_defaults(func=_cmd_compile)


def _add_predict(sub) -> None:
    from components.lib.options import add_arguments
    from components.predict.options import PredictOptions

    pred = sub.add_parser("predict", help="classify images with an exported SavedModel (its serving signature)")
    add_arguments(pred, PredictOptions.declared())
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER_OR_URI")
    pred.add_argument("--output", default="", help="write .csv or .jsonl instead of printing a table")
    pred.set_defaults(func=_cmd_predict)


def build_parser(run_given: dict | None = None) -> argparse.ArgumentParser:
    from pipelines.sample_data import DEBIAN_IDX_DIR

    p = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    p.add_argument("--version", action="version", version=_versions())
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub, run_given or {})
    _add_compile(sub)
    remote_cli.add_parsers(sub)
    _add_predict(sub)
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


def _versions() -> str:
    from importlib import metadata

    from components import __version__

    def of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"imgclf {__version__} (kfp {of('kfp')}, tensorflow {of('tensorflow-cpu') if of('tensorflow') == 'not installed' else of('tensorflow')}, "
            f"keras {of('keras')}, Python {sys.version.split()[0]})")


def _params_file(argv: list[str]) -> dict:
    """`run --params-file F`: read before the parser is built, because its values become the flags'
    defaults (flags given on the command line still win)."""
    from pipelines import params
    from pipelines.declare import parameters
    from pipelines.training import STEPS

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--params-file=")), None)
    if path is None and "--params-file" in argv[:-1]:
        path = argv[argv.index("--params-file") + 1]
    if argv[:1] != ["run"] or path is None:
        return {}
    values = params.load_file(path)
    names = {o.name for o in parameters(STEPS)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) in {path}: {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["step"]:  # argparse's REMAINDER drops a leading -h/--flag: hand over verbatim
        from components.__main__ import main as step_main

        return step_main(argv[1:])
    try:
        args = build_parser(run_given=_params_file(argv)).parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"imgclf: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
