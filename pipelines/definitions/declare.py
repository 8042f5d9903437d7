"""A `@dsl.pipeline` whose parameters are the union of its steps' declared options: signature, defaults
and the `Args:` docstring KFP turns into the descriptions the KFP "create run" form and the Vertex
console show. The graph receives the values as one dict and forwards each step its own options, so
no parameter is written out by hand here or in the pipelines."""
from __future__ import annotations

import inspect

from kfp import dsl

from imgclf.components import steps as step_table
from imgclf.components.kfp_glue.generate import option_help
from imgclf.components.lib.options import Option, union


def parameters(steps: tuple[str, ...]) -> list[Option]:
    """The pipeline parameters of `steps`, required ones first (a Python signature needs that order)."""
    found = union(*step_table.pipeline_options(list(steps)), pipeline_only=True)
    return [o for o in found if o.required] + [o for o in found if not o.required]


def for_step(step: str, values: dict) -> dict:
    """The pipeline parameter values (channels at compile time) that are `step`'s options."""
    cls = step_table.options(step)
    return cls.pick(values, pipeline_only=True) if cls else {}


def pipeline(name: str, description: str, steps: tuple[str, ...], graph, returns=inspect.Signature.empty):
    """`@dsl.pipeline(name=...)` over a function taking every parameter of `steps`; `graph(values)` builds
    the tasks from the dict of parameter channels."""
    params = parameters(steps)
    signature = inspect.Signature(
        [inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=o.type,
                           default=inspect.Parameter.empty if o.required else o.default) for o in params],
        return_annotation=returns)

    def pipeline_func(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return graph(dict(bound.arguments))

    pipeline_func.__name__ = name.replace("-", "_")
    pipeline_func.__signature__ = signature
    pipeline_func.__doc__ = description + "\n\nArgs:\n" + "\n".join(f"    {o.name}: {option_help(o)}" for o in params)
    return dsl.pipeline(name=name, description=description)(pipeline_func)
