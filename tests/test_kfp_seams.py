"""Every kfp internal imgclf relies on (pipelines/kfp_seams.py) still has the shape we rely on in the
installed kfp; a changed one is reported in one message naming it and the kfp version; and no other
module reaches into kfp's internals around the seams module."""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import pytest

from imgclf.pipelines import kfp_seams

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def test_every_seam_holds_in_the_installed_kfp():
    problems = kfp_seams.problems()
    assert not problems, "\n".join(problems)


def test_a_changed_signature_is_reported_by_name_and_stops_the_patch(monkeypatch):
    from kfp.local.orchestrator import task_executor

    original = task_executor.execute_single_task
    monkeypatch.setattr(task_executor, "execute_single_task", lambda task_name, task_spec, io_store, runner: None)
    said = kfp_seams.problem(kfp_seams.seam(kfp_seams.TASK_EXECUTE))
    assert said.startswith(f"kfp {kfp_seams.kfp_version()} changed kfp.local.orchestrator.task_executor."
                           "execute_single_task: its parameters are (task_name, task_spec, io_store, runner), without "
                           "pipeline_resource_name, components, executors, pipeline_root, unique_pipeline_id, "
                           "fail_stack; our replacement takes exactly (task_name, task_spec, pipeline_resource_name, "
                           "components, executors, io_store, pipeline_root, runner, unique_pipeline_id, fail_stack); "
                           "see pipelines/kfp_seams.py (the content-keyed --cache and the step times")
    assert kfp_seams.problems() == [said], "one changed seam, one message"
    stand_in = task_executor.execute_single_task
    with pytest.raises(kfp_seams.SeamChanged, match="without pipeline_resource_name"):
        with kfp_seams.timed_tasks(lambda name, seconds: None):
            pass
    assert task_executor.execute_single_task is stand_in is not original, "nothing was installed"


def test_a_parameter_kfp_adds_to_a_replaced_function_is_reported_and_stops_the_patch(monkeypatch):
    """kfp calls our replacement as its own function, by keyword: a new parameter would reach a
    replacement that does not take it, with a TypeError in the middle of a run."""
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess

    def run_local_subprocess(full_command, env_vars=None, cwd=None):
        return 0

    monkeypatch.setattr(subprocess_task_handler, "run_local_subprocess", run_local_subprocess)
    said = kfp_seams.problem(kfp_seams.seam(kfp_seams.SUBPROCESS_RUN))
    assert said == (f"kfp {kfp_seams.kfp_version()} changed kfp.local.subprocess_task_handler.run_local_subprocess: "
                    "its parameters are (full_command, env_vars, cwd), with cwd added; our replacement takes exactly "
                    "(full_command, env_vars); see pipelines/kfp_seams.py (preloaded tasks: how SubprocessRunner "
                    "starts a task's process)")
    assert kfp_seams.problems() == [said], "one changed seam, one message"
    with pytest.raises(kfp_seams.SeamChanged, match="with cwd added"):
        with kfp_seams.subprocess_runs(lambda kfps: lambda full_command, env_vars=None: 0):
            pass
    assert subprocess_task_handler.run_local_subprocess is run_local_subprocess is not original, "nothing installed"


def test_a_replaced_function_whose_parameters_change_order_or_kind_is_reported(monkeypatch):
    from kfp.local.orchestrator import task_executor

    declared = kfp_seams.seam(kfp_seams.TASK_EXECUTE).params
    reordered = ", ".join((declared[1], declared[0], *declared[2:]))
    namespace: dict = {}
    exec(f"def execute_single_task({reordered}): pass", namespace)  # noqa: S102 - a signature built from the seam
    monkeypatch.setattr(task_executor, "execute_single_task", namespace["execute_single_task"])
    assert "in another order or of other kinds" in kfp_seams.problem(kfp_seams.seam(kfp_seams.TASK_EXECUTE))
    exec(f"def execute_single_task(*, {', '.join(declared)}): pass", namespace)  # noqa: S102
    monkeypatch.setattr(task_executor, "execute_single_task", namespace["execute_single_task"])
    assert "its parameters are (*, task_name," in kfp_seams.problem(kfp_seams.seam(kfp_seams.TASK_EXECUTE))


