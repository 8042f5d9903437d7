"""A pipeline's parameters are the union of its steps' declared options. Its function (signature,
defaults and the `Args:` docstring KFP turns into the descriptions the KFP "create run" form and the
Vertex console show) is generated into pipelines/definitions/<name>_face.py from the same declarations
(`python -m imgclf.components.kfp_glue.generate`); it hands the graph the values as one dict, and the
graph forwards each step its own options, so no parameter is written out by hand in the pipelines."""
from __future__ import annotations

from kfp import dsl

from imgclf.components import steps as step_table
from imgclf.components.lib.options import Option, union


def parameters(steps: tuple[str, ...]) -> list[Option]:
    """The pipeline parameters of `steps`, required ones first (a Python signature needs that order)."""
    found = union(*step_table.pipeline_options(list(steps)), pipeline_only=True)
    return [o for o in found if o.required] + [o for o in found if not o.required]


def for_step(step: str, values: dict) -> dict:
    """The pipeline parameter values (channels at compile time) that are `step`'s options."""
    cls = step_table.options(step)
    return cls.pick(values, pipeline_only=True) if cls else {}


def pipeline(name: str, description: str, face, graph):
    """`@dsl.pipeline(name=...)` over the generated face's function; `graph(values)` builds the tasks from
    the dict of parameter channels."""
    return dsl.pipeline(name=name, description=description)(face.face(graph))
