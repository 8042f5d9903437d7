"""Training throughput and how much of it is lost waiting for input.

The input pipeline stamps the moment each batch is ready (before the final prefetch); a callback stamps
the moment each training step starts. A step waited for input by however much its batch was ready
after the step began. The shares are of the epoch's training time (validation excluded), so
"input wait under 10 %" means the accelerator was busy the other 90 %.
"""
from __future__ import annotations

import collections
import faulthandler
import os
import statistics
import sys
import time

import keras


class InputStamps:
    """Ready-times of batches in the order the pipeline yields them."""

    def __init__(self):
        self.ready: collections.deque[float] = collections.deque()

    def _stamp(self):
        self.ready.append(time.perf_counter())
        return 0.0

    def attach(self, ds):
        """Append a sequential stamping stage; put it before the final prefetch. The stamp is a scalar
        side effect: the batch itself never crosses into Python."""
        import tensorflow as tf

        def mark(*batch):
            t = tf.py_function(self._stamp, [], tf.float64)
            with tf.control_dependencies([t]):
                return tuple(tf.identity(b) for b in batch)

        return ds.map(mark)


# Seconds in fit but in no epoch after which every thread's stack is written to stderr, once per gap
# (0: never). It is how the long gaps some pipeline runs spent after their last epoch were placed (in the
# input iterator's destructor; see `step._input`). faulthandler's own thread writes the dump, so a main
# thread holding the GIL in native code is still caught.
WATCH_ENV = "IMGCLF_FIT_WATCH_SECONDS"


def watch_seconds() -> float:
    """The gap watch from the environment, refused before any training if it is not a number."""
    text = os.environ.get(WATCH_ENV) or "10"
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{WATCH_ENV} must be a number of seconds (0: off), not {text!r}") from None
    return seconds if seconds > 0 and sys.__stderr__ is not None else 0.0


def end_gap() -> None:
    faulthandler.cancel_dump_traceback_later()


class Throughput(keras.callbacks.Callback):
    """Adds `images_per_second`, `epoch_seconds`, `input_wait_share` and `seconds_before_epoch` (since
    the previous epoch's end, or since `fit` began: time in no epoch) to each epoch's logs."""

    def __init__(self, stamps: InputStamps, images_per_epoch: int):
        super().__init__()
        self.stamps, self.images = stamps, images_per_epoch
        self.watch = watch_seconds()

    def on_train_begin(self, logs=None):
        # A new fit() gets a new iterator: batches the last one prefetched but never used are not ours.
        self.stamps.ready.clear()
        self.traced = False
        self.previous_end = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        end_gap()
        self.epoch_start = time.perf_counter()
        self.before = self.epoch_start - self.previous_end
        self.first_step = self.last_step_end = None
        self.waited = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.step_start = time.perf_counter()
        if self.first_step is None:
            self.first_step = self.step_start

    def on_train_batch_end(self, batch, logs=None):
        self.last_step_end = time.perf_counter()
        if self.stamps.ready:
            ready = self.stamps.ready.popleft()
            # The first step of a fit() traces the graph before it asks for its batch: not input wait.
            if self.traced:
                self.waited += max(0.0, ready - self.step_start)
            self.traced = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.first_step is None:
            return
        # From the moment the epoch began, so that filling the shuffle buffer counts as waiting.
        train_seconds = self.last_step_end - self.epoch_start
        self.waited += self.first_step - self.epoch_start
        logs["images_per_second"] = self.images / train_seconds
        self.previous_end = time.perf_counter()
        logs["epoch_seconds"] = self.previous_end - self.epoch_start
        logs["input_wait_share"] = min(1.0, self.waited / train_seconds)
        logs["seconds_before_epoch"] = self.before
        if self.watch:  # cancelled when the next epoch begins or fit returns
            faulthandler.dump_traceback_later(self.watch, repeat=False, file=sys.__stderr__)


def summary(history: dict[str, list[float]]) -> dict[str, float]:
    """First epoch (tracing, compilation, cold caches) apart from the steady state (median of the rest)."""
    ips, wait, secs = (history.get(k, []) for k in ("images_per_second", "input_wait_share", "epoch_seconds"))
    if not ips:
        return {}
    steady = slice(1, None) if len(ips) > 1 else slice(0, None)
    return {"first_epoch_images_per_second": round(ips[0], 1),
            "images_per_second": round(statistics.median(ips[steady]), 1),
            "epoch_seconds": round(statistics.median(secs[steady]), 2),
            "input_wait_share": round(statistics.median(wait[steady]), 4)}