def test_a_called_function_may_gain_parameters(monkeypatch):
    """A function we only call keeps working when kfp adds an optional parameter: only missing names count."""
    from kfp.local import executor_input_utils

    monkeypatch.setattr(executor_input_utils, "get_local_task_resource_name",
                        lambda component_name, suffix="": component_name)
    assert kfp_seams.problem(kfp_seams.seam("kfp.local.executor_input_utils.get_local_task_resource_name")) == ""


def test_the_tasks_of_a_pipeline_being_compiled_are_read_through_the_seam(monkeypatch):
    from kfp.dsl import pipeline_context

    target = "kfp.dsl.pipeline_context.Pipeline.get_default_pipeline"
    assert kfp_seams.problem(kfp_seams.seam(target)) == ""
    original = pipeline_context.Pipeline.get_default_pipeline

    class TopLevelOnly:
        """A kfp whose pipeline keeps the tasks inside a group elsewhere."""

        def __init__(self, pipeline):
            self._pipeline = pipeline

        def __getattr__(self, name):
            return getattr(self._pipeline, name)

        @property
        def tasks(self):
            return dict(list(self._pipeline.tasks.items())[:1])

    monkeypatch.setattr(pipeline_context.Pipeline, "get_default_pipeline",
                        staticmethod(lambda: TopLevelOnly(original())))
    assert "its tasks in a two-task pipeline are ['probe']" in kfp_seams.problem(kfp_seams.seam(target))


def test_a_removed_seam_and_a_moved_call_site_are_reported(monkeypatch):
    from kfp.local import docker_task_handler

    monkeypatch.delattr(docker_task_handler, "run_docker_container")
    said = kfp_seams.problem(kfp_seams.seam(kfp_seams.DOCKER_RUN))
    assert "changed kfp.local.docker_task_handler.run_docker_container: it is gone (AttributeError" in said
    moved = kfp_seams.Seam("kfp.local.orchestrator.task_executor.execute_single_task", "why",
                           source=(("kfp.local.orchestrator.task_executor.execute_single_task",
                                    "dispatcher.run_task("),))
    assert "execute_single_task no longer contains 'dispatcher.run_task('" in kfp_seams.problem(moved)


def test_a_changed_log_format_or_failure_message_is_reported(monkeypatch):
    from kfp.local import logging_utils, pipeline_orchestrator

    @contextlib.contextmanager
    def other_format():
        root = logging.getLogger()
        kept = root.handlers[:]
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        root.handlers[:] = [handler]
        try:
            yield
        finally:
            root.handlers[:] = kept

    monkeypatch.setattr(logging_utils, "local_logger_context", other_format)
    said = kfp_seams.problem(kfp_seams.seam("kfp.local.logging_utils.local_logger_context"))
    assert "its log line reads '[INFO] Streamed logs:'" in said

    def fails(pipeline_name, raise_on_error, fail_stack):
        raise RuntimeError(f"Pipeline {pipeline_name} failed in {'/'.join(fail_stack)}")

    monkeypatch.setattr(pipeline_orchestrator, "log_and_maybe_raise_for_failure", fails)
    said = kfp_seams.problem(kfp_seams.seam("kfp.local.pipeline_orchestrator.log_and_maybe_raise_for_failure"))
    assert "its failure reads 'Pipeline p failed in train/condition-branches-1'; the task is not found" in said


def test_patched_restores_the_original_even_when_the_run_fails():
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess
    seen = []
    with pytest.raises(ValueError):
        with kfp_seams.subprocess_runs(lambda kfps: seen.append(kfps) or (lambda full_command, env_vars=None: 0)):
            assert subprocess_task_handler.run_local_subprocess is not original
            raise ValueError("the run failed")
    assert seen == [original], "the replacement is given kfp's own function, for its fallback"
    assert subprocess_task_handler.run_local_subprocess is original


