"""Run the training pipeline on this machine with kfp.local: SubprocessRunner (this virtualenv) or
DockerRunner (our image; see pipelines/local/docker_runner.py)."""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.pipelines import kfp_seams
from imgclf.pipelines.definitions.training import training_pipeline
from imgclf.pipelines.local import RUNNERS

# The last line of a task's log that states its error: a Python exception line ("ValueError: ..."), or
# our steps' own "error: ..." lines.
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Diverged|Mismatch|Rejected|Exit)\b.*|error: .+)$")


class PipelineFailed(RuntimeError):
    """A task failed: names the step (not the KFP group around it) and its own error line."""

    def __init__(self, kfp_message: str, log_tail: list[str] | None = None):
        self.step = step_of(kfp_seams.failed_task(kfp_message)) or "?"
        lines = [kfp_seams.plain(x) for x in (log_tail or [])]
        at = next((i for i in range(len(lines) - 1, -1, -1) if _ERROR_LINE.match(lines[i])), None)
        self.cause = "" if at is None else _with_continuation(lines, at)
        super().__init__(f"the pipeline failed in step '{self.step}'"
                         + (f": {self.cause}" if self.cause else "; its log above shows the cause"))


def step_of(task: str) -> str:
    """The step a task does a part of: `ingest-plan`, `ingest-shard` -> ingest (a step spread over tasks
    is still the step the user knows and whose options fix it); any other task is its own step."""
    from imgclf.components.steps import STEPS

    spread = re.fullmatch(r"(.+)-(plan|shard|merge)", task)
    return spread.group(1) if spread and spread.group(1) in STEPS else task


def _with_continuation(lines: list[str], at: int) -> str:
    """The error line at `at`, and when it ends in ":" (a message whose reasons follow on their own
    lines), those lines too: the final line must state the reason, not announce it. Credentials in a
    URI it quotes are redacted (the line is printed and may be logged)."""
    from imgclf.components.lib.storage import redact

    parts = [lines[at].strip()]
    if parts[0].endswith(":"):
        for line in lines[at + 1:]:
            if not line.strip() or _KFP_LOG_LINE.match(line):
                break
            parts.append(line.strip())
    return redact(" ".join(parts))


# kfp.local's own log lines ("19:53:15.561 - ERROR - Task 'ingest' finished ..."): not part of a message.
_KFP_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - ")


class _Quiet:
    """A line filter that passes the steps' own lines and kfp.local's task start/finish lines, and drops the
    rest of kfp.local's chatter (kfp_seams.KfpChatter: the executor input JSON it dumps for every task,
    the executor's loading lines, the output listings), separators, and TensorFlow's start-up notices."""

    # TensorFlow's start-up notices, printed by every task that imports it (absl and oneDNN).
    _TF_NOTICE = re.compile(r"^\s*(WARNING: All log messages before absl::InitializeLog|I0000 .*\] oneDNN custom)")

    def __init__(self):
        self._chatter = kfp_seams.KfpChatter()

    def keep(self, line: str) -> bool:
        """Whether to show this whole line (it reads the lines in order: dumps span many)."""
        if self._chatter.drops(line):
            return False
        line = kfp_seams.plain(line)
        if self._TF_NOTICE.match(line):
            return False
        return bool(line.strip()) and not set(line.strip()) <= {"-"}


