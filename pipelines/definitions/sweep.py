"""Sweep files: a grid, or a seeded random sample, over train options, checked against the options'
declarations before anything runs, compiled into a `dsl.ParallelFor` of trials (pipelines/definitions/training.py).

    parallelism: 4            # trials running at once (the ParallelFor's parallelism limit)
    metric: val_accuracy      # or val_loss: validation scores only
    grid:                     # every combination: 2 x 2 = 4 trials
      learning_rate: [0.001, 0.003]
      width: [16, 32]

    random:                   # or: `trials` draws, seeded
      trials: 8
      seed: 7
      space:
        architecture: [baseline, mobilenet_v2]          # a list: one of these
        learning_rate: {min: 0.0001, max: 0.01, log: true}
        depth: {min: 2, max: 4}                          # an integer option draws integers

YAML or JSON (JSON is YAML). Options not swept keep the run's value (`--epochs 5`, `epochs=5`).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from imgclf.components.contracts import TRIAL_METRICS
from imgclf.components.lib.options import Option, ParameterError

MAX_TRIALS = 256
KEYS = {"parallelism", "metric", "grid", "random"}


@dataclass(frozen=True)
class Sweep:
    trials: tuple[dict, ...]
    """Each trial's swept option values, in trial order."""
    parallelism: int = 4
    metric: str = "val_accuracy"

    def items(self) -> list[str]:
        """The ParallelFor's items: one JSON text per trial (text, so KFP's protobuf Structs cannot turn
        an integer option into a float on the way)."""
        return [json.dumps({"index": i, "options": t}, sort_keys=True) for i, t in enumerate(self.trials)]

    @property
    def swept(self) -> list[str]:
        return sorted({k for t in self.trials for k in t})


def _train_options() -> dict[str, Option]:
    from imgclf.components.train.options import TrainOptions

    return {o.name: o for o in TrainOptions.declared() if o.pipeline}


def _refuse(where: str, why: str) -> ParameterError:
    return ParameterError(f"sweep {where}: {why}")


def _option(name: str, declared: dict[str, Option]) -> Option:
    if name not in declared:
        from imgclf.components import steps

        owner = next((s for s in steps.STEPS if (cls := steps.options(s)) and name in cls.names()), None)
        hint = (f" ({name} is a {owner} option: one {owner} feeds every trial, so only train options "
                "vary between trials)" if owner else "")
        raise _refuse(name, f"not a train option{hint}; sweepable: {', '.join(sorted(declared))}")
    return declared[name]


def _value(o: Option, value, where: str):
    try:
        return o.validate(value)
    except ParameterError as e:
        raise _refuse(where, str(e)) from None


def _grid(grid: dict, declared: dict[str, Option]) -> list[dict]:
    if not isinstance(grid, dict) or not grid:
        raise _refuse("grid", "expected a mapping of option: [values, ...]")
    axes = {}
    for name, values in grid.items():
        o = _option(name, declared)
        if not isinstance(values, list) or not values:
            raise _refuse(f"grid.{name}", f"expected a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise _refuse(f"grid.{name}", f"a value is listed twice in {values!r}")
        axes[name] = [_value(o, v, f"grid.{name}") for v in values]
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]


def _draw(o: Option, spec, rng, where: str):
    if isinstance(spec, list):
        if not spec:
            raise _refuse(where, "an empty list of values")
        return _value(o, spec[int(rng.integers(len(spec)))], where)
    if not isinstance(spec, dict) or not {"min", "max"} <= set(spec) or set(spec) - {"min", "max", "log"}:
        raise _refuse(where, f"expected a list of values or {{min, max[, log]}}, got {spec!r}")
    if o.type not in (int, float):
        raise _refuse(where, f"a range needs a numeric option; {o.name} takes {o.allowed()}")
    lo, hi = _value(o, spec["min"], where + ".min"), _value(o, spec["max"], where + ".max")
    if lo > hi:
        raise _refuse(where, f"min {lo} is above max {hi}")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and lo <= 0):
        raise _refuse(where + ".log", "true or false, and true needs min > 0")
    if o.type is int:
        if log:
            return _value(o, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))), where)
        return _value(o, int(rng.integers(lo, hi + 1)), where)
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi)
    return _value(o, float(f"{x:.6g}"), where)


def _random(spec: dict, declared: dict[str, Option]) -> list[dict]:
    import numpy as np

    if not isinstance(spec, dict) or set(spec) - {"trials", "seed", "space"} or "space" not in spec:
        raise _refuse("random", "expected {trials: N, seed: S, space: {option: values or range}}")
    n, seed, space = spec.get("trials", 0), spec.get("seed", 0), spec["space"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TRIALS:
        raise _refuse("random.trials", f"an integer from 1 to {MAX_TRIALS}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _refuse("random.seed", f"an integer >= 0, got {seed!r}")
    if not isinstance(space, dict) or not space:
        raise _refuse("random.space", "expected a mapping of option: values or {min, max}")
    options = {name: _option(name, declared) for name in space}
    rng = np.random.default_rng(seed)
    return [{name: _draw(options[name], space[name], rng, f"random.space.{name}") for name in space}
            for _ in range(n)]


def parse(doc) -> Sweep:
    """A sweep from the parsed file: every name and value checked, ParameterError on the first bad one."""
    if not isinstance(doc, dict):
        raise _refuse("file", "expected a mapping with grid: or random:")
    unknown = set(doc) - KEYS
    if unknown:
        raise _refuse(", ".join(sorted(unknown)), f"unknown key; a sweep file has {', '.join(sorted(KEYS))}")
    if ("grid" in doc) == ("random" in doc):
        raise _refuse("file", "give exactly one of grid: or random:")
    declared = _train_options()
    trials = _grid(doc["grid"], declared) if "grid" in doc else _random(doc["random"], declared)
    if len(trials) > MAX_TRIALS:
        raise _refuse("grid", f"{len(trials)} trials; at most {MAX_TRIALS} (use random: to sample a large space)")
    parallelism = doc.get("parallelism", 4)
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise _refuse("parallelism", f"an integer >= 1, got {parallelism!r}")
    metric = doc.get("metric", "val_accuracy")
    if metric not in TRIAL_METRICS:
        raise _refuse("metric", f"one of {', '.join(TRIAL_METRICS)} (validation scores), got {metric!r}")
    return Sweep(tuple(trials), parallelism, metric)


def load(path: str) -> Sweep:
    """A sweep file (YAML or JSON), checked before any work starts."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ParameterError(f"sweep file {path}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParameterError(f"sweep file {path}: not YAML or JSON: {str(e).splitlines()[0]}") from None
    try:
        return parse(doc)
    except ParameterError as e:
        raise ParameterError(f"{path}: {e}") from None


def check_with(sweep: Sweep, params: dict) -> None:
    """Every trial's options together with the run's other parameters (a combination can be wrong
    only together, e.g. fine_tune_layers on the baseline), and a validation split to score on."""
    from imgclf.components.train.options import TrainOptions

    for i, t in enumerate(sweep.trials):
        try:
            TrainOptions(**TrainOptions.pick({**params, **t}))
        except ParameterError as e:
            raise ParameterError(f"sweep trial {i} {t}: {e}") from None
    if params.get("val_fraction", 0.1) == 0:
        raise ParameterError("a sweep scores its trials on the validation split: val_fraction=0 leaves none "
                             "(unless the source has a validation/ folder, set val_fraction > 0)")
