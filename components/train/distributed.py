"""Multi-worker training: one model trained data-parallel by several processes (nodes), each on its share of
every global batch, with the same weights on every worker after every step.

Engine: Keras 3's own multi-process data parallelism on JAX (`keras.distribution.DataParallel` over the
devices of every process, after `jax.distributed.initialize`). TensorFlow's `MultiWorkerMirroredStrategy`
was tried first, since the step's input is tf.data and its default backend TensorFlow, but Keras 3's `fit`
does not run under it (keras-team/keras#20585, open): with Keras 3.15.1 and TensorFlow 2.21 on two CPU
processes, `fit` fails before the first step reducing the first input batch across workers, and, patched
past that, in every step reducing its metrics (`reduce_per_replica` asks for axis 0 of a scalar). Two
private Keras functions patched for a path Keras does not test is no ground for users' nodes. The JAX
path is the one Keras supports across processes (`keras.distribution.initialize` is a thin wrapper of
`jax.distributed.initialize`), the train step already runs on JAX (tests/test_training.py), it takes the
tf.data input unchanged, and the saved `.keras` model is backend-free: export still serves it with
TensorFlow. A worker therefore runs with KERAS_BACKEND=jax (on GPUs the image needs jax's CUDA wheels,
`jax[cuda12]`, beside TensorFlow's). On CPUs, the collectives between processes go through gloo.

Data: every worker reads every TFRecord through the step's one input pipeline, which makes global batches
of train_workers x devices x batch_size images (batch_size stays "per device"); Keras' DataParallel
splits each global batch into one slice per process (`rebatch` + `shard`: DATA sharding, not by file).
That keeps the order of the images exactly a single process's at the same global batch (so the two can be
compared, and a resume replays the same sequence), and works for any number of files, at the price of each
worker reading and parsing the whole dataset (raw uint8 pixels: cheap to parse; the read is N-fold).

Roles: worker 0 is the chief. Only it writes the model folder, the learning-curve page, TensorBoard logs
and the training backup; the others write theirs to a temporary folder that is then deleted (what
TensorFlow's multi-worker guide asks of non-chief workers: the same code path, no shared writes). Every
worker restores from the chief's backup, so an attempt retried after a worker was killed resumes on all
workers from the last backed-up epoch.

Cluster: a worker learns it from its environment (`cluster_from_environment`, the contract with the cluster
launchers in cluster_jobs.py and with Vertex AI). With `train_workers` > 1 and no cluster there, the train
step becomes a local launcher (`launch_local`): it starts that many workers of itself on 127.0.0.1, waits
for them, and if one dies stops the rest and fails naming it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOSTS_ENV, INDEX_ENV, JOB_INDEX_ENV, TF_CONFIG_ENV = (
    "IMGCLF_WORKER_HOSTS", "IMGCLF_WORKER_INDEX", "JOB_COMPLETION_INDEX", "TF_CONFIG")
# TF_CONFIG's task types that train, in the order their hosts are numbered: Vertex AI names its worker pools
# chief/worker (TF_CONFIG) or workerpool0/workerpool1 (its CLUSTER_SPEC style); pool 0 is the chief.
TRAINING_ROLES = ("chief", "workerpool0", "worker", "workerpool1")
# Pods of one job start minutes apart while their images are pulled: JAX's 300 s default is too short.
START_TIMEOUT_S = 900


class ClusterError(ValueError):
    """The environment describes a cluster this worker cannot take part in (named with the variable)."""


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...]
    """host:port of every worker, chief first; the chief's address is where JAX's coordinator listens."""
    index: int
    source: str
    """The variable the cluster came from, for messages."""

    @property
    def workers(self) -> int:
        return len(self.hosts)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def coordinator(self) -> str:
        return self.hosts[0]


def _host(value: str, where: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"{where}: {value!r} is not host:port")
    return value.strip()


def _index(value, where: str, workers: int) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ClusterError(f"{where}: the worker index {value!r} is not a whole number >= 0")
    if int(text) >= workers:
        raise ClusterError(f"{where}: worker index {int(text)} is out of range for {workers} workers (0 to "
                           f"{workers - 1})")
    return int(text)


def _from_tf_config(text: str) -> Cluster:
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        role = task["type"]
        index = task.get("index", 0)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ClusterError(f"{TF_CONFIG_ENV} is not {{'cluster': {{...}}, 'task': {{'type': ..., 'index': ...}}}}: "
                           f"{e}") from None
    if role not in TRAINING_ROLES:
        raise ClusterError(f"{TF_CONFIG_ENV}: task type {role!r} does not train; a worker is one of "
                           f"{', '.join(TRAINING_ROLES)} (parameter servers and evaluators are not used)")
    hosts, offset = [], None
    for name in TRAINING_ROLES:
        members = cluster.get(name) or []
        if not isinstance(members, list):
            raise ClusterError(f"{TF_CONFIG_ENV}: cluster[{name!r}] is not a list of host:port")
        if name == role:
            offset = len(hosts)
            local = _index(index, f"{TF_CONFIG_ENV} task {role}", len(members))
        hosts += [_host(h, f"{TF_CONFIG_ENV} cluster[{name!r}]") for h in members]
    return Cluster(tuple(hosts), offset + local, TF_CONFIG_ENV)


def cluster_from_environment(env: dict[str, str] | None = None) -> Cluster | None:
    """The cluster this process is a worker of, or None when it trains alone.

    From `IMGCLF_WORKER_HOSTS` (comma-separated host:port of every worker, the same on all, chief first)
    with this worker's index from `IMGCLF_WORKER_INDEX`, else `JOB_COMPLETION_INDEX` (set per pod by a
    Kubernetes indexed Job, hence JobSet and a Kubeflow Trainer TrainJob); otherwise from `TF_CONFIG` (what
    Vertex AI sets in every replica of a CustomJob's worker pools: chief/workerpool0 first, then
    worker/workerpool1). Ours wins when both are set: a launcher that sets it means it. A cluster of one
    worker is training alone. Anything unusable is refused with the variable's name, never guessed.
    """
    env = os.environ if env is None else env
    if env.get(HOSTS_ENV, "").strip():
        hosts = tuple(_host(h, HOSTS_ENV) for h in env[HOSTS_ENV].split(",") if h.strip())
        if len(set(hosts)) != len(hosts):
            raise ClusterError(f"{HOSTS_ENV}: a host:port appears twice in {env[HOSTS_ENV]!r}")
        for name in (INDEX_ENV, JOB_INDEX_ENV):
            if env.get(name, "").strip():
                cluster = Cluster(hosts, _index(env[name], name, len(hosts)), HOSTS_ENV)
                break
        else:
            raise ClusterError(f"{HOSTS_ENV} is set but this worker's index is not: set {INDEX_ENV} (or run as "
                               f"an indexed Job, which sets {JOB_INDEX_ENV})")
    elif env.get(TF_CONFIG_ENV, "").strip():
        cluster = _from_tf_config(env[TF_CONFIG_ENV])
    else:
        return None
    return cluster if cluster.workers > 1 else None


_active: Cluster | None = None


def start(cluster: Cluster | None, train_workers: int) -> None:
    """Join the cluster (once per process): JAX's distributed runtime, gloo collectives between CPUs.
    Must run before anything computes with JAX."""
    global _active
    if cluster is None:
        return
    if cluster.workers != train_workers:
        raise ClusterError(f"train_workers is {train_workers} but {cluster.source} describes {cluster.workers} "
                           f"workers: launch as many workers as train_workers says")
    import keras

    if keras.backend.backend() != "jax":
        raise ClusterError(f"a training worker runs Keras on JAX (see distributed.py), but KERAS_BACKEND is "
                           f"{keras.backend.backend()!r}: set KERAS_BACKEND=jax in every worker's environment")
    if _active is not None:
        if _active != cluster:
            raise ClusterError(f"this process already joined {_active}; it cannot join {cluster}")
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.workers,
                               process_id=cluster.index, initialization_timeout=START_TIMEOUT_S)
    _active = cluster
    print(f"train: worker {cluster.index} of {cluster.workers} ({'chief' if cluster.is_chief else 'not chief'}), "
          f"cluster from {cluster.source}, coordinator {cluster.coordinator}", flush=True)


def active() -> Cluster | None:
    return _active


def is_chief() -> bool:
    """Whether this process writes the outputs: the chief of a cluster, or a process training alone."""
    return _active is None or _active.is_chief


def chief_number(value: int) -> int:
    """The chief's integer on every worker (alone: `value`): decisions taken from a worker's own clock
    (whether a backup is due, the time budget's epochs) must be the same everywhere when acting on them
    is a collective step."""
    if _active is None:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def agree(value: bool) -> bool:
    """`chief_number` for a yes or no."""
    return bool(chief_number(int(value)))


def chief_outputs(model_dir: str, curves_html: str, opts, tmp: str):
    """(model_dir, curves_html, opts) this worker writes to: the given ones on the chief; on the others a
    folder under `tmp` (deleted with it), no page and no TensorBoard mirror, so that nothing but the
    chief ever writes the run's outputs."""
    if is_chief():
        return model_dir, curves_html, opts
    return str(Path(tmp) / "not-chief-model"), "", dataclasses.replace(opts, tensorboard_uri="")


@contextlib.contextmanager
def setup(precision: str, distribute: str, jit_compile: str):
    """accelerate.setup, and in a cluster Keras' DataParallel over the devices of the main kind (GPUs, else
    CPUs) of every worker: `replicas` is then the global count, and the global batch
    replicas x batch_size."""
    import keras

    from imgclf.components.train import accelerate

    with accelerate.setup(precision, distribute, jit_compile) as hw:
        if _active is None or keras.distribution.distribution() is not None:
            yield hw  # alone, or accelerate already spread over every worker's GPUs (jax.devices() is global)
            return
        import jax

        kind = "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
        dist = keras.distribution.DataParallel(devices=[d for d in jax.devices() if d.platform == kind])
        keras.distribution.set_distribution(dist)
        try:
            yield dataclasses.replace(hw, replicas=len(dist.device_mesh.devices.flatten()))
        finally:
            keras.distribution.set_distribution(None)


def whole_batches(ds, count: int, global_batch: int, split: str, endless: bool = False):
    """In a cluster, the split as whole global batches of a static size: Keras' DataParallel splits each
    into equal slices, one per worker, and needs the batch size in the dataset's shapes. A last, partial
    batch of a finite split is left out: it would leave some workers fewer rows or none (evaluate scores
    every image afterwards). Alone: the dataset as it is."""
    if _active is None:
        return ds
    import tensorflow as tf

    if not endless:
        whole = count // global_batch
        if whole == 0:
            raise ValueError(f"train: the {split} split has {count} images, fewer than one global batch of "
                             f"{global_batch} ({_active.workers} workers): lower batch_size or train_workers")
        if whole * global_batch < count:
            print(f"train: {split} uses {whole * global_batch} of its {count} images per epoch (whole global "
                  f"batches of {global_batch} across {_active.workers} workers)", flush=True)
        ds = ds.take(whole)
    return ds.map(lambda *batch: tuple(tf.ensure_shape(t, [global_batch, *t.shape[1:]]) for t in batch))


def validation_batch(count: int, batch_size: int, replicas: int) -> int:
    """The validation split's global batch: alone, the training one; in a cluster replicas x k, with k
    from batch_size / 4 (less on a split that small) to batch_size, the one that leaves the fewest
    images out of whole batches (then the largest). Validation needs whole batches (see
    `whole_batches`), and at the training batch up to a whole batch less one would go unscored every
    epoch (117 of the sample's 501 at 2 x 64); this way it is usually none or a few, and the loss and
    accuracy over the rest do not depend on the batching."""
    if _active is None:
        return batch_size * replicas
    ks = range(max(1, min(-(-batch_size // 4), count // replicas)), batch_size + 1)
    return replicas * min(ks, key=lambda k: (count % (replicas * k) if count >= replicas * k else count, -k))


def validation_steps(val_ds) -> dict:
    """fit's `validation_steps` in a cluster: the workers' slices of the validation set have no length
    Keras can see (its split of each global batch loses it), and without one it reads each epoch's
    validation until the data runs out and warns, every epoch, that training was interrupted."""
    if _active is None or val_ds is None:
        return {}
    return {"validation_steps": int(val_ds.cardinality())}


# --- the local launcher ---------------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    """A worker of a local multi-worker run died: the attempt fails; a retry resumes from the backup."""


def _free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _cause(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch_local(workers: int, dataset_dir: str, model_dir: str, opts, backup_uri: str, curves_html: str):
    """Run the train step as `workers` processes on 127.0.0.1 (each a worker with the cluster in its
    environment, KERAS_BACKEND=jax) and return the chief's TrainResult. The chief prints to this process's
    output; the others to logs, of which a failed worker's last lines are shown. When a worker dies, the
    others are stopped (their one process group: SIGTERM, then SIGKILL) and WorkerFailed names it and why."""
    from imgclf.components.train.step import TrainResult

    work = Path(tempfile.mkdtemp(prefix="imgclf-workers-"))
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(workers))
    spec = work / "spec.json"
    spec.write_text(json.dumps({"dataset_dir": dataset_dir, "model_dir": model_dir, "backup_uri": backup_uri,
                                "curves_html": curves_html, "options": dataclasses.asdict(opts),
                                "result": str(work / "result.json")}))
    base = {k: v for k, v in os.environ.items() if k not in (TF_CONFIG_ENV, JOB_INDEX_ENV)}
    print(f"train: {workers} worker processes on {hosts} (worker 0 is the chief)", flush=True)
    procs: list[subprocess.Popen] = []
    logs: list[Path | None] = []
    with stopped_by_sigterm():  # a cancelled task: the finally below stops the workers
        try:
            for i in range(workers):
                env = {**base, "KERAS_BACKEND": "jax", HOSTS_ENV: hosts, INDEX_ENV: str(i)}
                log = None if i == 0 else work / f"worker-{i}.log"
                out = None if log is None else open(log, "wb")
                procs.append(subprocess.Popen([sys.executable, "-m", "imgclf.components.train.distributed", str(spec)],
                                              env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                              process_group=0 if not procs else procs[0].pid))
                logs.append(log)
                if out:
                    out.close()
            failed = _wait(procs)
            if failed is not None:
                _stop(procs)
                proc = procs[failed]
                detail = f"; its last output:\n{_tail(logs[failed])}" if logs[failed] else ""
                raise WorkerFailed(f"train: worker {failed} of {workers} (pid {proc.pid}) {_cause(proc.returncode)}; "
                                   f"stopped the other workers. A retry with the same backup resumes from the last "
                                   f"backed-up epoch{detail}")
            return TrainResult(**json.loads((work / "result.json").read_text()))
        finally:
            _stop(procs)
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def stopped_by_sigterm():
    """A cancelled KFP or Vertex task gets SIGTERM: turn it into SystemExit so the cleanup of the block
    runs (stopping local workers, deleting a TrainJob, cancelling a CustomJob); Python's default would end
    the process without it. Only the main thread can set handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(procs: list[subprocess.Popen]) -> int | None:
    """Until every worker ended well (None) or one ended badly (its index). Of several found dead at once,
    one killed by a signal is named before one that exited in error: the survivors of a killed worker fail
    in their next collective, and the killed one is the cause."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            return min(bad, key=lambda i: (codes[i] >= 0, i))
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    if not procs or all(p.poll() is not None for p in procs):
        return
    group = procs[0].pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        if all(p.poll() is not None for p in procs):
            return


def _worker_main(spec_path: str) -> None:
    """One worker started by launch_local: the train step with the launcher's arguments; the chief hands
    its result back through a file."""
    from imgclf.components.lib import storage
    from imgclf.components.train.options import TrainOptions
    from imgclf.components.train.step import train

    spec = json.loads(Path(spec_path).read_text())
    result = train(spec["dataset_dir"], spec["model_dir"], opts=TrainOptions(**spec["options"]),
                   backup_uri=spec["backup_uri"], curves_html=spec["curves_html"])
    if is_chief():
        storage.atomic_write_text(spec["result"], json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
