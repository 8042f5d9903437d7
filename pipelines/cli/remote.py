"""`imgclf submit | schedule | runs`: everything that talks to Kubeflow Pipelines or Vertex AI.

Every value is checked, and the package compiled, before a client is even built, so `--dry-run`
shows exactly what would be sent and a bad value never reaches a backend. `--output json` prints one
JSON document on stdout for scripts; the text form is for people.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path


def emitting(command):
    """Run `command` (which returns what to show as data and as text) with the clients' own prints
    (kfp.Client writes links to stdout) moved to stderr, so `--output json` leaves stdout pure JSON."""
    def run(args: argparse.Namespace) -> int:
        with contextlib.redirect_stdout(sys.stderr):
            data, text = command(args)
        print(json.dumps(data, indent=1, default=str) if args.output == "json" else text)
        return 0
    return run


def backend_class(args: argparse.Namespace):
    """The Backend class --backend names: the one place the CLI looks a backend up."""
    from imgclf.pipelines.remote.backends import BACKENDS

    return BACKENDS[args.backend]


def backend(args: argparse.Namespace):
    return backend_class(args).from_args(args)


def run_request(args: argparse.Namespace, package: str, values: dict):
    from imgclf.pipelines.remote.backends import RunRequest

    return RunRequest(package, f"imgclf-{args.pipeline}", values, pipeline_root=args.pipeline_root,
                      experiment=args.experiment, no_cache=args.no_cache, service_account=args.service_account,
                      labels=labels(args.labels), run_name=getattr(args, "run_name", ""))


def package_and_params(args: argparse.Namespace, tmp: str) -> tuple[str, dict]:
    """The compiled package and its parameters: the params file, then `name=value` on top, checked
    against the package's inputs and (for our own pipelines) against the steps' declarations."""
    from imgclf.pipelines import check_parameters
    from imgclf.pipelines.remote import params
    from imgclf.pipelines.remote.compiling import compile_package, sweep_of

    backend_class(args).check_request(args)
    if args.package and args.sweep:
        raise ValueError("--sweep compiles the sweep into the pipeline: give it or --package, not both")
    package = args.package or str(compile_package(args, args.backend, Path(tmp) / "pipeline.yaml"))
    file_values = params.load_file(args.params_file) if args.params_file else {}
    values = params.merged(package, file_values, args.params)
    if not args.package:  # our own pipeline: its declarations know every parameter
        check_parameters(values, args.pipeline)
        sweep_of(args, values)
    return package, values


def labels(text: str) -> dict:
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--labels takes key=value,key=value; got {text!r}")
    return dict(pairs)


def what_would_be_sent(args: argparse.Namespace, package: str, values: dict, **extra) -> dict:
    """The request a dry run shows: read back from the compiled package, as a backend would see it."""
    import yaml

    from imgclf.pipelines.remote.backends import pipeline_name

    with open(package, encoding="utf-8") as f:
        spec = next(yaml.safe_load_all(f))
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    tasks = {}
    for component in [spec["root"], *spec.get("components", {}).values()]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            comp = spec["components"].get(task["componentRef"]["name"], {})
            container = executors.get(comp.get("executorLabel", ""), {}).get("container")
            if container:
                tasks[name] = {"image": container["image"], "resources": container.get("resources", {}),
                               "caching": bool(task.get("cachingOptions", {}).get("enableCache")) and not args.no_cache}
    sent = {"backend": args.backend, "pipeline": pipeline_name(package), "parameters": values,
            "pipeline_root": args.pipeline_root or "", "service_account": args.service_account or "",
            "tasks": tasks, **extra}
    sent.update(backend_class(args).destination(args, labels(args.labels)))
    return sent


def _dry_run_text(sent: dict) -> str:
    lines = [f"dry run: nothing sent. Would send {sent['pipeline']} to {sent['backend']}:"]
    for key in ("host", "project", "region", "experiment", "run_name", "pipeline_root", "service_account",
                "schedule"):
        if sent.get(key):
            lines.append(f"  {key:<16}{sent[key]}")
    lines.append("  parameters:")
    lines += [f"    {k} = {v!r}" for k, v in sent["parameters"].items()]
    lines.append("  tasks (image, cpu and memory request/limit):")
    for name, t in sent["tasks"].items():
        r = t["resources"]
        res = (f"cpu {r.get('resourceCpuRequest', '-')}/{r.get('resourceCpuLimit', '-')}, memory "
               f"{r.get('resourceMemoryRequest', '-')}/{r.get('resourceMemoryLimit', '-')}") if r else "no resources set"
        acc = r.get("accelerator", {})
        gpu = f", {acc.get('resourceCount', acc.get('count', ''))} x {acc.get('resourceType', acc.get('type', ''))}" \
            if acc else ""
        lines.append(f"    {name:<18}{t['image']}  {res}{gpu}{'' if t['caching'] else '  (no cache)'}")
    return "\n".join(lines)


def cmd_submit(args: argparse.Namespace) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        package, values = package_and_params(args, tmp)   # checked before anything is sent
        if args.dry_run:
            sent = what_would_be_sent(args, package, values, run_name=args.run_name or "")
            return sent, _dry_run_text(sent)
        result = backend(args).submit(run_request(args, package, values), args.wait, args.timeout)
    return ({"run_id": result.run_id, "state": result.state, "url": result.url},
            f"submitted run {result.run_id}" + (f"\n  {result.url}" if result.url else "")
            + (f"\nfinished {result.state}" if args.wait else ""))


def cmd_schedule(args: argparse.Namespace) -> tuple:
    if args.action == "create":
        return _create_schedule(args)
    client = backend(args)
    if args.action == "list":
        rows = client.list_schedules(args.experiment)
        text = [f"{'id':<40} {'name':<30} {'status':<10} trigger"]
        text += [f"{r['id']:<40} {r['name']:<30} {r['status']:<10} {r['trigger']}" for r in rows]
        return rows, "\n".join([*text, f"{len(rows)} schedule(s)"])
    client.delete_schedule(args.schedule_id)
    return {"deleted": args.schedule_id}, f"deleted schedule {args.schedule_id}"


def _create_schedule(args: argparse.Namespace) -> tuple:
    backend_class(args).check_schedule(args)   # --cron and the rest, validated before anything is sent
    with tempfile.TemporaryDirectory() as tmp:
        package, values = package_and_params(args, tmp)
        if args.dry_run:
            trigger = f"cron {args.cron}" if args.cron else f"every {args.interval} s"
            pinned = "the newest pipeline version at each run" if args.latest else "the pipeline version uploaded now"
            sent = what_would_be_sent(args, package, values,
                                      schedule=f"{trigger}, at most {args.max_concurrency} at once, runs {pinned}")
            return sent, _dry_run_text(sent)
        sid = backend(args).create_schedule(run_request(args, package, values), args.cron, args.interval,
                                            args.max_concurrency, latest=args.latest)
    return {"schedule_id": sid}, f"created schedule {sid}"


def cmd_runs(args: argparse.Namespace) -> tuple:
    client = backend(args)
    if args.action == "list":
        rows = client.list_runs(args.experiment, args.limit)
        text = [f"{'id':<44} {'state':<28} {'created':<26} name"]
        text += [f"{r['id']:<44} {r['state']:<28} {r['created']:<26} {r['name']}" for r in rows]
        return rows, "\n".join([*text, f"{len(rows)} run(s)"])
    if args.action == "get":
        run = client.get_run(args.run_id)
        text = [f"run {run['id']}: {run['name']}", f"  state    {run['state']}", f"  created  {run['created']}",
                f"  finished {run['finished'] or '-'}", f"  url      {run['url']}"]
        if run["error"]:
            text.append(f"  error    {run['error']}")
        text += ["  parameters:"] + [f"    {k} = {v!r}" for k, v in run["parameters"].items()]
        text += ["  tasks:"] + [f"    {t['name']:<24} {t['state']:<12} {t['error']}" for t in run["tasks"]]
        return run, "\n".join(text)
    if args.action == "logs":
        tasks = client.logs(args.run_id, args.namespace)
        text = []
        for t in tasks:
            text.append(f"=== {t['name']}: {t['state']}" + (f" ({t['error']})" if t["error"] else ""))
            text += [f"--- {where}\n{log}" for where, log in t["logs"].items()]
        return tasks, "\n".join(text) or "no tasks yet"
    client.cancel(args.run_id)
    return {"cancelled": args.run_id}, f"cancel requested for run {args.run_id}"


def add_backend_options(p: argparse.ArgumentParser, sends: bool = True) -> None:
    from imgclf.pipelines.remote.backends import BACKENDS
    from imgclf.pipelines.remote.compiling import add_compile_options

    p.add_argument("--backend", choices=list(BACKENDS), required=True)
    p.add_argument("--host", help="KFP: API endpoint, e.g. http://localhost:8080 (default: in-cluster)")
    p.add_argument("--token", help="KFP: bearer token (or IMGCLF_KFP_TOKEN; default: in-cluster credentials)")
    p.add_argument("--namespace", help="KFP (multi-user): the profile namespace")
    p.add_argument("--experiment", default="imgclf" if sends else None, help="KFP experiment")
    p.add_argument("--project", help="Vertex: Google Cloud project")
    p.add_argument("--region", help="Vertex: region, e.g. us-central1")
    p.add_argument("--api-endpoint", help="Vertex: API endpoint (Private Service Connect); uses REST")
    p.add_argument("--output", choices=["text", "json"], default="text", help="json: one JSON document, for scripts")
    if sends:
        add_compile_options(p)
        p.add_argument("--package", help="a compiled pipeline YAML to send instead of compiling one now")
        p.add_argument("--pipeline-root", help="where artifacts go: minio://, s3:// (KFP) or gs:// (both)")
        p.add_argument("--service-account", help="the run's service account (KSA on KFP, GSA on Vertex)")
        p.add_argument("--labels", default="", help="Vertex: key=value,key=value")
        p.add_argument("--params-file", help="pipeline parameters from a YAML or JSON mapping; name=value wins")
        p.add_argument("--dry-run", action="store_true",
                       help="compile and check everything, show what would be sent, send nothing")
        p.add_argument("params", nargs="*", metavar="param=value",
                       help="pipeline parameters, checked against the pipeline and the steps' declarations")


def add_parsers(sub) -> None:
    sm = sub.add_parser("submit", help="submit a run to Kubeflow Pipelines or Vertex AI Pipelines")
    add_backend_options(sm)
    sm.add_argument("--run-name", default="", help="the run's display name (default: pipeline name and time)")
    sm.add_argument("--no-cache", action="store_true", help="run every task, even if a cached result exists")
    sm.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it succeeds")
    sm.add_argument("--timeout", type=int, default=24 * 3600, help="seconds to wait (KFP)")
    sm.set_defaults(func=emitting(cmd_submit))

    sch = sub.add_parser("schedule", help="create, list or delete recurring runs (retraining)")
    actions = sch.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="schedule the pipeline (cron or interval)")
    add_backend_options(create)
    create.add_argument("--cron", help="five fields, e.g. '0 3 * * *'; Vertex also takes 'TZ=Europe/Berlin 0 3 * * *'")
    create.add_argument("--interval", type=int, help="KFP: seconds between runs instead of --cron")
    create.add_argument("--max-concurrency", type=int, default=1)
    create.add_argument("--latest", action="store_true",
                        help="KFP: run the newest pipeline version each time (default: the version uploaded now, "
                             "so a later ad-hoc submit cannot change scheduled retraining)")
    create.set_defaults(no_cache=False)
    listing = actions.add_parser("list", help="list schedules")
    add_backend_options(listing, sends=False)
    delete = actions.add_parser("delete", help="delete a schedule by id")
    add_backend_options(delete, sends=False)
    delete.add_argument("schedule_id")
    sch.set_defaults(func=emitting(cmd_schedule))

    runs = sub.add_parser("runs", help="list, inspect, follow the logs of, or cancel submitted runs")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the newest runs first")
    add_backend_options(listing, sends=False)
    listing.add_argument("--limit", type=int, default=20)
    for name, text in (("get", "one run: state, parameters, tasks"), ("logs", "each task's state, error and logs"),
                       ("cancel", "stop a run")):
        action = actions.add_parser(name, help=text)
        add_backend_options(action, sends=False)
        action.add_argument("run_id", help="KFP run id, or Vertex pipeline job id or resource name")
    runs.set_defaults(func=emitting(cmd_runs))
