"""A pipeline's parameters are the union of its steps' declared options. Its function (signature,
defaults and the `Args:` docstring KFP turns into the descriptions the KFP "create run" form and the
Vertex console show) is generated into pipelines/definitions/<name>_face.py from the same declarations
(`python -m imgclf.components.kfp_glue.generate`); it hands the graph the values as one dict, and the
graph forwards each step its own options, so no parameter is written out by hand in the pipelines."""
from __future__ import annotations

from kfp import dsl

from imgclf.components import steps as step_table
from imgclf.components.kfp_glue import specs
from imgclf.components.lib.options import Option


def parameters(steps: tuple[str, ...]) -> list[Option]:
    """The pipeline parameters of `steps`, in the order of the generated pipeline function's signature
    (required first; the ordering is the KFP glue's, components/kfp_glue/specs.py)."""
    return specs.parameters(steps, pipeline_only=True)


def for_step(step: str, values: dict) -> dict:
    """The pipeline parameter values (channels at compile time) that are `step`'s options."""
    cls = step_table.options(step)
    return cls.pick(values, pipeline_only=True) if cls else {}


def pipeline(name: str, description: str, face, graph):
    """`@dsl.pipeline(name=...)` over the generated face's function; `graph(values)` builds the tasks from
    the dict of parameter channels."""
    return dsl.pipeline(name=name, description=description)(face.face(graph))
