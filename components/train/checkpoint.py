"""Preemption-safe training: the whole training state goes to the artifact store at the end of an epoch,
and a restarted task (KFP's retry, a preempted spot VM) carries on from the last epoch backed up.

The state is a full `.keras` checkpoint (weights, optimizer slots and step counter, so the learning-rate
schedule continues where it was), the best weights so far, and `state.json` with the phase, the epoch,
the history and EarlyStopping's counters. `state.json` is written last and names the checkpoint it
belongs to, so a task killed mid-upload resumes from the previous complete backup.

A backup is taken at the end of the first epoch that ends `backup_seconds` or more after the previous one
(0: every epoch), the way TensorFlow's own `save_checkpoints_secs` spaces them: on small data an epoch
is short, and writing the state after every one would take longer than the epochs themselves. The best weights are
kept in memory between backups (a copy of the arrays at each improvement), so restoring them at the end
reads no file.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from imgclf.components.lib import storage

STATE, BEST = "state.json", "best.weights.npz"


class Backup:
    """Local working copy of the state, mirrored to `uri` (local path or bucket) when one is given."""

    def __init__(self, uri: str = "", every_seconds: float = 0.0, writes: bool = True, agree=None):
        self.uri = uri.rstrip("/")
        self.every_seconds = every_seconds
        # The workers of a multi-worker run (see distributed.py) all restore from the chief's backup and all
        # save a checkpoint at the same epochs (saving gathers the variables across the workers, so it is
        # a collective step), but only the chief (writes=True) copies it to `uri`: two writers would race.
        # `agree(due) -> due` makes the chief's clock decide for all of them.
        self.writes, self.agree = writes, agree
        self.local = Path(tempfile.mkdtemp(prefix="imgclf-backup-"))
        self.state: dict | None = None
        self.best: list[np.ndarray] | None = None
        self.last_backup = time.monotonic()

    def restore(self) -> dict | None:
        """The last complete state, with its files staged locally; None when there is nothing to resume."""
        if not self.uri or not storage.exists(storage.join(self.uri, STATE)):
            return None
        state = json.loads(storage.read_bytes(storage.join(self.uri, STATE)))
        storage.download_file(storage.join(self.uri, state["checkpoint"]), self.checkpoint_path(state))
        if state["has_best"]:
            storage.download_file(storage.join(self.uri, BEST), str(self.local / BEST))
            with np.load(self.local / BEST) as saved:
                self.best = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self.state = state
        return state

    @property
    def checkpoint_file(self) -> str:
        return self.checkpoint_path(self.state)

    def checkpoint_path(self, state: dict) -> str:
        return str(self.local / state["checkpoint"])

    def load_best(self, model: keras.Model) -> None:
        """Put the best weights so far into `model` (the one `epoch_end`'s `best` named)."""
        if self.best is None:
            raise RuntimeError("no epoch has finished: there are no best weights to restore")
        model.set_weights(self.best)

    def epoch_end(self, model: keras.Model, state: dict, improved: bool, best: keras.Model | None = None) -> bool:
        """Keep the best weights (of `best`, when not `model`: the head phase on bottleneck features
        checkpoints the head but keeps the whole model's weights), and back up when one is due.
        Whether it backed up."""
        if improved:
            # Copied: on the torch backend get_weights() can share memory with the parameters.
            self.best = [np.array(w, copy=True) for w in (best or model).get_weights()]
        due = time.monotonic() - self.last_backup >= self.every_seconds
        if not (self.agree(due) if self.agree else due):
            return False
        self.save(model, state)
        self.last_backup = time.monotonic()
        return True

    def save(self, model: keras.Model, state: dict) -> None:
        name = f"checkpoint-{state['epoch']:04d}.keras"
        model.save(self.local / name)
        if self.best is not None:
            np.savez(self.local / BEST, *self.best)
        state = {**state, "checkpoint": name, "has_best": self.best is not None}
        if self.uri and self.writes:
            storage.copy_file(str(self.local / name), storage.join(self.uri, name))
            if self.best is not None:
                storage.copy_file(str(self.local / BEST), storage.join(self.uri, BEST))
            storage.write_text(storage.join(self.uri, STATE), json.dumps(state))
        old = self.state and self.state.get("checkpoint")
        self.state = state
        if old and old != name:
            (self.local / old).unlink(missing_ok=True)
            if self.uri and self.writes:
                storage.remove(storage.join(self.uri, old))

    def clear(self) -> None:
        """After success: a later attempt must train afresh, not resume a finished run."""
        if self.uri and self.writes:
            storage.remove(self.uri, recursive=True)
        shutil.rmtree(self.local, ignore_errors=True)


class Checkpoint(keras.callbacks.Callback):
    """Keeps the run's history across restarts, the best weights, and the state when a backup is due."""

    def __init__(self, backup: Backup, phase: int, history: dict[str, list[float]], monitor: str,
                 best: float | None, stopper: ResumableEarlyStopping, extra_state: dict | None = None,
                 whole=None):
        super().__init__()
        self.backup, self.phase, self.history, self.monitor = backup, phase, history, monitor
        self.best, self.stopper, self.extra_state = best, stopper, extra_state or {}
        # whole(model) -> the model whose weights count as "best" (default: the model being fitted).
        self.whole = whole

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        value = logs.get(self.monitor)
        improved = value is not None and (self.best is None or value < self.best)
        if improved:
            self.best = float(value)
        self.backup.epoch_end(self.model, {
            **self.extra_state, "phase": self.phase, "epoch": epoch + 1, "history": self.history, "best": self.best,
            "wait": self.stopper.wait, "best_epoch": self.stopper.best_epoch}, improved,
            self.whole(self.model) if self.whole and improved else None)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counter survives a restart. Best weights are kept by `Checkpoint`."""

    def __init__(self, monitor: str, patience: int, resume: dict | None = None):
        super().__init__(monitor=monitor, patience=patience, mode="min", verbose=1)
        self.resume = resume

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume and self.resume.get("best") is not None:
            self.best, self.wait = self.resume["best"], self.resume["wait"]
            self.best_epoch = self.resume["best_epoch"]
