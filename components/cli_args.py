"""Command-line flags generated from a function's typed signature, so a step's CLI, the `imgclf run`
flags and the pipeline parameters can never drift apart."""
from __future__ import annotations

import argparse
import inspect
import typing


def add_signature_args(parser: argparse.ArgumentParser, fn, skip: tuple[str, ...] = (),
                       rename: dict[str, str] | None = None) -> None:
    hints = typing.get_type_hints(fn)
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip:
            continue
        flag = "--" + (rename or {}).get(name, name).replace("_", "-")
        kind = hints.get(name, str)
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        helptext = "(required)" if required else f"(default: {default!r})"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                required=required, help=helptext)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=default, required=required, help=helptext)


def call_with_args(fn, args: argparse.Namespace):
    names = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in vars(args).items() if k in names})
