"""Local tasks start in a fork of a process that has already imported TensorFlow, Keras and kfp.

kfp.local's SubprocessRunner starts `python -m kfp.dsl.executor_main` for every task, and each of our
TensorFlow steps then spends seconds of a small machine importing TensorFlow and Keras before its first
line of work: on the embedded sample that was a third of the whole run. Here one helper process (the
"zygote") imports them once, at the start of the run, while the first tasks are dispatched; each task
is then a `fork()` of it running kfp's own executor on the same command line kfp.local built.

What a task gets is what SubprocessRunner gives it: its own process (memory returned when it ends, a
crash or `os._exit` ends only it), the run's environment plus the task's variables, the executor's
stdout and stderr as the task's log, and its exit status. The zygote itself never runs TensorFlow
(no op, no thread pool, no model), and it is a fresh single-threaded process, never the caller: a
fork of a process with other threads running (a test server, the caller's own pools) may inherit a
held lock.

The zygote runs one task at a time: the iterations of a ParallelFor (shard tasks, sweep trials), which
kfp.local dispatches from several threads, wait their turn, where plain subprocesses would share the
cores (on our 2-core machine one shard task was faster than two; `IMGCLF_PRELOAD=0` restores them).
Each task is told so (`IMGCLF_TASKS_IN_SERIES=1`), and preprocess's plan then asks for one shard task.

A task falls back to a plain subprocess when its command is not a lightweight Python component's, or
when its environment changes a variable that the preloaded libraries read at import time (a task set
to KERAS_BACKEND=jax must import Keras afresh). `IMGCLF_PRELOAD=0` turns the zygote off for a run.
What this relies on in kfp (the command shape, `run_local_subprocess`, the executor) is declared in
pipelines/kfp_seams.py and checked against the installed kfp by tests/test_kfp_seams.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading

from imgclf.pipelines import kfp_seams
from imgclf.pipelines.kfp_seams import split_command

PRELOAD = ("tensorflow", "keras", "numpy", "PIL.Image", "fsspec", "kfp.dsl.executor_main",
           "imgclf.components.lib.storage", "imgclf.components.lib.images", "imgclf.components.lib.records")
"""What the zygote imports before its first fork: the libraries every heavy step imports first."""

NOT_PRELOADED = ("jax",)
"""Optional libraries that TensorFlow's import pulls in when installed and that no TensorFlow step uses:
TF Lite's JAX converter imports jax (a good share of the zygote's start). Held back while the zygote preloads."""

IMPORT_TIME_ENV = ("KERAS_", "TF_", "XLA_", "CUDA_", "JAX_", "OMP_", "MKL_", "OPENBLAS_", "TPU_", "PYTHON")
"""Prefixes of environment variables read when TensorFlow, Keras or JAX is imported."""

def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(IMPORT_TIME_ENV)}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# ------------------------------------------------------------------------------------------- zygote side
def _run_task(request: dict) -> int:
    """In the forked child: become the task kfp.local would have started, and run kfp's executor."""
    import io
    import logging
    import tempfile
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["_KFP_RUNTIME"] = "true"
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    folder = tempfile.mkdtemp(prefix="imgclf-task-")
    module = os.path.join(folder, "ephemeral_component.py")
    with open(module, "w") as f:
        f.write(request["source"])
    sys.argv = ["kfp.dsl.executor_main", "--component_module_path", module, *request["args"]]
    try:
        kfp_seams.run_executor()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the task's failure is its log and exit status, as in a subprocess
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def serve(sock: socket.socket) -> None:
    """The zygote's loop: preload, then one fork per request; answers each with the task's exit status."""
    import importlib

    preloaded, failed = [], []
    held_back = [name for name in NOT_PRELOADED if name not in sys.modules]
    sys.modules.update(dict.fromkeys(held_back))  # None: `import jax` raises ImportError meanwhile
    try:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
                preloaded.append(name)
            except Exception as e:  # noqa: BLE001 - a library this venv lacks is imported by the task, as before
                failed.append(f"{name}: {e}")
    finally:
        for name in held_back:  # a task that needs one imports it, as a fresh process would
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    sock.sendall(json.dumps({"ready": preloaded, "failed": failed}).encode() + b"\n")
    while True:
        # A request is an 8-byte length sent with the task's log pipe, then that many bytes of JSON.
        header, fds, _, _ = socket.recv_fds(sock, 8, 1)
        if not header:
            return
        header += _recv_exact(sock, 8 - len(header))
        request = json.loads(_recv_exact(sock, int.from_bytes(header, "big")))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                os.dup2(fds[0], 1)
                os.dup2(fds[0], 2)
                os.close(fds[0])
                code = _run_task(request)
            finally:
                os._exit(code)
        os.close(fds[0])
        _, status = os.waitpid(pid, 0)
        sock.sendall(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


# ------------------------------------------------------------------------------------------- caller side
class Zygote:
    """The caller's handle: starts the zygote, sends it tasks one at a time, stops it."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock, self._lock, self._replies = ours, threading.Lock(), ours.makefile("rb")
        self._ready: dict | None = None
        self.import_env = import_time_env(dict(os.environ))
        self.process = subprocess.Popen([sys.executable, "-m", "imgclf.pipelines.local.preloaded_tasks", "--serve",
                                         str(theirs.fileno())], pass_fds=[theirs.fileno()], cwd=os.getcwd(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "PYTHONPATH": _import_path()})
        theirs.close()

    def _reply(self) -> dict:
        line = self._replies.readline()
        if not line:
            raise ConnectionError(f"the task zygote (pid {self.process.pid}) ended (exit {self.process.wait()})")
        return json.loads(line)

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a task with this environment gets what a fresh process would import."""
        return self.process.poll() is None and import_time_env(env) == self.import_env

    def run(self, source: str, args: list[str], env: dict[str, str]) -> int:
        """Run one task in a fork, printing its log lines as SubprocessRunner does; its exit status."""
        with self._lock:
            if self._ready is None:
                self._ready = self._reply()
            body = json.dumps({"source": source, "args": args, "cwd": os.getcwd(), "env": env}).encode()
            read, write = os.pipe()
            try:
                socket.send_fds(self._sock, [len(body).to_bytes(8, "big")], [write])
                self._sock.sendall(body)
            finally:
                os.close(write)
            with os.fdopen(read, "r", errors="replace") as log:
                for line in log:
                    print(line, end="")
            print("\n")
            return int(self._reply()["exit"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._replies.close()
        self._sock.close()


def _import_path() -> str:
    """The caller's import path, so the zygote imports `imgclf` (and the tasks' modules) as the caller does,
    from an installed package or a source checkout."""
    return os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)


def enabled() -> bool:
    return os.environ.get("IMGCLF_PRELOAD", "1") not in ("0", "false", "no")


_started: Zygote | None = None


def start_early() -> None:
    """Start the zygote now, for the next `preloaded_tasks()`: `imgclf run` calls it first thing, so
    the preloading overlaps checking the parameters and building the pipeline."""
    global _started
    if enabled() and _started is None:
        _started = Zygote()


@contextlib.contextmanager
def preloaded_tasks():
    """While open, kfp.local's SubprocessRunner starts tasks as forks of one preloaded zygote."""
    global _started
    if not enabled():
        yield None
        return
    # Every task the zygote runs is told that tasks run one at a time (preprocess then plans one shard task).
    from imgclf.components.lib.sharding import IN_SERIES_ENV

    zygote, _started = _started or Zygote(), None

    def make(original):
        def run_local_subprocess(full_command, env_vars=None):
            split, env = split_command(full_command), {**os.environ, **(env_vars or {})}
            if split is None or not zygote.serves(env):
                return original(full_command=full_command, env_vars=env_vars)
            return zygote.run(*split, {**env, IN_SERIES_ENV: "1"})
        return run_local_subprocess

    try:
        with kfp_seams.subprocess_runs(make):
            yield zygote
    finally:
        zygote.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(socket.socket(fileno=int(sys.argv[2])))
        # Without the interpreter's teardown of TensorFlow and Keras (seconds, which the caller waited
        # for at the end of every run): the zygote ran nothing and has nothing to flush.
        os._exit(0)
