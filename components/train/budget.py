"""A time budget for training (`time_budget`, AutoGluon's `time_limit`): the epochs and the learning-rate
schedule are planned from the measured epoch time so that training ends on time with its schedule
completed, instead of being cut off mid-schedule or finishing far too early.

The plan is made after the first epoch (from its batches after the first, which carried the tracing),
made again after the first steady epoch (the one after a new plan pays for retracing the schedule into
the train step, so its time is no measure), then held; it is only shortened later if the epochs turn out
slower than planned. Each new plan keeps the time of one retrace free. Each plan
sets the cosine schedule's length to the planned steps, so the learning rate still decays to its floor
in the last planned epoch. EarlyStopping does not cut a planned run short (it would stop the schedule
halfway, what fastai's book warns about); the best epoch's weights are kept either way. No Keras import
at module level: the option check runs without it.
"""
from __future__ import annotations

import math
import re
import time

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?")
UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}
_now = time.perf_counter
"""The budget's one clock (tests drive it)."""
RESERVE_SHARE = 0.03
"""Kept free at the end of the budget: saving the model and the best weights' reload happen after fit."""


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "5m", "1h30m", "2.5m"; 0 for "" (no budget). ValueError otherwise."""
    text = text.strip().lower()
    if not text:
        return 0.0
    pos, seconds = 0, 0.0
    for m in _PART.finditer(text):
        # A bare number is seconds, and only alone: "1h30" is refused, not read as 1h + 30 s.
        if m.start() != pos or (m.group(2) is None and (pos != 0 or m.end() != len(text))):
            break
        seconds += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    if pos != len(text) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 5m or 1h30m")
    return seconds


def duration_problem(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as e:
        return str(e)
    return ""


def words(seconds: float) -> str:
    """2m05s, 1h02m, 45s: how the log and the summary say a duration."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def plan_epochs(deadline_s: float, elapsed_s: float, epoch_s: float, done: int, most: int) -> int:
    """The total epochs that fit: those done plus as many more of `epoch_s` as end by `deadline_s` (counted
    from the same start as `elapsed_s`), at least the ones done and at most `most`."""
    room = deadline_s - elapsed_s
    more = math.floor(room / epoch_s) if epoch_s > 0 and room > 0 else 0
    return max(done, min(most, done + more))


class Planner:
    """The budget of one training: when it started and when each phase must end."""

    def __init__(self, budget_s: float, phase_epochs: list[int], started: float | None = None):
        self.budget_s = budget_s
        self.started = _now() if started is None else started
        # With fine-tuning, each phase gets the budget in proportion to its maximum epochs.
        total = sum(phase_epochs)
        self.deadlines, end = [], 0.0
        for n in phase_epochs:
            end += budget_s * n / total
            self.deadlines.append(end * (1 - RESERVE_SHARE))

    def elapsed(self) -> float:
        return _now() - self.started

    def held(self) -> bool:
        """Whether training, now ended, ended within the budget."""
        return self.elapsed() <= self.budget_s


def callback(planner: Planner, phase: int, first_epoch: int, most: int, steps_per_epoch: int, state: dict,
             agree=None):
    """A Keras callback planning phase `phase` (1-based) of `planner`: after each of the phase's first two
    epochs (and whenever the epochs run slower than planned) it sets the phase's total epochs, the cosine
    schedule's length to match, stops training at the planned epoch, and prints the ETA. `state` (the
    dict the backup saves) keeps the plan, so a resumed attempt continues the same schedule. `agree`
    gives every worker of a multi-worker run the chief's plan."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            # A resumed attempt keeps the plan its schedule was made for (only ever shortened).
            self.resumed = bool(state.get("planned_epochs"))
            self.planned = state.get("planned_epochs") or most
            self.plans = 0

        def on_train_begin(self, logs=None):
            self._last = self._begin = planner.elapsed()
            self._first_batch, self._epochs = None, 0
            self._retrace_s = 0.0  # what a new plan costs: the schedule is traced into the train step
            self._retraced = False  # the epoch running now pays for a retrace: its time is no measure

        def on_train_batch_end(self, batch, logs=None):
            # The attempt's first batch carries the tracing and compiling: the first plan counts the epoch's
            # other batches only, scaled to a whole epoch (else a short budget on a slow-to-compile backend
            # would plan a single epoch from a first epoch mostly made of compiling).
            if self._first_batch is None and steps_per_epoch > 1:
                self._first_batch = planner.elapsed()

        def on_epoch_end(self, epoch, logs=None):
            # An epoch's time is from the end of the one before: validation and callbacks count too.
            elapsed = planner.elapsed()
            took, self._last = elapsed - self._last, elapsed
            self._epochs += 1
            done, deadline = epoch + 1, planner.deadlines[phase - 1]
            replan = False
            if self._epochs == 1:
                self.epoch_s = took
                if self._first_batch is not None:
                    self.epoch_s = (elapsed - self._first_batch) * steps_per_epoch / (steps_per_epoch - 1)
                    self._retrace_s = max(0.0, self._first_batch - self._begin - self.epoch_s / steps_per_epoch)
                replan = not self.resumed  # errs short: the validation's tracing is still in it
            elif self._retraced:
                self._retraced = False
            else:
                self.epoch_s = took
                late = elapsed + (self.planned - done) * took > deadline
                replan = (self.plans == 1 and not self.resumed) or late  # the first steady epoch, or late
            wanted = plan_epochs(deadline - self._retrace_s, elapsed, self.epoch_s, done, most) if replan \
                else self.planned
            if agree is not None:
                wanted = agree(wanted)
            if replan:
                self.plans += 1
            if wanted != self.planned:
                self._replan(wanted, done)
            print(f"train: epoch {done}/{self.planned} of the {words(planner.budget_s)} budget: "
                  f"{self.epoch_s:.1f} s/epoch, {words(elapsed)} used, ETA {words((self.planned - done) * self.epoch_s)}",
                  flush=True)
            if done >= self.planned:
                self.model.stop_training = True

        def _replan(self, planned: int, done: int) -> None:
            schedule = self.model.optimizer._learning_rate
            if isinstance(schedule, keras.optimizers.schedules.CosineDecay):
                # Steps of this phase only: a phase's schedule counts from its own compile.
                schedule.decay_steps = max(1, (planned - first_epoch) * steps_per_epoch)
                self.model.make_train_function(force=True)  # the schedule's length is traced in
            print(f"train: {planned - first_epoch} epochs planned for this phase "
                  f"(was {self.planned - first_epoch}) to end within the budget", flush=True)
            self.planned, self._retraced = planned, True
            state["planned_epochs"] = planned

    return TimeBudget()
