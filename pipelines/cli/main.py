"""`imgclf`: run the training pipeline locally, compile pipelines, predict with an exported model,
run one step, check or repair a model registry, or build Fashion-MNIST folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.pipelines.cli import remote as remote_cli
from imgclf.pipelines.cli.deploy import add_deploy_parser
from imgclf.pipelines.definitions.platform import TARGETS
from imgclf.pipelines.local import RUNNERS  # light: no kfp, no docker
from imgclf.pipelines.local.docker_runner import NETWORKS
from imgclf.pipelines.remote import compiling


def _cmd_run(args: argparse.Namespace) -> int:
    if args.runner != "docker":
        from imgclf.pipelines.local.preloaded_tasks import start_early

        start_early()  # first thing: the preloading overlaps building the pipeline
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.definitions.training import STEPS
    from imgclf.pipelines.local.run import run_checked

    names = {o.name for o in parameters(STEPS)}
    result = run_checked({k: v for k, v in vars(args).items() if k in names}, pipeline_root=args.pipeline_root,
                         runner=args.runner, network=args.network, quiet=args.quiet, cache=args.cache,
                         sweep=args.sweep)
    print(result.summary())
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from imgclf.pipelines.definitions.audit import STEPS
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.local.audit import run_audit

    names = {o.name for o in parameters(STEPS)}
    result = run_audit({k: v for k, v in vars(args).items() if k in names}, args.output_dir, folds=args.folds,
                       pipeline_root=args.pipeline_root, runner=args.runner, network=args.network, quiet=args.quiet)
    print(result.text())
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    out = compiling.compile_package(args, args.target, Path(args.output or f"build/imgclf-{args.pipeline}.yaml"))
    print(f"compiled imgclf-{args.pipeline} ({args.target}) to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgclf.components.predict.options import PredictOptions
    from imgclf.components.predict.step import format_table, predict

    result = predict(inputs=args.inputs, output=args.output, keep_rows=not args.output,
                     **PredictOptions.pick(vars(args)))
    if not args.output:
        print(format_table(result.rows))
    print(f"\n{result.predicted} classified, {result.failed} failed in {result.seconds:.1f} s; class counts: "
          + ", ".join(f"{c} {n}" for c, n in result.class_counts.items()))
    return 0 if result.predicted or not result.failed else 1


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from imgclf.pipelines.local.sample_data import build_folder

    counts = build_folder(args.out, per_class=args.per_class, seed=args.seed, idx_dir=args.idx_dir)
    print(f"wrote {sum(counts.values())} PNG images in {len(counts)} class folders under {args.out}")
    return 0


def _cmd_registry_check(args: argparse.Namespace) -> int:
    from imgclf.components.lib import registry

    if args.location and args.registry:
        raise ValueError("give REGISTRY/NAME or --registry (with --model-name), not both")
    if args.location:
        reg, _, name = args.location.rstrip("/").rpartition("/")
        if not reg or reg.endswith(":/") or not name:
            raise ValueError(f"{args.location!r}: expected REGISTRY/NAME, e.g. s3://bucket/registry/imgclf")
    elif args.registry:
        reg, name = args.registry, args.model_name
    else:
        raise ValueError("which registry? give REGISTRY/NAME, or --registry R [--model-name N]")
    result = registry.check(reg, name, repair=args.repair, set_champion=args.champion, grace_s=args.grace)
    for line in result.lines():
        print(line)
    return 0 if result.clean else 1


def _add_registry(sub) -> None:
    reg = sub.add_parser("registry", help="check a model registry for what a killed publish left, and repair it")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    chk = rsub.add_parser(
        "check", help="report (and with --repair fix) leftovers, an unmoved pointer, a stale models.config",
        description="Check one model of a registry: staging and partly copied version folders a killed publish "
                    "left, a complete version newer than the champion (its publish stopped before moving the "
                    "pointer), a models.config that does not pin the champion, a damaged champion record. One "
                    "line per finding; exit status 0 when clean (or all repaired), 1 otherwise. Without --repair "
                    "nothing is changed.")
    chk.add_argument("location", nargs="?", metavar="REGISTRY/NAME",
                     help="the model's folder, e.g. s3://bucket/registry/imgclf (or --registry and --model-name)")
    chk.add_argument("--registry", default="", help="the registry: local folder, gs:// or s3:// prefix")
    chk.add_argument("--model-name", default="imgclf", help="the model's folder in the registry (default: imgclf)")
    chk.add_argument("--repair", action="store_true",
                     help="remove leftovers, make a complete newer version the champion, rewrite models.config")
    chk.add_argument("--champion", type=int, metavar="N",
                     help="with --repair: point the champion record at complete version N: repairs a "
                          "damaged or missing record (never done without it) or rolls back by hand (later "
                          "repairs do not roll forward past it)")
    chk.add_argument("--grace", type=float, metavar="SECONDS",
                     help="leftovers of a publish claimed less than this long ago may still be running and are "
                          "left alone (default: IMGCLF_REGISTRY_GRACE_SECONDS, else 3600); 0 when nothing publishes")
    chk.set_defaults(func=_cmd_registry_check)


def _add_run(sub, given: dict) -> None:
    from imgclf.components.lib.options import add_arguments
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.definitions.training import STEPS

    run = sub.add_parser("run", help="run the whole pipeline locally with kfp.local on a folder of images",
                         description="Run the training pipeline locally; every parameter is checked first.")
    add_arguments(run.add_argument_group("pipeline parameters"), parameters(STEPS), given)
    _add_local_flags(run)
    run.add_argument("--params-file", help="pipeline parameters from a YAML or JSON mapping; flags given win")
    compiling.add_sweep_argument(run)
    run.add_argument("--cache", action="store_true",
                     help="reuse a task's outputs from an earlier run under --pipeline-root when its inputs are "
                          "unchanged (content, not paths); tasks that read the registry always run")
    run.set_defaults(func=_cmd_run)


def _add_audit(sub) -> None:
    from imgclf.components.audit.options import AuditOptions
    from imgclf.components.lib.options import add_arguments
    from imgclf.pipelines.definitions.audit import STEPS
    from imgclf.pipelines.definitions.declare import parameters

    folds = next(o for o in AuditOptions.declared() if o.name == "audit_folds")
    audit = sub.add_parser("audit", help="find likely label errors: K fold models score every train and validation "
                                         "image out-of-fold, cleanlab ranks them",
                           description="Run the audit pipeline locally: suspects.csv (most suspicious first) and "
                                       "suspects.html are written to --output-dir. Takes run's data, preprocessing "
                                       "and training options.")
    add_arguments(audit.add_argument_group("pipeline parameters"), parameters(STEPS), {})
    audit.add_argument("--output-dir", required=True, help="where suspects.csv, suspects.html, scores.csv and "
                                                           "audit.json are copied")
    audit.add_argument("--folds", type=int, default=folds.default, help=f"{folds.help} (default: {folds.default})")
    _add_local_flags(audit)
    audit.set_defaults(func=_cmd_audit)


def _add_local_flags(p: argparse.ArgumentParser) -> None:
    """How a pipeline runs on this machine: `imgclf run` and `imgclf audit` alike."""
    p.add_argument("--pipeline-root", default="runs", help="local folder for all artifacts (default: runs)")
    p.add_argument("--runner", choices=RUNNERS, default="subprocess",
                   help="subprocess: tasks in this virtualenv; docker: tasks in the image IMGCLF_IMAGE names")
    p.add_argument("--network", choices=NETWORKS, default="auto",
                   help="docker: the containers' network (auto: none if all inputs are local, else host)")
    p.add_argument("--quiet", action="store_true",
                   help="show the steps' progress and the summary, not kfp.local's executor dumps")


def _add_compile(sub) -> None:
    comp = sub.add_parser("compile", help="compile a pipeline to KFP IR YAML")
    compiling.add_compile_options(comp)
    comp.add_argument("-o", "--output", help="default: build/imgclf-<pipeline>.yaml")
    comp.add_argument("--target", choices=TARGETS, default="kfp",
                      help="kfp: Kubernetes settings as a second YAML document; vertex: one document")
    comp.set_defaults(func=_cmd_compile)


def _add_predict(sub) -> None:
    from imgclf.components.lib.options import add_arguments
    from imgclf.components.predict.options import PredictOptions

    pred = sub.add_parser("predict", help="classify images with an exported SavedModel (its serving signature)")
    add_arguments(pred, PredictOptions.declared())
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER_OR_URI")
    pred.add_argument("--output", default="", help="write .csv or .jsonl instead of printing a table")
    pred.set_defaults(func=_cmd_predict)


def build_parser(run_given: dict | None = None) -> argparse.ArgumentParser:
    from imgclf.pipelines.local.sample_data import DEBIAN_IDX_DIR

    p = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    p.add_argument("--version", action="version", version=_versions())
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub, run_given or {})
    _add_audit(sub)
    _add_compile(sub)
    remote_cli.add_parsers(sub)
    _add_predict(sub)
    add_deploy_parser(sub)
    _add_registry(sub)
    step = sub.add_parser("step", help="run one step's function directly (see `imgclf step -h`)",
                          add_help=False)
    step.add_argument("rest", nargs=argparse.REMAINDER)
    lr = sub.add_parser("lr-find", help="learning-rate range test on preprocessed records: a suggested "
                                        "learning_rate and its curve (= `imgclf step lr_find`, see its -h)",
                        add_help=False)
    lr.add_argument("rest", nargs=argparse.REMAINDER)
    data = sub.add_parser("sample-data", help="write Fashion-MNIST as class-per-subfolder PNGs")
    data.add_argument("--out", required=True)
    data.add_argument("--per-class", type=int, default=500, help="images per class; 0 = all 70,000")
    data.add_argument("--seed", type=int, default=42)
    data.add_argument("--idx-dir", default=DEBIAN_IDX_DIR)
    data.set_defaults(func=_cmd_sample_data)
    return p


def _versions() -> str:
    from importlib import metadata

    from imgclf.components import __version__

    def of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    tensorflow = of("tensorflow-cpu") if of("tensorflow") == "not installed" else of("tensorflow")
    return (f"imgclf {__version__} (kfp {of('kfp')}, tensorflow {tensorflow}, "
            f"keras {of('keras')}, Python {sys.version.split()[0]})")


def _params_file(argv: list[str]) -> dict:
    """`run --params-file F`: read before the parser is built, because its values become the flags'
    defaults (flags given on the command line still win)."""
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.definitions.training import STEPS
    from imgclf.pipelines.remote import params

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
    if argv[:1] in (["step"], ["lr-find"]):  # argparse's REMAINDER drops a leading -h/--flag: hand over verbatim
        from imgclf.components.__main__ import main as step_main

        return step_main(argv[1:] if argv[0] == "step" else ["lr_find", *argv[1:]], prog="imgclf step")
    try:
        args = build_parser(run_given=_params_file(argv)).parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        from imgclf.components.lib.storage import redact

        print(f"imgclf: error: {redact(str(e))}", file=sys.stderr)  # a URI it names may carry user-info
        return 1


if __name__ == "__main__":
    sys.exit(main())
