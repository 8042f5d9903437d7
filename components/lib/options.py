"""Each step's options, declared once as a frozen dataclass whose fields carry their help, choices,
range and path role; everything else is derived from that declaration.

    @dataclass(frozen=True, kw_only=True)
    class TrainOptions(Options):
        epochs: int = option(20, "maximum epochs (EarlyStopping may stop sooner)", min=1)

From it come: the step function's signature (`takes`), the step CLI and `imgclf run` flags with help and
choices (`add_arguments`), the KFP component signatures and their `Args:` docstrings (kfp_glue), the
pipeline parameters and their forwarding (pipelines), the parameters recorded in train.json and the
registry record (`to_dict`), the Docker runner's path parameters, and the reference tables in docs/. Constructing
an Options object validates it, so a bad value is refused with the parameter's name and its allowed
values before any work starts, wherever the step runs.

This module imports nothing heavy: the pipeline's first task validates all parameters with it in seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgclf.components.lib import storage

TYPES = (str, int, float, bool)
PATH_ROLES = ("", "read", "write")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ParameterError(ValueError):
    """A parameter value that can never work: refused before any work starts (and never retried)."""


@dataclass(frozen=True)
class Option:
    """One option as declared: what the CLI, KFP, the docs and validation are built from."""
    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    path: str = ""
    """"read" or "write" when the value may name a local path the step reads or writes."""
    keywords: tuple = ()
    """Values of a path option that name no path (weights: auto, imagenet, none)."""
    pipeline: bool = True
    """False: not a pipeline parameter. Either a step-level setting (thread counts, shard size: the step's
    CLI and component take it, the pipeline leaves its default) or an input the pipeline wires from
    another task's output (`warm_start_from`, `gate_summary`)."""
    check: Callable[[Any], str] | None = None
    """Extra syntax check: returns what is wrong, or ""."""
    identity: bool = True
    """False: the option changes where a step writes, how often it backs up or where weights start, never
    what it makes; left out of the options' `fingerprint` (which decides whether a run may be skipped)."""

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """The allowed values in words, for messages, `-h` and docs/reference/parameters.md."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a finite number", str: "text"}[self.type]
        lo = "" if self.min is None else f"{'>' if self.min_exclusive else '>='} {_number(self.min)}"
        hi = "" if self.max is None else f"<= {_number(self.max)}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        return f"{kind} {bounds}".strip()

    def names_local_path(self, value: Any) -> bool:
        return bool(self.path and value and value not in self.keywords and "://" not in str(value))

    def validate(self, value: Any) -> Any:
        """The value, coerced where lossless (int -> float); ParameterError naming the parameter otherwise."""
        def refuse(why: str) -> ParameterError:
            return ParameterError(storage.redact(f"parameter {self.name}={value!r}: {why} (allowed: {self.allowed()})"))

        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is bool and not isinstance(value, bool):
            raise refuse("expected true or false")
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise refuse("expected an integer")
        if self.type is float and not isinstance(value, float):
            raise refuse("expected a number")
        if self.type is str and not isinstance(value, str):
            raise refuse("expected text")
        if self.type is float and not math.isfinite(value):
            raise refuse("not a finite number")
        if self.choices and value not in self.choices:
            raise refuse("not an allowed value")
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            raise refuse("too small")
        if self.max is not None and value > self.max:
            raise refuse("too large")
        if self.check and (problem := self.check(value)):
            raise refuse(problem)
        if self.path and isinstance(value, str) and (problem := storage.userinfo_problem(value)):
            # Parameters are logged and kept in run metadata: a password in a URL could never stay secret.
            raise ParameterError(f"parameter {self.name}: {problem}")
        return value

    def parse(self, text: str) -> Any:
        """A command-line or `name=value` string as this option's type (then validate it)."""
        try:
            return parse_text(self.type, text)
        except ValueError:
            raise ParameterError(f"parameter {self.name}={text!r}: expected {self.allowed()}") from None


def parse_text(kind: type, text: str) -> Any:
    """`text` as a str, int, float or bool (true/false, 1/0, yes/no); ValueError if it is not one."""
    if kind is bool:
        low = text.strip().lower()
        if low not in (*TRUE, *FALSE):
            raise ValueError(text)
        return low in TRUE
    return kind(text)


def _number(x: float) -> str:
    return f"{int(x):,}".replace(",", "_") if float(x).is_integer() else f"{x:g}"


def option(default: Any = dataclasses.MISSING, help: str = "", **spec) -> Any:
    """A dataclass field declaring one option (keyword arguments: the rest of `Option`)."""
    return dataclasses.field(default=default, metadata={"option": (help, spec)})


class Options:
    """Base of every step's options dataclass: validation on construction, and the derived views."""

    @classmethod
    def declared(cls) -> list[Option]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if "option" not in f.metadata:
                continue
            help_text, spec = f.metadata["option"]
            kind = hints[f.name]
            if kind not in TYPES:
                raise TypeError(f"{cls.__name__}.{f.name}: options are str, int, float or bool, not {kind}")
            if spec.get("path", "") not in PATH_ROLES:
                raise TypeError(f"{cls.__name__}.{f.name}: path is one of {PATH_ROLES}, not {spec['path']!r}")
            out.append(Option(f.name, kind, f.default, help_text, **spec))
        return out

    @classmethod
    def names(cls) -> list[str]:
        return [o.name for o in cls.declared()]

    @classmethod
    def pick(cls, values: dict, pipeline_only: bool = False) -> dict:
        """The entries of `values` that are this step's options."""
        names = {o.name for o in cls.declared() if o.pipeline or not pipeline_only}
        return {k: v for k, v in values.items() if k in names}

    def __post_init__(self):
        for o in self.declared():
            value = getattr(self, o.name)
            if value is dataclasses.MISSING:
                raise ParameterError(f"parameter {o.name} is required ({o.help})")
            object.__setattr__(self, o.name, o.validate(value))

    def to_dict(self) -> dict:
        """Every option and its value: what train.json and the registry record keep."""
        return {o.name: getattr(self, o.name) for o in self.declared()}


