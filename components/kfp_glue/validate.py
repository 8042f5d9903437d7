"""What a pipeline's validate task does (its face is generated into pipelines/definitions/*_face.py):
every pipeline parameter checked against its step's declaration. Runs in the task's process."""
from __future__ import annotations


def validate(**params) -> str:
    """The pipeline's first task: every parameter checked in seconds, before any work starts."""
    from imgclf.components.lib.options import validate as check
    from imgclf.components.steps import pipeline_options

    groups = pipeline_options(params.pop("pipeline_steps"))
    check(params, *groups, pipeline_only=True)
    print(f"validate: {len(params)} parameters accepted", flush=True)
    return "ok"
