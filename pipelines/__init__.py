"""The pipelines, by the name the CLI, the docs and the tests use; each module defines STEPS and a
build_* function. Light on purpose: `imgclf` imports this before it knows whether it needs kfp."""

PIPELINES = {"training": "pipelines.training", "predict": "pipelines.prediction"}


def steps_of(pipeline: str) -> tuple[str, ...]:
    import importlib

    return importlib.import_module(PIPELINES[pipeline]).STEPS
