"""Multi-worker training (components/train/distributed.py): how a worker learns its cluster from its
environment (generated cases, every way of saying it and every way of getting it wrong), and, for real,
two worker processes on 127.0.0.1 training the sample data: the same weights on both after every step,
the same result as one process at the same global batch, and a killed worker's attempt failing by name
and its retry resuming from the chief's backup.

The training tests reach into the workers through a `sitecustomize` module on PYTHONPATH (Python loads it
in every process at start-up): it adds a callback to the train step's fit that records a digest of all
the weights after every training step, and the weights after the last. Nothing in the step knows of it."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

from imgclf.components.lib.options import ParameterError
from imgclf.components.train import distributed
from imgclf.components.train.distributed import Cluster, ClusterError, cluster_from_environment
from imgclf.components.train.options import TrainOptions
from tests.conftest import REPO, preprocessed

QUIET = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "JOB_COMPLETION_INDEX")
         and not k.startswith("IMGCLF_WORKER_")} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
SMALL = ["--width", "8", "--depth", "2", "--seed", "5"]


# --- the cluster from the environment (unit) -------------------------------------------------------------

def _hosts(rng: random.Random, n: int) -> list[str]:
    names = rng.sample(range(1, 10_000), n)
    return [rng.choice([f"10.0.{h // 250}.{h % 250}", f"train-w-{h}.svc", f"cmle-training-{h}"]) +
            f":{rng.randint(1, 65535)}" for h in names]


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(4))
def test_our_variables_give_the_hosts_and_the_index_from_either_source(seed):
    rng = random.Random(seed)
    for _ in range(50):
        n = rng.randint(2, 9)
        hosts, index = _hosts(rng, n), rng.randrange(n)
        env = {"IMGCLF_WORKER_HOSTS": ",".join(hosts), "PATH": "/bin"}
        source = rng.choice(["ours", "job", "both"])
        if source in ("ours", "both"):
            env["IMGCLF_WORKER_INDEX"] = str(index)
        if source in ("job", "both"):  # with both, ours is the one that counts
            env["JOB_COMPLETION_INDEX"] = str(index if source == "job" else rng.randrange(n))
        if rng.random() < 0.3:  # a TF_CONFIG beside ours is not what counts either
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": _hosts(rng, 3)}, "task": {"type": "worker",
                                                                                           "index": 2}})
        got = cluster_from_environment(env)
        assert got == Cluster(tuple(hosts), index, "IMGCLF_WORKER_HOSTS"), (env, got)
        assert got.is_chief == (index == 0) and got.coordinator == hosts[0] and got.workers == n


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(4))
def test_tf_config_as_vertex_and_tensorflow_write_it(seed):
    """Chief (workerpool0) first, then the workers (workerpool1), whichever names the pools go by; the
    other roles are in the cluster but not among the hosts."""
    rng = random.Random(100 + seed)
    for _ in range(50):
        chiefs = _hosts(rng, rng.choice([0, 1]))
        workers = _hosts(rng, rng.randint(1 if chiefs else 2, 6))
        chief_name, worker_name = rng.choice([("chief", "worker"), ("workerpool0", "workerpool1")])
        cluster = {worker_name: workers, **({chief_name: chiefs} if chiefs else {})}
        if rng.random() < 0.5:
            cluster["ps" if chief_name == "chief" else "workerpool2"] = _hosts(rng, 2)
        if rng.random() < 0.5:
            cluster["evaluator" if chief_name == "chief" else "workerpool3"] = _hosts(rng, 1)
        if chiefs and rng.random() < 0.4:
            task, want = {"type": chief_name, "index": 0}, 0
        else:
            i = rng.randrange(len(workers))
            task, want = {"type": worker_name, "index": i}, len(chiefs) + i
        env = {"TF_CONFIG": json.dumps({"cluster": dict(rng.sample(sorted(cluster.items()), len(cluster))),
                                        "task": task, "environment": "cloud"})}
        got = cluster_from_environment(env)
        assert got == Cluster(tuple(chiefs + workers), want, "TF_CONFIG"), (env, got)


@pytest.mark.unit
def test_no_cluster_or_a_cluster_of_one_trains_alone():
    assert cluster_from_environment({}) is None
    assert cluster_from_environment({"IMGCLF_WORKER_HOSTS": " ", "TF_CONFIG": ""}) is None
    assert cluster_from_environment({"IMGCLF_WORKER_HOSTS": "a:1", "IMGCLF_WORKER_INDEX": "0"}) is None
    # What Vertex AI sets for a job with one replica in one pool.
    assert cluster_from_environment({"TF_CONFIG": json.dumps({"cluster": {"chief": ["cmle-training-x:2222"]},
                                                              "task": {"type": "chief", "index": 0}})}) is None


BAD = [
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2"}, r"IMGCLF_WORKER_HOSTS is set but this worker's index is not: set "
                                          r"IMGCLF_WORKER_INDEX \(or run as an indexed Job, which sets "
                                          r"JOB_COMPLETION_INDEX\)"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "IMGCLF_WORKER_INDEX": " "}, r"this worker's index is not"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "IMGCLF_WORKER_INDEX": "one"},
     r"IMGCLF_WORKER_INDEX: the worker index 'one' is not a whole number >= 0"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "IMGCLF_WORKER_INDEX": "-1"}, r"'-1' is not a whole number"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "JOB_COMPLETION_INDEX": "1.0"},
     r"JOB_COMPLETION_INDEX: the worker index '1.0' is not a whole number"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "IMGCLF_WORKER_INDEX": "2"},
     r"IMGCLF_WORKER_INDEX: worker index 2 is out of range for 2 workers \(0 to 1\)"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:2", "JOB_COMPLETION_INDEX": "7"}, r"worker index 7 is out of range"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b", "IMGCLF_WORKER_INDEX": "0"}, r"IMGCLF_WORKER_HOSTS: 'b' is not host:port"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,b:0", "IMGCLF_WORKER_INDEX": "0"}, r"'b:0' is not host:port"),
    ({"IMGCLF_WORKER_HOSTS": "a:1,a:1", "IMGCLF_WORKER_INDEX": "0"}, r"a host:port appears twice"),
    ({"TF_CONFIG": "{not json"}, r"TF_CONFIG is not \{'cluster'"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}})}, r"TF_CONFIG is not .*'task'"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"], "ps": ["c:3"]},
                               "task": {"type": "ps", "index": 0}})},
     r"TF_CONFIG: task type 'ps' does not train; a worker is one of chief, workerpool0, worker, workerpool1"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}})},
     r"TF_CONFIG task worker: worker index 2 is out of range for 2 workers"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "x"}})},
     r"TF_CONFIG task worker: the worker index 'x' is not a whole number"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": "a:1,b:2"}, "task": {"type": "worker", "index": 0}})},
     r"TF_CONFIG: cluster\['worker'\] is not a list of host:port"),
]


@pytest.mark.unit
@pytest.mark.parametrize("env, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_an_unusable_cluster_is_refused_naming_the_variable(env, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from_environment(env)


@pytest.mark.unit
def test_train_workers_is_validated_and_must_match_the_cluster(monkeypatch):
    for bad in (0, -1, 257):
        with pytest.raises(ParameterError, match="train_workers"):
            TrainOptions(train_workers=bad)
    assert TrainOptions(train_workers=256).train_workers == 256
    two = Cluster(("a:1", "b:2"), 1, "IMGCLF_WORKER_HOSTS")
    with pytest.raises(ClusterError, match="train_workers is 3 but IMGCLF_WORKER_HOSTS describes 2 workers"):
        distributed.start(two, 3)
    # Keras as a worker launched without KERAS_BACKEND would see it (a stand-in: importing Keras takes seconds).
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(backend=types.SimpleNamespace(
        backend=lambda: "tensorflow")))
    with pytest.raises(ClusterError, match="set KERAS_BACKEND=jax in every worker's environment"):
        distributed.start(two, 2)
    assert distributed.active() is None and distributed.is_chief()


@pytest.mark.unit
def test_validation_batches_leave_out_few_images(monkeypatch):
    """In a cluster validation takes whole global batches only; its batch is chosen so that few images
    are left out: never more than at the training batch, always a multiple of the replicas."""
    assert distributed.validation_batch(501, 64, 2) == 128  # alone: the training global batch
    monkeypatch.setattr(distributed, "_active", Cluster(("a:1", "b:2"), 0, "TF_CONFIG"))
    assert distributed.validation_batch(501, 64, 2) == 100  # 500 of 501 scored (at 128: 384)
    rng = random.Random(7)
    for _ in range(2000):
        replicas, batch = rng.randint(2, 64), rng.randint(1, 512)
        count = rng.randint(replicas, 200_000)
        got = distributed.validation_batch(count, batch, replicas)
        assert got % replicas == 0 and 1 <= got // replicas <= batch, (count, batch, replicas, got)
        left_out = count % got if count >= got else count
        at_training = count % (batch * replicas) if count >= batch * replicas else count
        assert left_out <= at_training and left_out < count, (count, batch, replicas, got)


@pytest.mark.unit
@pytest.mark.parametrize("compiled", [True, False])
def test_the_task_hands_several_workers_to_the_cluster_only_in_a_pipeline_compiled_for_one(monkeypatch, tmp_path,
                                                                                          compiled):
    """With cluster settings (a pipeline compiled for KFP or Vertex) the train task runs its workers as a
    cluster job (cluster_jobs.py) and reports the chief's result from train.json; without (kfp.local) it
    calls the step, which starts its workers on this machine."""
    from imgclf.components import contracts
    from imgclf.components.train import cluster_jobs, step, task

    calls = []
    monkeypatch.setattr(cluster_jobs.ClusterSettings, "from_env",
                        classmethod(lambda cls, environ=None: object() if compiled else None))
    monkeypatch.setattr(cluster_jobs, "train_on_cluster", lambda options, **kw: calls.append(("cluster", options, kw)))
    monkeypatch.setattr(step, "train", lambda *a, **kw: calls.append(("step", a, kw)) or
                        step.TrainResult(3, 2, 0.5, 0.8, 0.7, 9.0, 100.0, 50.0, 3.0, 0.0, 2, 0))
    monkeypatch.setattr(contracts.TrainedModel, "load", classmethod(
        lambda cls, path: types.SimpleNamespace(result={"epochs_run": 3, "replicas": 2})))
    monkeypatch.setattr(contracts, "load_history", lambda path: {"images_per_second": [80.0, 90.0],
                                                                 "epoch_seconds": [2.0, 1.5]})
    logged = {}
    metrics = types.SimpleNamespace(log_metric=logged.__setitem__)
    model = types.SimpleNamespace(uri="s3://b/run/train/model", path=str(tmp_path / "model"), metadata={})
    records = types.SimpleNamespace(uri="s3://b/run/records", path=str(tmp_path / "records"))
    curves = types.SimpleNamespace(path=str(tmp_path / "curves.html"))
    task.train(records, model, metrics, curves, train_workers=2, epochs=3)
    backup = "s3://b/run/train/model.backup"
    if compiled:
        assert calls == [("cluster", {"train_workers": 2, "epochs": 3}, {
            "records_uri": "s3://b/run/records", "model_uri": "s3://b/run/train/model", "backup_uri": backup,
            "model_path": model.path, "curves_path": curves.path})]
    else:
        assert calls == [("step", (records.path, model.path), {"backup_uri": backup, "curves_html": curves.path,
                                                               "train_workers": 2, "epochs": 3})]
    assert logged["epochs_run"] == 3 and logged["replicas"] == 2 and logged["epoch 02: images/s"] == 90.0
    assert model.metadata["epochs_run"] == 3


# --- two workers on 127.0.0.1 (slow) ----------------------------------------------------------------------

HOOK = '''
import os

OUT = os.environ.get("IMGCLF_TEST_DIGESTS")
if OUT:
    from imgclf.components.train import step

    _fit = step.fit

    def fit(run, *args, **kwargs):
        import hashlib

        import keras
        import numpy as np

        who = os.environ.get("IMGCLF_WORKER_INDEX", "alone")

        class Digest(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                weights = b"".join(np.asarray(w).tobytes() for w in self.model.get_weights())
                with open(os.path.join(OUT, f"digests-{who}.txt"), "a") as f:
                    f.write(f"{self.epoch} {batch} {hashlib.sha256(weights).hexdigest()}\\n")

            def on_train_end(self, logs=None):
                np.savez(os.path.join(OUT, f"weights-{who}.npz"), *self.model.get_weights())

        run.extra_callbacks.append(Digest())
        return _fit(run, *args, **kwargs)

    step.fit = fit
'''


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """300 real Fashion-MNIST images (10 classes) at 32 px grey: 212 train, 33 validation."""
    return preprocessed(tmp_path_factory.mktemp("records"), 30)


def _train(records, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgclf.components", "train", "--dataset-dir", str(records), "--model-dir",
            str(out), *SMALL, *extra]


def _hooked_env(tmp_path: Path, **more) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(HOOK))
    (tmp_path / "digests").mkdir(exist_ok=True)
    return {**QUIET, "PYTHONPATH": str(hook), "IMGCLF_TEST_DIGESTS": str(tmp_path / "digests"), **more}


def _run(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    proc.seconds = time.perf_counter() - start
    return proc


@pytest.mark.slow
def test_two_workers_keep_identical_weights_and_match_one_process_at_the_same_global_batch(records, tmp_path):
    """Two workers at batch_size 8 (global batch 16) against one process at batch_size 16, same seed, both
    on JAX. Workers: bitwise the same weights after each of the 3 x 14 steps (each applies the same
    all-reduced gradient to the same weights). Against one process: the same images in the same order
    and the same dropout and flips (JAX's random numbers do not depend on how the batch is split), so
    only the order of the gradient's float32 sums differs: the training loss and accuracy per epoch
    agree to 1e-5 relative, and the weights after the last step to 1e-5 absolute (measured: under 3e-7;
    one step at learning rate 1e-3 moves a weight by up to 1e-3)."""
    env = _hooked_env(tmp_path)
    two = _run(_train(records, tmp_path / "two", "--epochs", "3", "--batch-size", "8", "--train-workers", "2"), env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = _run(_train(records, tmp_path / "one", "--epochs", "3", "--batch-size", "16"), {**env, "KERAS_BACKEND": "jax"})
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    print(f"wall time: 2 workers {two.seconds:.1f}s, 1 process {one.seconds:.1f}s")

    assert "train: 2 worker processes on 127.0.0.1:" in two.stdout
    assert "train: worker 0 of 2 (chief), cluster from IMGCLF_WORKER_HOSTS" in two.stdout
    assert "replicas 2" in two.stdout and "global batch 16" in two.stdout
    result = json.loads(two.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["epochs_run"] == 3
    assert "ran out of data" not in two.stdout + two.stderr  # validation_steps given: no false alarm

    digests = {who: (tmp_path / "digests" / f"digests-{who}.txt").read_text().splitlines()
               for who in ("0", "1", "alone")}
    steps = [f"{e} {b}" for e in range(3) for b in range(14)]  # ceil(212 / 16) steps per epoch
    assert [line.rsplit(" ", 1)[0] for line in digests["0"]] == steps
    assert digests["0"] == digests["1"]
    assert len({line.rsplit(" ", 1)[1] for line in digests["0"]}) == len(steps)  # every step moved them

    # Only the chief wrote the model folder; the one-process run wrote its own.
    from imgclf.components.contracts import TrainedModel, load_history

    info = TrainedModel.load(str(tmp_path / "two"))
    assert info.hardware["replicas"] == 2 and info.hardware["global_batch"] == 16
    assert info.params["train_workers"] == 2 and info.hardware["backend"] == "jax"
    h_two, h_one = load_history(str(tmp_path / "two")), load_history(str(tmp_path / "one"))
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(h_two[key], h_one[key], rtol=1e-5, err_msg=key)
    with np.load(tmp_path / "digests" / "weights-0.npz") as a, \
            np.load(tmp_path / "digests" / "weights-alone.npz") as b:
        assert a.files == b.files and len(a.files) == 8
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
        assert max(float(np.max(np.abs(a[k]))) for k in a.files) > 0.05  # weights, not zeros


def _worker_pid(parent: int, index: int) -> int | None:
    """The pid of the launcher's worker `index` (its environment says which it is)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"IMGCLF_WORKER_INDEX={index}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_worker_fails_the_attempt_by_name_and_the_retry_resumes_on_all_workers(records, tmp_path):
    """SIGKILL the non-chief worker once the chief has backed up epoch 2: the launcher stops the chief and
    fails naming worker 1 and the signal. The same command again (a KFP retry: same backup location)
    resumes both workers from the backed-up epoch and finishes the run."""
    backup = tmp_path / "backup"
    cmd = _train(records, tmp_path / "m", "--epochs", "10", "--patience", "10", "--batch-size", "8",
                 "--train-workers", "2", "--backup-uri", str(backup), "--backup-seconds", "0")
    proc = subprocess.Popen(cmd, cwd=REPO, env=QUIET, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = chief = None
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        state = backup / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            victim, chief = _worker_pid(proc.pid, 1), _worker_pid(proc.pid, 0)
            break
        time.sleep(0.05)
    assert proc.poll() is None and victim and chief, "training ended before a worker could be killed:\n" + proc.stdout.read()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert re.search(rf"WorkerFailed: train: worker 1 of 2 \(pid {victim}\) was killed by SIGKILL; stopped the "
                     r"other workers", out), out[-3000:]
    with pytest.raises(ProcessLookupError):  # the chief was stopped with it (and reaped)
        os.kill(chief, 0)
    saved = json.loads((backup / "state.json").read_text())["epoch"]
    assert 2 <= saved < 10 and not (tmp_path / "m").exists()

    again = _run(cmd, QUIET)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"train: resuming from epoch {saved} (phase 1)" in again.stdout  # the chief's own output
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["resumed_from_epoch"] == saved and resumed["epochs_run"] == 10
    assert not (backup / "state.json").exists()  # cleared by the chief after success
    from imgclf.components.contracts import load_history

    assert len(load_history(str(tmp_path / "m"))["loss"]) == 10