class _Tail:
    """stdout, with the last lines kept: kfp.local prints each task's log there, whatever the runner.
    With a `quiet` filter only the lines it keeps are shown; the tail keeps every line, for the
    failure message."""

    def __init__(self, stream, quiet: _Quiet | None = None, keep: int = 400):
        import collections

        self.stream, self.quiet, self.lines, self._partial = stream, quiet, collections.deque(maxlen=keep), ""

    def write(self, text: str) -> int:
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        if self.quiet is None:
            self.stream.write(text)
        else:
            self.stream.writelines(line + "\n" for line in done if self.quiet.keep(line))
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
    sweep_report: str = ""
    accuracy: float | None = None
    published: str = ""
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cached: list[str] = field(default_factory=list)
    """Tasks whose outputs came from the --cache (unchanged inputs)."""
    curves: str = ""
    tensorboard: str = ""
    compared: str = ""
    """The gate's CSV of the test images it compared champion and challenger on (when there was a champion)."""

    @property
    def decision(self) -> str:
        return self.outcome["decision"]

    def summary(self) -> str:
        steps = "\n".join([*(f"  {name:<16} {sec:7.1f} s" for name, sec in self.step_seconds.items()),
                           *(f"  {name:<16}  cached" for name in self.cached)])
        said = {"publish": f"published {self.published} (now the champion)",
                "refuse": "refused by the gate; the champion stays",
                "no-registry": "passed the gate; no --registry to publish to",
                "skip": "training skipped"}[self.decision]
        reasons = "".join(f"\n  {r}" for r in self.outcome["reasons"])
        acc = f"{self.accuracy:.4f}" if self.accuracy is not None else "-"
        lines = [f"\n=== imgclf run finished in {self.seconds:.1f} s ===", f"outcome       : {said}{reasons}",
                 f"test accuracy : {acc}"]
        for label, value in (("SavedModel    : ", self.saved_model), ("HTML report   : ", self.report),
                             ("decision      : ", self.gate_report),
                             ("compared      : ", f"{self.compared}  ({self.outcome.get('compared', {}).get('images')} "
                              "test images seen by neither model)" if self.compared else ""),
                             ("ingest report : ", self.ingest_report),
                             ("curves        : ", self.curves),
                             ("TensorBoard   : ", f"{self.tensorboard}  (tensorboard --logdir {self.tensorboard})"
                              if self.tensorboard else ""),
                             ("sweep report  : ", self.sweep_report)):
            if value:
                lines.append(label + value)
        if self.saved_model and self.decision != "publish":
            from imgclf.components.deploy.tf_serving import serve_saved_model_line

            lines.append("serve it      : " + serve_saved_model_line(self.saved_model))
        return "\n".join(lines) + f"\nstep times:\n{steps}"


def _timed_tasks(into: dict[str, float]):
    """Time each task kfp.local runs (process start, imports and work included): kfp.local keeps no
    per-task timings (see kfp_seams.timed_tasks). Entered before the cache, so cache hits are not timed."""

    def done(name: str, seconds: float) -> None:
        # A ParallelFor's iterations (shard tasks, trials) share a name: the longest one is shown.
        into[name] = max(into.get(name, 0.0), seconds)

    return kfp_seams.timed_tasks(done)


def run_pipeline(pipeline, params: dict, pipeline_root: str = "runs", runner=None, quiet: bool = False,
                 cache: list | None = None):
    """Execute any of our pipelines with kfp.local: (task, seconds per step, total seconds).

    Uses this virtualenv (SubprocessRunner without a venv of its own) unless `runner` says otherwise;
    raises PipelineFailed if a task fails. `quiet` drops kfp.local's dumps from the output (the failure
    message still sees every line); a `cache` list turns on the content-keyed local cache and
    receives the names of the tasks it served.
    """
    from kfp import local

    from imgclf.pipelines.local.docker_runner import exit_codes_kept

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    in_docker = exit_codes_kept() if isinstance(runner, local.DockerRunner) else contextlib.nullcontext()
    if runner is None or isinstance(runner, local.SubprocessRunner) and not runner.use_venv:
        from imgclf.pipelines.local.preloaded_tasks import preloaded_tasks

        preloaded = preloaded_tasks()
    else:
        preloaded = contextlib.nullcontext()
    tail = _Tail(sys.stdout, _Quiet() if quiet else None)
    if cache is not None:
        from imgclf.pipelines.local.cache import local_cache

        cached = local_cache(str(root), cache)
    else:
        cached = contextlib.nullcontext()
    with preloaded, _timed_tasks(timings), in_docker, cached, warnings.catch_warnings(), contextlib.redirect_stdout(tail):
        # kfp warns when an image name lacks "python"; ours has Python, and SubprocessRunner ignores it.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            task = pipeline(**params)
        except RuntimeError as e:
            raise PipelineFailed(str(e), list(tail.lines)) from None
    return task, timings, time.perf_counter() - start


