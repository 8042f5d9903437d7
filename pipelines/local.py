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
    saved_model: str
    report: str
    ingest_report: str
    accuracy: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        steps = "\n".join(f"  {name:<11} {sec:7.1f} s" for name, sec in self.step_seconds.items())
        return (f"\n=== imgclf run finished in {self.seconds:.1f} s ===\n"
                f"test accuracy : {self.accuracy:.4f}\n"
                f"SavedModel    : {self.saved_model}\n"
                f"HTML report   : {self.report}\n"
                f"ingest report : {self.ingest_report}\n"
                f"step times:\n{steps}")


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
    """The training pipeline, locally, with the figures `imgclf run` prints."""
    task, timings, seconds = run_pipeline(training_pipeline, params, pipeline_root, runner)
    outputs = task.outputs
    # KFP names HTML artifacts without an extension; browsers want one to render them.
    run_dir = Path(outputs["report"].path).parents[1]
    pages = {}
    for output, name in (("report", "report.html"), ("ingest_report", "ingest_report.html")):
        shutil.copyfile(outputs[output].path, run_dir / name)
        pages[output] = str(run_dir / name)
    return LocalRun(pipeline_root=str(Path(pipeline_root).resolve()), saved_model=outputs["saved_model"].path,
                    report=pages["report"], ingest_report=pages["ingest_report"], accuracy=float(outputs["accuracy"]),
                    step_seconds=timings, seconds=seconds)
