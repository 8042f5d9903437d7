"""Every place imgclf relies on kfp's internals, in one module, with a check against the installed kfp.

kfp's public API runs a pipeline locally (`kfp.local.init`, the runners) and talks to a KFP server
(`kfp.Client`), but some of what `imgclf run` and `imgclf schedule` do has no public hook. Each such
dependency is a *seam*: a private function we replace for the length of a run, a private member we
call, or text kfp prints that we parse. They all live here, each declared in `SEAMS` with the shape we
rely on, and tests/test_kfp_seams.py checks every one against the kfp installed, so a kfp upgrade that
moves one fails in one test with one message naming it ("kfp X changed <module>.<name>: ...") instead
of in five places at run time. `patched()` checks the seam's signature again before it installs a
replacement, so a changed seam also stops a run at its start with that message, never half-way. A
function we replace must keep exactly the parameters declared (names, order, kinds): kfp calls our
replacement as it calls its own function, so a parameter kfp adds is as fatal as one it removes.

The seams (kfp 2.17.0; the rest of pipelines/ imports them from here only):

Replaced for the length of a local run (`patched`, originals restored on exit):
- `kfp.local.orchestrator.task_executor.execute_single_task`: every task of a local pipeline passes
  through it, whatever the runner. Two uses: the content-keyed `--cache` (pipelines/local/cache.py;
  kfp.local's own cache keys on artifact URIs, which change every run; a hit rebuilds the task's
  outputs with kfp.local's helpers `task_arguments`, `task_root`, `task_outputs`), and the step times
  (`timed_tasks`: kfp.local keeps no per-task timings). The timing would need no seam if each step body
  recorded its own start and end (a small timing file in its task folder that `imgclf run` reads), a
  change to the hand-written bodies.
- `kfp.local.subprocess_task_handler.run_local_subprocess`: preloaded tasks (pipelines/local/
  preloaded_tasks.py). Forking a process that has already imported TensorFlow spares each
  task that import; SubprocessRunner has no hook for how a task's process starts. The lightweight component's command
  line it receives (`split_command`) is read from kfp.dsl.component_factory's shape, and the fork runs
  kfp's executor in-process (`run_executor`: kfp.dsl.executor_main.executor_main on sys.argv).
- `kfp.local.docker_task_handler.run_docker_container`: exit codes under DockerRunner (pipelines/local/
  docker_runner.py). kfp runs containers with auto_remove and can report a failed task as a success
  when the container is gone before its exit code is read (kubeflow/pipelines#13332).

Parsed from kfp.local's log (`KfpChatter`, `failed_task`):
- the root logger format kfp.local sets per task (`HH:MM:SS.mmm - LEVEL - message`) and its messages
  ("Streamed logs", "Task 'x' outputs:", "has no outputs"), which `imgclf run --quiet` drops;
- the executor's "[KFP Executor ...] Got executor_input:" dump (a JSON object indented by 4), dropped;
- the failure message "Inner task failed: 'train' inside 'condition-branches-1'", whose first name is
  the step `PipelineFailed` reports.

Read while a pipeline function is being compiled (pipelines/definitions/):
- `kfp.dsl.pipeline_context.Pipeline.get_default_pipeline().tasks` (`pipeline_tasks`): the tasks
  declared so far, so that the platform settings (pipelines/definitions/platform.py) are applied to each
  once, at the end of the pipeline function, instead of by every call site.

Private members of `kfp.Client` (pipelines/remote/backends.py):
- `_recurring_run_api`: `create_recurring_run` sends a whole V2beta1RecurringRun, because the public
  `Client.create_recurring_run` cannot set `no_catchup` with a pinned pipeline version and a service account;
- `_get_url_prefix()`: `run_url` links a run's page in the KFP UI; the Client knows its UI address
  (host, or the in-cluster/IAP proxy form) and exposes it only through this method.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

HERE = "pipelines/kfp_seams.py"


class SeamChanged(RuntimeError):
    """The installed kfp no longer has the shape a seam relies on."""


@dataclass(frozen=True)
class Seam:
    """One dependency on kfp internals, and the shape we rely on."""

    target: str
    """Dotted path: module, then attribute (a class member as Class.member)."""
    why: str
    params: tuple[str, ...] = ()
    """Parameter names we call it with or that our replacement accepts (checked with inspect.signature);
    `*args` and `**kwargs` written with their stars, as `shape` writes them."""
    replaced: bool = False
    """We replace it (`patched`), and kfp calls our replacement as its own: `params` must then be its
    whole parameter list, in order and of the same kinds, not only names it still has."""
    source: tuple[tuple[str, str], ...] = ()
    """(dotted object, text): text that object's source must still contain (a call site, a log format)."""
    behaves: Callable[[], str] | None = None
    """A live check: returns what is wrong, "" when kfp still behaves as we parse it."""