def run_local(params: dict, pipeline_root: str = "runs", runner=None, quiet: bool = False,
              cache: bool = False, sweep=None) -> LocalRun:
    """The training pipeline, locally, with the figures `imgclf run` prints.

    Artifacts made inside the conditional branches are not pipeline outputs (kfp.local cannot select
    a `dsl.OneOf` artifact), so they are read from the run's folder, where kfp.local keeps one folder
    per task named after it.
    """
    import json

    pipeline = training_pipeline
    if sweep is not None:
        from imgclf.pipelines.definitions.training import build_training_pipeline

        pipeline = build_training_pipeline(sweep=sweep)
    hits: list[str] | None = [] if cache else None
    task, timings, seconds = run_pipeline(pipeline, params, pipeline_root, runner, quiet, hits)
    outputs = task.outputs
    run_dir = Path(outputs["ingest_report"].path).parents[1]
    outcome = json.loads(outputs["outcome"])
    # KFP names HTML artifacts without an extension; browsers want one to render them.
    pages = {}
    for task_name, output, name in (("evaluate", "report", "report.html"), ("ingest", "report", "ingest_report.html"),
                                    ("gate", "reasons", "gate.md"), ("gate", "compared", "compared.csv"),
                                    ("training-skipped", "note", "skipped.md"),
                                    ("train", "curves", "learning_curves.html"), ("select", "report", "sweep.html")):
        if (run_dir / task_name / output).is_file():
            shutil.copyfile(run_dir / task_name / output, run_dir / name)
            pages[name] = str(run_dir / name)
    saved_model = run_dir / "export" / "saved_model"
    tensorboard = run_dir / "train" / "model" / "tensorboard"
    accuracy = None
    if (run_dir / "evaluate" / "predictions").is_dir():
        from imgclf.components.contracts import Evaluation

        accuracy = Evaluation.load(str(run_dir / "evaluate" / "predictions")).metrics["accuracy"]
    published = ""
    if outcome["decision"] == "publish":
        from imgclf.components.lib import registry
        from imgclf.components.release.options import RegistryTarget

        target = RegistryTarget(**RegistryTarget.pick(params))
        champ = registry.champion(target.registry, target.model_name)
        published = f"{champ['model_name']} version {champ['version']} at {champ['uri']}"
    return LocalRun(pipeline_root=str(Path(pipeline_root).resolve()), ingest_report=pages["ingest_report.html"],
                    outcome=outcome, saved_model=str(saved_model) if saved_model.is_dir() else "",
                    report=pages.get("report.html", ""), gate_report=pages.get("gate.md", pages.get("skipped.md", "")),
                    sweep_report=pages.get("sweep.html", ""),
                    accuracy=accuracy, published=published, step_seconds=timings, seconds=seconds,
                    cached=hits or [], curves=pages.get("learning_curves.html", ""),
                    compared=pages.get("compared.csv", "") if outcome.get("compared") else "",
                    tensorboard=str(tensorboard) if tensorboard.is_dir() else "")


def run_checked(values: dict, *, pipeline_root: str = "runs", runner: str = "subprocess", network: str = "auto",
                quiet: bool = False, cache: bool = False, sweep: str = ""):
    """`imgclf run` once its flags are parsed, shared with `imgclf.run` (imgclf/api.py) so both check and
    run alike: the pipeline parameters (local paths included), the runner and the sweep file are all
    checked before the run folder is made or any task runs; then the run, as a LocalRun. The preloaded
    zygote (subprocess runner) may already be starting while they are checked: the `imgclf` command
    starts it first thing, and this function starts it (if not yet started) once the checks passed."""
    from imgclf.pipelines import check_parameters
    from imgclf.pipelines.definitions import sweep as sweeps

    check_runner(runner, network)
    params = check_parameters(values, check_paths=True)
    found = sweeps.load(sweep) if sweep else None
    if found is not None:
        sweeps.check_with(found, params)
    docker, params = local_runner(params, runner, network)
    return run_local(params, pipeline_root=pipeline_root, runner=docker, quiet=quiet, cache=cache, sweep=found)


def check_runner(runner: str, network: str) -> None:
    """The runner and the Docker network, refused before anything runs (`imgclf run` and `imgclf audit`)."""
    from imgclf.pipelines.local.docker_runner import NETWORKS

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    if network not in NETWORKS:
        raise ValueError(f"network {network!r}: expected one of {', '.join(NETWORKS)}")


def local_runner(params: dict, runner: str, network: str):
    """(kfp.local's DockerRunner or None for the subprocess runner, the parameters it runs with) for checked
    parameters: the Docker runner rewrites local paths to what it mounts; the subprocess runner starts
    the preloaded zygote (if not yet started)."""
    if runner != "docker":
        from imgclf.pipelines.local.preloaded_tasks import start_early

        start_early()
        return None, params
    from imgclf.components.kfp_glue.wrappers import IMAGE
    from imgclf.pipelines.local.docker_runner import docker_runner

    return docker_runner(params, IMAGE, network=network)