def test_the_step_times_and_the_cache_patch_the_same_function_in_turn():
    """`imgclf run --cache` opens `timed_tasks` and then the cache's `task_executions` on one seam: the
    second check must see kfp's parameters, not the first replacement's."""
    from kfp.local.orchestrator import task_executor

    original = task_executor.execute_single_task
    served = []
    with kfp_seams.timed_tasks(lambda name, seconds: None) as first:
        with kfp_seams.task_executions(lambda timed: lambda **task: served.append(task["task_name"]) or "hit") \
                as second:
            assert task_executor.execute_single_task(**dict.fromkeys(kfp_seams.seam(kfp_seams.TASK_EXECUTE).params,
                                                                     "ingest")) == "hit"
        assert first is original and second is not original and served == ["ingest"]
    assert task_executor.execute_single_task is original


def test_the_log_grammar_reads_what_kfp_local_writes(capsys):
    """Lines as kfp.local and its executor write them: the chatter is recognised, the task lines are not."""
    from kfp.local import logging_utils, pipeline_orchestrator

    with logging_utils.local_logger_context():
        logging.info("Executing task %s", logging_utils.format_task_name("ingest"))
        logging.info("Streamed logs:\n")
        logging.info("Task %s outputs:\n    report: /runs/ingest/report", logging_utils.format_task_name("ingest"))
    lines = capsys.readouterr().out.splitlines()
    lines[2:2] = ["    [KFP Executor 2026-01-01 10:00:00,000 INFO]: Got executor_input:", "    {",
                  '        "inputs": {}', "    }", "    checked 120 images"]
    chatter = kfp_seams.KfpChatter()
    kept = [kfp_seams.plain(line) for line in lines if not chatter.drops(line) and line.strip()]
    assert len(kept) == 2 and kept[0].endswith("Executing task 'ingest'") and kept[1] == "    checked 120 images"
    with pytest.raises(RuntimeError) as failed:
        pipeline_orchestrator.log_and_maybe_raise_for_failure("training", True, ["train", "condition-branches-1"])
    assert kfp_seams.failed_task(str(failed.value)) == "train"


PRIVATE = re.compile(r"kfp\.local\.(task_dispatcher|subprocess_task_handler|docker_task_handler|orchestrator|"
                     r"executor_input_utils|executor_output_utils|logging_utils|pipeline_orchestrator|status)\b"
                     r"|from kfp\.local(\.\w+)? import (?!local\b)|from kfp\.dsl import executor_main"
                     r"|_recurring_run_api|_get_url_prefix|Inner task failed|\[KFP Executor|pipeline_context")


def test_no_other_module_reaches_into_kfp_internals():
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for folder in ("pipelines", "components") for p in sorted((REPO / folder).rglob("*.py"))
             if p.name != "kfp_seams.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)]
    assert not found, "kfp internals outside pipelines/kfp_seams.py:\n" + "\n".join(found)
    assert PRIVATE.search("    from kfp.local import task_dispatcher") and not PRIVATE.search("from kfp import local")
    assert PRIVATE.search("dsl.pipeline_context.Pipeline.get_default_pipeline().tasks")


def test_every_module_path_named_in_pipelines_exists():
    """The seams' declarations and the pipelines' docstrings point readers at files by path; a move or a
    rename must take those pointers along (a stale one sends the reader to nothing)."""
    named = {(m.group(0), f"{p.relative_to(REPO)}") for folder in ("pipelines", "components")
             for p in sorted((REPO / folder).rglob("*.py"))
             for m in re.finditer(r"\b(?:pipelines|components)/[\w/]+\.py\b", p.read_text(encoding="utf-8"))}
    missing = sorted(f"{where}: {path}" for path, where in named if not (REPO / path).is_file())
    assert not missing, "paths to files that do not exist:\n" + "\n".join(missing)
    assert any(path == "pipelines/local/cache.py" for path, _ in named), "the pattern finds the paths"


def test_every_replaced_function_is_declared():
    declared = {s.target for s in kfp_seams.SEAMS}
    assert {kfp_seams.SUBPROCESS_RUN, kfp_seams.DOCKER_RUN, kfp_seams.TASK_EXECUTE} <= declared
    assert all(s.why for s in kfp_seams.SEAMS)
