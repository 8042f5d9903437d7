"""`python -m imgclf.components <step> --flag value ...`: run one step's function directly.

This is the container entry point (`docker run IMAGE <step> ...`); the steps come from
components/steps.py, their flags (with help, allowed values and defaults) from the step's signature
and option declarations, and the step's summary is printed as JSON on the last line.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import typing


def add_step_arguments(parser: argparse.ArgumentParser, fn) -> None:
    """Flags for a step: its declared options with their help, then its own artifact paths."""
    from imgclf.components.lib.options import add_arguments

    cls = getattr(fn, "options", None)
    declared = {o.name: o for o in cls.declared()} if cls else {}
    add_arguments(parser, list(declared.values()))
    hints = typing.get_type_hints(getattr(fn, "__wrapped__", fn))
    for name, p in inspect.signature(fn).parameters.items():
        if name in declared:
            continue
        required = p.default is inspect.Parameter.empty
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=hints.get(name, str), required=required,
                            default=None if required else p.default,
                            help="(required)" if required else f"(default: {p.default!r})")


PROG = "python -m imgclf.components"
"""How the container entry (`imgclf-entrypoint`, which runs this module) is invoked: the usage line's name."""


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """`prog` is what the usage and error lines call the command: `imgclf step` passes its own name, so
    `imgclf step train -h` does not tell a user to type the container's command."""
    from imgclf.components import steps
    from imgclf.components.lib.options import ParameterError

    parser = argparse.ArgumentParser(prog=prog, description="Run one imgclf step.")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in (n for n, s in steps.STEPS.items() if s.entry):
        add_step_arguments(sub.add_parser(name, help=steps.STEPS[name].help), steps.function(name))
    args = vars(parser.parse_args(argv))
    fn = steps.function(args.pop("step"))
    try:
        result = fn(**args)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dataclasses.is_dataclass(result):
        print(json.dumps(dataclasses.asdict(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
