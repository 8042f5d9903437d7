"""`imgclf`: run the training pipeline locally, compile pipelines, predict with an exported model,
run one step, or build Fashion-MNIST folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

def _cmd_run(args: argparse.Namespace) -> int:
    import inspect

    from pipelines.local import run_local
    from pipelines.training import training_pipeline

    names = inspect.signature(training_pipeline.pipeline_func).parameters
    params = {k: v for k, v in vars(args).items() if k in names}
    result = run_local(params, pipeline_root=args.pipeline_root)
    print(result.summary())
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.platform import KFP_MINIO_SECRET, Platform
    from pipelines.prediction import build_prediction_pipeline
    from pipelines.training import build_training_pipeline

    secret = args.s3_secret if args.s3_secret is not None else (KFP_MINIO_SECRET if args.target == "kfp" else "")
    selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else ()
    if selector and len(selector) != 2:
        raise ValueError(f"--gpu-node-selector takes LABEL=VALUE, got {args.gpu_node_selector!r}")
    platform = Platform(target=args.target, s3_secret=secret, s3_endpoint=args.s3_endpoint, gpus=args.gpus,
                        gpu_type=args.gpu_type, gpu_node_selector=selector)
    build = {"training": build_training_pipeline, "predict": build_prediction_pipeline}[args.pipeline]
    pipeline = build(platform)
    out = Path(args.output or f"build/imgclf-{args.pipeline}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    print(f"compiled {pipeline.name} to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from components.predict import format_table, predict

    result = predict(args.model, args.inputs, output=args.output, top_k=args.top_k, batch_size=args.batch_size,
                     keep_rows=not args.output)
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


def build_parser() -> argparse.ArgumentParser:
    from components.cli_args import add_signature_args
    from pipelines.platform import KFP_MINIO_SECRET
    from pipelines.sample_data import DEBIAN_IDX_DIR
    from pipelines.training import training_pipeline

    p = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally with kfp.local on a folder of images")
    add_signature_args(run, training_pipeline.pipeline_func)
    run.add_argument("--pipeline-root", default="runs", help="local folder for all artifacts (default: runs)")
    run.set_defaults(func=_cmd_run)

    comp = sub.add_parser("compile", help="compile a pipeline to KFP IR YAML")
    comp.add_argument("--pipeline", choices=["training", "predict"], default="training")
    comp.add_argument("-o", "--output", help="default: build/imgclf-<pipeline>.yaml")
    comp.add_argument("--target", choices=["kfp", "vertex"], default="kfp",
                      help="kfp: Kubernetes settings as a second YAML document; vertex: one document")
    comp.add_argument("--s3-secret", default=None,
                      help="KFP: Kubernetes secret mapped to AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY on every task "
                           f"(its keys accesskey/secretkey; default {KFP_MINIO_SECRET}; '' for none)")
    comp.add_argument("--gpus", type=int, default=1, help="GPUs requested by the train task (0: CPU only)")
    comp.add_argument("--gpu-type", default="",
                      help="accelerator: KFP resource name (default nvidia.com/gpu) or Vertex type "
                           "(default NVIDIA_TESLA_T4; e.g. NVIDIA_L4)")
    comp.add_argument("--gpu-node-selector", default="", metavar="LABEL=VALUE",
                      help="KFP: schedule the train task on nodes with this label")
    comp.add_argument("--s3-endpoint", default="", help="S3/MinIO endpoint URL set on every task (not a secret)")
    comp.set_defaults(func=_cmd_compile)

    pred = sub.add_parser("predict", help="classify images with an exported SavedModel (its serving signature)")
    pred.add_argument("--model", required=True, help="the export step's saved_model folder (local, gs://, s3://)")
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER_OR_URI")
    pred.add_argument("--output", default="", help="write .csv or .jsonl instead of printing a table")
    pred.add_argument("--top-k", type=int, default=3)
    pred.add_argument("--batch-size", type=int, default=64)
    pred.set_defaults(func=_cmd_predict)

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