def kfp_version() -> str:
    import kfp

    return kfp.__version__


def resolve(dotted: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def shape(signature: inspect.Signature) -> tuple[str, ...]:
    """A parameter list's names, order and kinds, without annotations or defaults, as Python writes it:
    ("a", "/", "b", "*args", "c", "**kw"); a bare "*" before keyword-only parameters without *args."""
    out: list[str] = []
    kinds = inspect.Parameter
    params = list(signature.parameters.values())
    for i, p in enumerate(params):
        if p.kind == kinds.KEYWORD_ONLY and not any(q.kind == kinds.VAR_POSITIONAL for q in params[:i]) \
                and "*" not in out:
            out.append("*")
        out.append({kinds.VAR_POSITIONAL: "*", kinds.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name)
        if p.kind == kinds.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind != kinds.POSITIONAL_ONLY):
            out.append("/")
    return tuple(out)


def problem(seam: Seam) -> str:
    """What is wrong with one seam in the installed kfp, "" when nothing."""
    said = []
    try:
        target = resolve(seam.target)
    except (ImportError, AttributeError) as e:
        said.append(f"it is gone ({type(e).__name__}: {e})")
    else:
        if seam.params:
            try:
                have = inspect.signature(target).parameters
            except (TypeError, ValueError) as e:
                have = {}
                said.append(f"its signature cannot be read ({e})")
            if have:
                now = shape(inspect.signature(target))
                missing = [p for p in seam.params if p not in now]
                added = [p for p in now if p not in seam.params and p not in "*/"]
                wrong = [f"without {', '.join(missing)}"] if missing else []
                if seam.replaced and added:
                    wrong.append(f"with {', '.join(added)} added")
                if seam.replaced and not wrong and now != seam.params:
                    wrong.append("in another order or of other kinds")
                if wrong:
                    said.append(f"its parameters are ({', '.join(now)}), {', '.join(wrong)}"
                                + (f"; our replacement takes exactly ({', '.join(seam.params)})" if seam.replaced else ""))
    for where, text in seam.source:
        try:
            code = inspect.getsource(resolve(where))
        except (ImportError, AttributeError, OSError, TypeError) as e:
            said.append(f"{where} cannot be read ({type(e).__name__}: {e})")
            continue
        if text not in code:
            said.append(f"{where} no longer contains {text!r}")
    if seam.behaves is not None and not said:
        try:
            wrong = seam.behaves()
        except Exception as e:  # noqa: BLE001 - any failure of the live check is the seam's problem
            wrong = f"{type(e).__name__}: {e}"
        if wrong:
            said.append(wrong)
    if not said:
        return ""
    return f"kfp {kfp_version()} changed {seam.target}: {'; '.join(said)}; see {HERE} ({seam.why})"


def problems() -> list[str]:
    """Every seam the installed kfp breaks, one message each."""
    return [p for p in map(problem, SEAMS) if p]


def seam(target: str) -> Seam:
    return next(s for s in SEAMS if s.target == target)


# ------------------------------------------------------------------------------------------- replacing
@contextlib.contextmanager
def patched(target: str, make: Callable[[Callable], Callable]) -> Iterator[Callable]:
    """While open, module function `target` (a declared seam) is `make(original)`; restored on exit.

    The seam's shape is checked first: a kfp that changed it stops here with the seam's message. Two
    patches of one seam nest (the step times and the cache): the installed function carries the
    original's signature (functools.wraps), so the inner patch checks kfp's, not the outer replacement's."""
    declared = seam(target)
    if not declared.replaced:
        raise ValueError(f"{target} is not declared as a seam we replace")
    wrong = problem(Seam(declared.target, declared.why, declared.params, replaced=True))
    if wrong:
        raise SeamChanged(wrong)
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    replacement = make(original)

    @functools.wraps(original)  # its signature is the original's, so a second patch of the seam checks kfp's
    def installed(*args, **kwargs):
        return replacement(*args, **kwargs)

    setattr(module, name, installed)
    try:
        yield original
    finally:
        setattr(module, name, original)


SUBPROCESS_RUN = "kfp.local.subprocess_task_handler.run_local_subprocess"
DOCKER_RUN = "kfp.local.docker_task_handler.run_docker_container"
TASK_EXECUTE = "kfp.local.orchestrator.task_executor.execute_single_task"


def timed_tasks(on_done: Callable[[str, float], None]):
    """Calls `on_done(component name without "comp-", seconds)` after every container task kfp.local
    executes (process start, imports, work and any retries included). Enter it before the cache's
    `task_executions`, so that a task served from the cache is not timed."""
    import time

    def make(original):
        def timed(**task):  # execute_single_task's keyword arguments, as kfp.local passes them
            component_name = task["task_spec"].component_ref.name
            executor = task["executors"].get(task["components"][component_name].executor_label)
            start = time.perf_counter()
            try:
                return original(**task)
            finally:
                if executor is not None and executor.HasField("container"):  # not an importer
                    on_done(component_name.removeprefix("comp-"), time.perf_counter() - start)
        return timed

    return patched(TASK_EXECUTE, make)


def subprocess_runs(make: Callable[[Callable], Callable]):
    """SubprocessRunner starts each task with `make(kfp's own function)`, called as
    `(full_command, env_vars=None) -> exit status`."""
    return patched(SUBPROCESS_RUN, make)


def docker_runs(replacement: Callable[..., int]):
    """DockerRunner runs each container with `replacement(client, image, command, volumes, **run_args)`."""
    return patched(DOCKER_RUN, lambda original: replacement)


def task_executions(make: Callable[[Callable], Callable]):
    """kfp.local executes each task of a pipeline with `make(kfp's own function)`, called with
    execute_single_task's keyword arguments and returning (outputs, status)."""
    return patched(TASK_EXECUTE, make)


def image_with_tag(image: str) -> str:
    """The image name as kfp's DockerRunner pulls and runs it (":latest" added when there is no tag)."""
    from kfp.local import docker_task_handler

    return docker_task_handler.add_latest_tag_if_not_present(image)


# The lightweight component's command, as kfp.dsl.component_factory builds it.
_CODE_MARK = '"$program_path/ephemeral_component.py"'


def split_command(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(component source, executor arguments) of a lightweight Python component's command, else None.

    kfp 2.17 builds `sh -ec 'program_path=...; printf "%s" "$0" > ephemeral_component.py; python3 -m
    kfp.dsl.executor_main --component_module_path ... "$@"' <source> <args...>`.
    """
    for i, part in enumerate(full_command[:-1]):
        if _CODE_MARK in part and '"$@"' in part and "kfp.dsl.executor_main" in part and "pip install" not in part:
            return full_command[i + 1], list(full_command[i + 2:])
    return None


def run_executor() -> None:
    """kfp's executor on sys.argv, as `python -m kfp.dsl.executor_main` would run it."""
    from kfp.dsl import executor_main

    executor_main.executor_main()


# ------------------------------------------------------------------------------ a task, outside kfp.local
def task_arguments(task_spec, io_store) -> dict:
    """The task's input values and artifacts, as kfp.local's executor resolves them."""
    from kfp.local.orchestrator import task_executor

    return task_executor.OrchestratorUtils.make_task_arguments(task_inputs_spec=task_spec.inputs, io_store=io_store)


def task_root(pipeline_root: str, pipeline_resource_name: str, component_name: str) -> str:
    """The folder kfp.local gives a task's outputs."""
    from kfp.local import executor_input_utils

    return executor_input_utils.construct_local_task_root(
        pipeline_root=pipeline_root, pipeline_resource_name=pipeline_resource_name,
        task_resource_name=executor_input_utils.get_local_task_resource_name(component_name))


def task_outputs(component, arguments: dict, root: str):
    """(outputs, SUCCESS) of a task whose folder `root` already holds its outputs, as kfp.local returns them."""
    from kfp.local import executor_input_utils, executor_output_utils, status

    executor_input = executor_input_utils.construct_executor_input(
        component_spec=component, arguments=arguments, task_root=root, block_input_artifact=False)
    return (executor_output_utils.get_outputs_for_task(executor_input=executor_input, component_spec=component),
            status.Status.SUCCESS)


def succeeded(task_status) -> bool:
    from kfp.local import status

    return task_status == status.Status.SUCCESS


# ------------------------------------------------------------------------------------ compiling a pipeline
def pipeline_tasks() -> list:
    """The tasks the pipeline function being compiled has declared so far (nested groups included).

    kfp has no public way to list them; the pipeline being built keeps them in `tasks` by name."""
    from kfp.dsl import pipeline_context

    return list(pipeline_context.Pipeline.get_default_pipeline().tasks.values())


# ------------------------------------------------------------------------------------- kfp.local's log
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
KFP_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - (.*)$")
"""A line of kfp.local's own logger (logging_utils.local_logger_context): time, level, message."""
EXECUTOR_MARK = "[KFP Executor"
EXECUTOR_INPUT = "Got executor_input:"


def plain(text: str) -> str:
    """Text without the terminal colours kfp.local puts around task names and statuses."""
    return _ANSI.sub("", text)


def failed_task(kfp_message: str) -> str:
    """The innermost failed task in kfp.local's pipeline failure, "" when it names none.

    kfp.local raises "Pipeline 'x' finished with status FAILURE. Inner task failed: 'train' inside
    'condition-branches-1'.": the first name is the task, the rest the groups around it."""
    inner = plain(kfp_message).split("Inner task failed:", 1)[-1]
    found = re.findall(r"'([^']+)'", inner)
    return found[0] if found else ""


class KfpChatter:
    """Recognises kfp.local's chatter in a task log read line by line: the executor input JSON it dumps
    for every task, the executor's own log lines, "Streamed logs", the output listings. Task start and
    finish lines are not chatter. Stateful: a dump spans many lines."""

    def __init__(self):
        self._skip = None

    def drops(self, line: str) -> bool:
        line = plain(line)
        if self._skip == "json":              # the executor input, closed by "    }" at the task's indent
            self._skip = None if line == "    }" else "json"
            return True
        if self._skip == "outputs" and line.startswith("    "):
            return True
        self._skip = None
        if EXECUTOR_MARK in line:
            self._skip = "json" if line.rstrip().endswith(EXECUTOR_INPUT) else None
            return True
        kfp = KFP_LOG_LINE.match(line)
        if kfp:
            said = kfp.group(1)
            if said.endswith(" outputs:"):
                self._skip = "outputs"
            return said.startswith("Streamed logs") or said.endswith(" outputs:") or "has no outputs" in said
        return False


# -------------------------------------------------------------------------------- kfp.Client privates
def create_recurring_run(client, body) -> str:
    """Create a recurring run from a whole kfp_server_api V2beta1RecurringRun; its id.

    `kfp.Client.create_recurring_run` builds the body itself and cannot set `no_catchup` together
    with a pinned pipeline version and a service account, so the body goes to the Client's own
    RecurringRunServiceApi (the private `_recurring_run_api`, which the Client sets in __init__)."""
    return client._recurring_run_api.recurring_run_service_create_recurring_run(body).recurring_run_id


def run_url(client, run_id: str) -> str:
    """A run's page in the KFP UI: the Client's UI address (private `_get_url_prefix()`, which knows
    the host and the proxy forms) and the UI's run route."""
    return f"{client._get_url_prefix()}/#/runs/details/{run_id}"


# ------------------------------------------------------------------------------------- live checks
def _log_format_check() -> str:
    """kfp.local's logger still writes lines KFP_LOG_LINE reads."""
    import logging

    from kfp.local import logging_utils

    with logging_utils.local_logger_context():
        handler = logging.getLogger().handlers[0]
        record = logging.LogRecord("kfp", logging.INFO, __file__, 1, "Streamed logs:", None, None)
        line = handler.format(record)
    found = KFP_LOG_LINE.match(line)
    return "" if found and found.group(1) == "Streamed logs:" else f"its log line reads {line!r}, not 'HH:MM:SS.mmm - INFO - ...'"


def _failure_message_check() -> str:
    """kfp.local's pipeline failure still names the inner task first."""
    from kfp.local import pipeline_orchestrator

    try:
        pipeline_orchestrator.log_and_maybe_raise_for_failure(
            pipeline_name="p", raise_on_error=True, fail_stack=["train", "condition-branches-1"])
    except RuntimeError as e:
        return "" if failed_task(str(e)) == "train" else f"its failure reads {plain(str(e))!r}; the task is not found"
    return "it no longer raises on a failed task"


def _split_command_check() -> str:
    """A lightweight component's command is still the shape split_command reads."""
    from kfp import dsl

    def probe(x: str) -> str:
        return x

    probe.__annotations__ = {"x": str, "return": str}  # real types, not this module's postponed strings
    task = dsl.component(probe, base_image="python:3.11", install_kfp_package=False)
    container = task.pipeline_spec.deployment_spec["executors"]["exec-probe"]["container"]
    split = split_command([*container["command"], *container["args"]])
    if split is None or "def probe(x: str)" not in split[0] or "--executor_input" not in split[1]:
        return "a lightweight component's command is no longer sh -ec '... executor_main ...' <source> <args>"
    return ""


def _pipeline_tasks_check() -> str:
    """Inside a pipeline function, pipeline_tasks() lists every task declared, those in a group too."""
    from kfp import compiler, dsl

    def probe(x: str) -> str:
        return x

    probe.__annotations__ = {"x": str, "return": str}
    component = dsl.component(probe, base_image="python:3.11", install_kfp_package=False)
    seen: list = []

    def graph(flag: str = "a"):
        first = component(x=flag)
        with dsl.If(first.output == "a"):
            component(x="b")
        seen.extend(pipeline_tasks())

    graph.__annotations__ = {"flag": str}
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        compiler.Compiler().compile(dsl.pipeline(name="probe")(graph), f"{folder}/probe.yaml")
    names = sorted(t.name for t in seen)
    return "" if names == ["probe", "probe-2"] else f"its tasks in a two-task pipeline are {names}"


SEAMS: tuple[Seam, ...] = (
    Seam(SUBPROCESS_RUN, "preloaded tasks: how SubprocessRunner starts a task's process",
         params=("full_command", "env_vars"), replaced=True,
         source=(("kfp.local.subprocess_task_handler.SubprocessTaskHandler.run",
                  "return_code = run_local_subprocess("),)),
    Seam(DOCKER_RUN, "exit codes kept under DockerRunner (kubeflow/pipelines#13332)",
         params=("client", "image", "command", "volumes", "**container_run_args"), replaced=True,
         source=(("kfp.local.docker_task_handler.DockerTaskHandler.run", "return_code = run_docker_container("),)),
    Seam("kfp.local.docker_task_handler.add_latest_tag_if_not_present", "the image name DockerRunner runs",
         params=("image",)),
    Seam(TASK_EXECUTE, "the content-keyed --cache and the step times: every local task passes through it",
         params=("task_name", "task_spec", "pipeline_resource_name", "components", "executors", "io_store",
                 "pipeline_root", "runner", "unique_pipeline_id", "fail_stack"), replaced=True,
         source=(("kfp.local.orchestrator.dag_orchestrator", "task_executor.execute_single_task("),)),
    Seam("kfp.local.orchestrator.task_executor.OrchestratorUtils.make_task_arguments",
         "--cache: a task's resolved inputs", params=("task_inputs_spec", "io_store")),
    Seam("kfp.local.executor_input_utils.construct_local_task_root", "--cache: a task's folder",
         params=("pipeline_root", "pipeline_resource_name", "task_resource_name")),
    Seam("kfp.local.executor_input_utils.get_local_task_resource_name", "--cache: a task's folder name",
         params=("component_name",)),
    Seam("kfp.local.executor_input_utils.construct_executor_input", "--cache: a served task's outputs",
         params=("component_spec", "arguments", "task_root", "block_input_artifact")),
    Seam("kfp.local.executor_output_utils.get_outputs_for_task", "--cache: a served task's outputs",
         params=("executor_input", "component_spec")),
    Seam("kfp.local.status.Status.SUCCESS", "--cache: a task's status"),
    Seam("kfp.dsl.executor_main.executor_main", "preloaded tasks: kfp's executor, run in a fork on sys.argv"),
    Seam("kfp.dsl.component_factory._get_command_and_args_for_lightweight_component",
         "preloaded tasks: split_command reads a lightweight component's command line",
         behaves=_split_command_check),
    Seam("kfp.local.logging_utils.local_logger_context", "--quiet and the step times read kfp.local's log lines",
         source=(("kfp.local.task_dispatcher", "Streamed logs"),
                 ("kfp.local.task_dispatcher", "outputs:"),
                 ("kfp.local.task_dispatcher", "has no outputs")),
         behaves=_log_format_check),
    Seam("kfp.dsl.executor_main", "--quiet drops the executor input the executor dumps for every task",
         source=(("kfp.dsl.executor_main", EXECUTOR_MARK),
                 ("kfp.dsl.executor_main", f"{EXECUTOR_INPUT}\\n{{json.dumps(executor_input, indent=4)}}"))),
    Seam("kfp.local.pipeline_orchestrator.log_and_maybe_raise_for_failure",
         "PipelineFailed names the failed step from kfp.local's failure message",
         params=("pipeline_name", "raise_on_error", "fail_stack"), behaves=_failure_message_check),
    Seam("kfp.dsl.pipeline_context.Pipeline.get_default_pipeline",
         "pipeline_tasks: the platform settings are applied to every task of a pipeline being compiled",
         behaves=_pipeline_tasks_check),
    Seam("kfp.client.Client._get_url_prefix", "run_url: the KFP UI's address", params=("self",)),
    Seam("kfp_server_api.RecurringRunServiceApi.recurring_run_service_create_recurring_run",
         "create_recurring_run: a schedule from a whole V2beta1RecurringRun",
         params=("self", "recurring_run"),
         source=(("kfp.client.Client.__init__", "self._recurring_run_api = kfp_server_api.RecurringRunServiceApi("),)),
)
