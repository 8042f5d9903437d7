"""Local tasks forked from the preloaded zygote behave as SubprocessRunner's fresh processes do: own
process, own failures, the task's environment, nothing carried from one task to the next; and a task
whose environment changes what the libraries read at import time gets a really fresh process."""

import json
import os

import pytest
from kfp import dsl

from imgclf.pipelines.local import preloaded_tasks
from imgclf.pipelines.local.run import PipelineFailed, run_pipeline


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def probe(tag: str, leave: str) -> str:
    import json
    import os
    import sys

    import imgclf.components.lib.storage as storage

    jax_before = "jax" in sys.modules
    import jax  # held back from the preload, importable in a task as in a fresh process

    seen = getattr(storage, "_probe_left_by", "")
    storage._probe_left_by = leave          # a module global a later task must not see
    return json.dumps({"tag": tag, "pid": os.getpid(), "ppid": os.getppid(), "seen": seen,
                       "tf_before": "tensorflow" in sys.modules and tag != "imported-here",
                       "jax_before": jax_before, "jax_imported": callable(getattr(jax, "jit", None)),
                       "env": os.environ.get("PROBE_VALUE", ""), "backend": os.environ.get("KERAS_BACKEND", ""),
                       "in_series": os.environ.get("IMGCLF_TASKS_IN_SERIES", "")})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def crash(how: str) -> str:
    import os

    if how == "exit":
        os._exit(3)
    if how == "raise":
        raise ValueError("probe failed on purpose")
    return how


@dsl.pipeline(name="probes")
def probes(first: str, second: str) -> str:
    a = probe(tag=first, leave="from-a")
    b = probe(tag=second, leave="from-b").after(a)
    b.set_env_variable("PROBE_VALUE", "set-on-b")
    return b.output


@dsl.pipeline(name="probe-backend")
def probe_backend() -> str:
    t = probe(tag="jax", leave="")
    t.set_env_variable("KERAS_BACKEND", "jax")
    return t.output


@dsl.pipeline(name="crashes")
def crashes(how: str) -> str:
    return crash(how=how).output


def _tasks(root) -> list[dict]:
    """Each probe's answer, in task order, from the run folder (kfp.local writes outputs as JSON)."""
    found = []
    for out in sorted(root.rglob("executor_output.json"), key=lambda p: p.stat().st_mtime):
        params = json.loads(out.read_text()).get("parameterValues", {})
        if "Output" in params and params["Output"].startswith("{"):
            found.append(json.loads(params["Output"]))
    return found


def test_tasks_are_separate_forks_of_one_preloaded_process(tmp_path):
    task, _, _ = run_pipeline(probes, {"first": "a", "second": "b"}, str(tmp_path))
    a, b = _tasks(tmp_path)
    assert json.loads(task.output)["tag"] == "b"
    assert a["pid"] != b["pid"] != os.getpid() and a["pid"] != os.getpid()
    assert a["ppid"] == b["ppid"] != os.getpid(), "both tasks are children of the zygote, not of the caller"
    assert a["tf_before"] and b["tf_before"], "TensorFlow was imported before the task started"
    assert not a["jax_before"] and a["jax_imported"], "jax is held back from the preload, and still importable"
    assert b["seen"] == "", "a module global set by the first task is not in the second"
    assert (a["env"], b["env"]) == ("", "set-on-b"), "each task sees its own environment variables"
    assert a["in_series"] == b["in_series"] == "1", "a forked task is told that tasks run one at a time"


def test_import_time_variables_get_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    run_pipeline(probe_backend, {}, str(tmp_path))
    [t] = _tasks(tmp_path)
    assert t["backend"] == "jax"
    assert not t["tf_before"], "a KERAS_BACKEND change must not run on the TensorFlow-preloaded zygote"
    assert t["in_series"] == "", "a plain subprocess may run beside others: it is not told otherwise"


def test_preload_off(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_PRELOAD", "0")
    run_pipeline(probes, {"first": "a", "second": "b"}, str(tmp_path))
    a, b = _tasks(tmp_path)
    assert not a["tf_before"] and not b["tf_before"]
    assert a["in_series"] == b["in_series"] == ""


@pytest.mark.parametrize("how, cause", [("raise", "ValueError: probe failed on purpose"), ("exit", "")])
def test_a_failing_task_fails_alone(tmp_path, how, cause):
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(crashes, {"how": how}, str(tmp_path / "bad"))
    assert failed.value.step == "crash" and failed.value.cause == cause
    task, seconds, _ = run_pipeline(crashes, {"how": "fine"}, str(tmp_path / "good"))
    assert task.output == "fine"
    assert list(seconds) == ["crash"] and seconds["crash"] > 0, "each task's time, under its step's name"


SERVED = [({}, True), ({"PROBE_VALUE": "x", "HOME": "/elsewhere"}, True),
          ({"KERAS_BACKEND": "jax"}, False), ({"TF_CPP_MIN_LOG_LEVEL": "3"}, False), ({"XLA_FLAGS": "--x"}, False),
          ({"CUDA_VISIBLE_DEVICES": ""}, False), ({"OMP_NUM_THREADS": "1"}, False), ({"JAX_PLATFORMS": "cpu"}, False)]


def test_which_environments_the_zygote_serves(monkeypatch):
    for env, _ in SERVED:
        for key in env:
            if key not in ("PROBE_VALUE", "HOME"):
                monkeypatch.delenv(key, raising=False)
    zygote = preloaded_tasks.Zygote()
    try:
        for env, serves in SERVED:
            assert zygote.serves({**os.environ, **env}) is serves, env
    finally:
        zygote.close()
    assert zygote.process.returncode == 0


def test_split_command_reads_kfps_own_command(tmp_path):
    from kfp import local

    from imgclf.pipelines import kfp_seams

    seen = []
    with kfp_seams.subprocess_runs(lambda original: lambda full_command, env_vars=None: seen.append(full_command) or 0):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
        crash(how="fine")  # the stand-in only records the command
    [command] = seen
    source, args = preloaded_tasks.split_command(command)
    assert "def crash(how: str) -> str:" in source
    assert args[args.index("--function_to_execute") + 1] == "crash"
    assert json.loads(args[args.index("--executor_input") + 1])["inputs"]["parameterValues"] == {"how": "fine"}
    assert preloaded_tasks.split_command(["sh", "-c", "echo hi"]) is None
