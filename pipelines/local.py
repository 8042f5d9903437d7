"""Run the training pipeline on this machine with kfp.local: SubprocessRunner (this virtualenv) or
DockerRunner (our image; see pipelines/docker_local.py)."""
from __future__ import annotations

import contextlib
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.training import training_pipeline


class PipelineFailed(RuntimeError):
    """A task failed; kfp.local already streamed its log (with the step's own error) above."""

    def __init__(self, kfp_message: str):
        plain = re.sub(r"\x1b\[[0-9;]*m", "", kfp_message)
        failed = re.findall(r"'([^']+)'", plain)
        step = failed[-1] if failed else "?"
        super().__init__(f"the pipeline failed in step '{step}'; its log above shows the cause")
        self.step = step


@dataclass
class LocalRun:
    pipeline_root: str
    ingest_report: str
    outcome: dict
    """The gate's summary (decision "publish", "refuse" or "no-registry", reasons, metrics) or the skip note."""
    saved_model: str = ""
    report: str = ""
    gate_report: str = ""
    accuracy: float | None = None
    published: str = ""
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def decision(self) -> str:
        return self.outcome["decision"]

    def summary(self) -> str:
        steps = "\n".join(f"  {name:<16} {sec:7.1f} s" for name, sec in self.step_seconds.items())
        said = {"publish": f"published {self.published} (now the champion)",
                "refuse": "refused by the gate; the champion stays",
                "no-registry": "passed the gate; no --registry to publish to",
                "skip": "training skipped"}[self.decision]
        reasons = "".join(f"\n  {r}" for r in self.outcome["reasons"])
        acc = f"{self.accuracy:.4f}" if self.accuracy is not None else "-"
        lines = [f"\n=== imgclf run finished in {self.seconds:.1f} s ===", f"outcome       : {said}{reasons}",
                 f"test accuracy : {acc}"]
        for label, value in (("SavedModel    : ", self.saved_model), ("HTML report   : ", self.report),
                             ("decision      : ", self.gate_report), ("ingest report : ", self.ingest_report)):
            if value:
                lines.append(label + value)
        return "\n".join(lines) + f"\nstep times:\n{steps}"


@contextlib.contextmanager
def _timed_tasks(into: dict[str, float]):
    """Time each task as kfp.local dispatches it (process start, imports and work included).

    kfp.local keeps no per-task timings; wrapping its dispatcher (kfp pinned at 2.17.0) is the one
    place that sees every task start and end, whatever the runner.
    """
    from kfp.local import task_dispatcher

    original = task_dispatcher.run_single_task_implementation

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            name = kwargs.get("component_name", "task").removeprefix("comp-")
            into[name] = time.perf_counter() - start

    task_dispatcher.run_single_task_implementation = timed
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original


def run_pipeline(pipeline, params: dict, pipeline_root: str = "runs", runner=None):
    """Execute any of our pipelines with kfp.local: (task, seconds per step, total seconds).

    Uses this virtualenv (SubprocessRunner without a venv of its own) unless `runner` says otherwise;
    raises PipelineFailed if a task fails.
    """
    from kfp import local

    from pipelines.docker_local import exit_codes_kept

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    in_docker = exit_codes_kept() if isinstance(runner, local.DockerRunner) else contextlib.nullcontext()
    with _timed_tasks(timings), in_docker, warnings.catch_warnings():
        # kfp warns when an image name lacks "python"; ours has Python, and SubprocessRunner ignores it.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            task = pipeline(**params)
        except RuntimeError as e:
            raise PipelineFailed(str(e)) from None
    return task, timings, time.perf_counter() - start


def run_local(params: dict, pipeline_root: str = "runs", runner=None) -> LocalRun:
    """The training pipeline, locally, with the figures `imgclf run` prints.

    Artifacts made inside the conditional branches are not pipeline outputs (kfp.local cannot select
    a `dsl.OneOf` artifact), so they are read from the run's folder, where kfp.local keeps one folder
    per task named after it.
    """
    import json

    task, timings, seconds = run_pipeline(training_pipeline, params, pipeline_root, runner)
    outputs = task.outputs
    run_dir = Path(outputs["ingest_report"].path).parents[1]
    outcome = json.loads(outputs["outcome"])
    # KFP names HTML artifacts without an extension; browsers want one to render them.
    pages = {}
    for task_name, output, name in (("evaluate", "report", "report.html"), ("ingest", "report", "ingest_report.html"),
                                    ("gate", "reasons", "gate.md"), ("training-skipped", "note", "skipped.md")):
        if (run_dir / task_name / output).is_file():
            shutil.copyfile(run_dir / task_name / output, run_dir / name)
            pages[name] = str(run_dir / name)
    saved_model = run_dir / "export" / "saved_model"
    accuracy = None
    if (run_dir / "evaluate" / "predictions").is_dir():
        from components.contracts import Evaluation

        accuracy = Evaluation.load(str(run_dir / "evaluate" / "predictions")).metrics["accuracy"]
    published = ""
    if outcome["decision"] == "publish":
        from components.lib import registry

        from components.release.options import RegistryTarget

        target = RegistryTarget(**RegistryTarget.pick(params))
        champ = registry.champion(target.registry, target.model_name)
        published = f"{champ['model_name']} version {champ['version']} at {champ['uri']}"
    return LocalRun(pipeline_root=str(Path(pipeline_root).resolve()), ingest_report=pages["ingest_report.html"],
                    outcome=outcome, saved_model=str(saved_model) if saved_model.is_dir() else "",
                    report=pages.get("report.html", ""), gate_report=pages.get("gate.md", pages.get("skipped.md", "")),
                    accuracy=accuracy, published=published, step_seconds=timings, seconds=seconds)