def fingerprint(opts: Options) -> str:
    """A digest of the value of every option that is part of what the step makes (`identity`): what
    "trained with the same options" compares (a registry record against a new run), so it must not
    depend on dict order or float formatting."""
    import hashlib
    import json

    keep = {o.name for o in opts.declared() if o.identity}
    values = {k: v for k, v in sorted(opts.to_dict().items()) if k in keep}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()


def union(*groups: type[Options], pipeline_only: bool = True) -> list[Option]:
    """The options of several steps, each name once; a name declared differently twice is an error
    (shared options are declared once, in a base class both steps inherit)."""
    seen: dict[str, Option] = {}
    for group in groups:
        for o in group.declared():
            if pipeline_only and not o.pipeline:
                continue
            # Options the pipeline never sets (a step's thread count) may differ between steps.
            if o.name in seen and seen[o.name] != o and (o.pipeline or seen[o.name].pipeline):
                raise TypeError(f"option {o.name!r} is declared differently by two steps: declare it once")
            seen.setdefault(o.name, o)
    return list(seen.values())


def validate(values: dict, *groups: type[Options], check_paths: bool = False, pipeline_only: bool = False) -> dict:
    """Every group constructed from `values` (defaults for the rest): the first bad value is refused.

    Unknown names are refused too, naming what is accepted (with `pipeline_only`, only the pipeline
    parameters). `check_paths` also requires local paths an option reads to exist (not on a cluster,
    where a local path means the container's).
    """
    known = {o.name for group in groups for o in group.declared() if o.pipeline or not pipeline_only}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
    for group in groups:
        group(**group.pick(values))
        for o in group.declared() if check_paths else ():
            value = values.get(o.name)
            if o.path == "read" and o.names_local_path(value) and not os.path.exists(value):
                raise ParameterError(f"parameter {o.name}={value!r}: no such file or folder")
    return values


def add_arguments(parser: argparse.ArgumentParser, opts: list[Option], given: dict | None = None) -> None:
    """One flag per option, with its help, allowed values and default (`--no-x` for booleans).

    `given` (a params file's values) replaces declared defaults, checked like a flag, so flags on the
    command line still win and a required option it names is no longer required."""
    given = given or {}
    for o in opts:
        if o.name in given:
            value = given[o.name]
            try:
                value = o.validate(o.parse(value) if isinstance(value, str) and o.type is not str else value)
            except ParameterError as e:
                raise ParameterError(f"{e} (from the params file)") from None
        required = o.required and o.name not in given
        default = None if required else given.get(o.name, o.default)
        text = f"{o.help}; {o.allowed()}" + ("" if required else f" (default: {default!r})")
        text = text.replace("%", "%%")
        if o.type is bool:
            parser.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction,
                                default=default, required=required, help=text)
        else:
            parser.add_argument(o.flag, dest=o.name, type=_checked(o), required=required,
                                default=default, metavar=o.name.upper(), help=text)


def _checked(o: Option):
    """argparse's `type`: parse and validate, so a bad flag is refused with our message at once."""
    def convert(text: str):
        try:
            return o.validate(o.parse(text))
        except ParameterError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = o.name
    return convert


def takes(cls: type[Options], leading: tuple[str, ...] = ()):
    """Give a step function `fn(..., opts: cls, ...)` the flat signature of its options.

    The step is then called with the options as keyword arguments (validated by constructing `cls`),
    or with a ready object as `opts=`. `leading` options come first and may be passed by position
    (`ingest("data/", "out/")`). Its `__signature__` lists every option with its type and default,
    so the step CLI and `inspect` see them.
    """
    def wrap(fn):
        sig = inspect.signature(fn)
        names = set(cls.names())
        by_name = {o.name: o for o in cls.declared()}
        kept = [p for p in sig.parameters.values() if p.name != "opts"]
        positional = [p for p in kept if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        order = [*leading, *(p.name for p in positional)]

        @functools.wraps(fn)
        def step(*args, opts: Options | None = None, **kwargs):
            if len(args) > len(order):
                raise TypeError(f"{fn.__name__}() takes {len(order)} positional arguments, got {len(args)}")
            for name, value in zip(order, args):
                if name in kwargs:
                    raise TypeError(f"{fn.__name__}() got multiple values for argument {name!r}")
                kwargs[name] = value
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            if opts is None:
                opts = cls(**given)
            elif given:
                opts = dataclasses.replace(opts, **given)
            return fn(opts=opts, **kwargs)

        def param(o: Option, kind) -> inspect.Parameter:
            return inspect.Parameter(o.name, kind, annotation=o.type,
                                     default=inspect.Parameter.empty if o.required else o.default)

        lead = [param(by_name[n], inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in leading]
        flat = [param(o, inspect.Parameter.KEYWORD_ONLY) for o in cls.declared() if o.name not in leading]
        keywords = [p.replace(kind=p.KEYWORD_ONLY) for p in kept if p not in positional]
        step.__signature__ = sig.replace(parameters=[*lead, *positional, *flat, *keywords])
        step.options = cls
        return step
    return wrap


@dataclass(frozen=True, kw_only=True)
class Seeded(Options):
    """The run's seed, shared by every step that draws random numbers (one pipeline parameter)."""
    seed: int = option(42, "seed for the split, shuffling, initialisation and augmentation", min=0, max=2**31 - 1)
