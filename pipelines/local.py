"""Run the training pipeline on this machine with kfp.local: SubprocessRunner (this virtualenv) or
DockerRunner (our image; see pipelines/docker_local.py)."""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.training import training_pipeline


# The last line of a task's log that states its error: a Python exception line ("ValueError: ..."), or
# our steps' own "error: ..." lines.
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Diverged|Mismatch|Rejected|Exit)\b.*|error: .+)$")


class PipelineFailed(RuntimeError):
    """A task failed: names the step (not the KFP group around it) and its own error line."""

    def __init__(self, kfp_message: str, log_tail: list[str] | None = None):
        plain = re.sub(r"\x1b\[[0-9;]*m", "", kfp_message)
        # kfp.local: "Inner task failed: 'train' inside 'condition-branches-1'": the first name is the task.
        inner = plain.split("Inner task failed:", 1)[-1]
        failed = re.findall(r"'([^']+)'", inner)
        self.step = failed[0] if failed else "?"
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", x) for x in (log_tail or [])]
        self.cause = next((x.strip() for x in reversed(lines) if _ERROR_LINE.match(x)), "")
        super().__init__(f"the pipeline failed in step '{self.step}'"
                         + (f": {self.cause}" if self.cause else "; its log above shows the cause"))


class _Tail:
    """stdout, with the last lines kept: kfp.local prints each task's log there, whatever the runner."""

    def __init__(self, stream, keep: int = 400):
        import collections

        self.stream, self.lines, self._partial = stream, collections.deque(maxlen=keep), ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


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
    curves: str = ""
    tensorboard: str = ""

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
                             ("decision      : ", self.gate_report), ("ingest report : ", self.ingest_report),
                             ("curves        : ", self.curves),
                             ("TensorBoard   : ", f"{self.tensorboard}  (tensorboard --logdir {self.tensorboard})"
                              if self.tensorboard else "")):
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
    tail = _Tail(sys.stdout)
    with _timed_tasks(timings), in_docker, warnings.catch_warnings(), contextlib.redirect_stdout(tail):
        # kfp warns when an image name lacks "python"; ours has Python, and SubprocessRunner ignores it.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            task = pipeline(**params)
        except RuntimeError as e:
            raise PipelineFailed(str(e), list(tail.lines)) from None
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
                                    ("gate", "reasons", "gate.md"), ("training-skipped", "note", "skipped.md"),
                                    ("train", "curves", "learning_curves.html")):
        if (run_dir / task_name / output).is_file():
            shutil.copyfile(run_dir / task_name / output, run_dir / name)
            pages[name] = str(run_dir / name)
    saved_model = run_dir / "export" / "saved_model"
    tensorboard = run_dir / "train" / "model" / "tensorboard"
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
                    accuracy=accuracy, published=published, step_seconds=timings, seconds=seconds,
                    curves=pages.get("learning_curves.html", ""),
                    tensorboard=str(tensorboard) if tensorboard.is_dir() else "")
