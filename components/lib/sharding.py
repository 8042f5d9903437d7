"""How a step spreads over tasks (plan -> a ParallelFor of shard tasks -> merge): the task count, and the
runner's signal that a ParallelFor's iterations run one after another. Shared by ingest and preprocess,
which shard different things (listed files, TFRecord files) by the same rule."""
from __future__ import annotations

import math
import os

IN_SERIES_ENV = "IMGCLF_TASKS_IN_SERIES"
"""Set (to "1") in the tasks of a runner that runs a ParallelFor's iterations one after another, as
`imgclf run`'s preloaded tasks do: there the automatic count is one task, since more only repeat each
task's start-up (benchmarks/preprocess_shards.py; see docs/performance.md)."""

MAX_TASKS = 256
"""The most shard tasks a plan asks for (a ParallelFor this wide is already hundreds of pods)."""


def in_series() -> bool:
    return os.environ.get(IN_SERIES_ENV) == "1"


def task_count(units: int, parts: int, requested: int, per_task: int, auto_max: int,
               series: bool = False) -> int:
    """`requested` tasks (0: one per `per_task` units, at most `auto_max`; one when tasks run in
    series), never more than there are `parts` to deal out (at least one task)."""
    wanted = requested or (1 if series else min(auto_max, math.ceil(units / per_task)))
    return max(1, min(wanted, parts, MAX_TASKS))


def contiguous(count: int, tasks: int) -> list[range]:
    """`count` consecutive items dealt into `tasks` runs as even as can be (the first runs one longer):
    concatenated in task order they are the items in their order."""
    base, extra = divmod(count, tasks)
    runs, start = [], 0
    for t in range(tasks):
        stop = start + base + (t < extra)
        runs.append(range(start, stop))
        start = stop
    return runs
