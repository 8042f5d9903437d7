"""The pipelines, by the name the CLI, the docs and the tests use; each module defines STEPS and a
build_* function. Light on purpose: `imgclf` imports this before it knows whether it needs kfp."""

PIPELINES = {"training": "imgclf.pipelines.definitions.training", "predict": "imgclf.pipelines.definitions.prediction",
             "audit": "imgclf.pipelines.definitions.audit"}


def steps_of(pipeline: str) -> tuple[str, ...]:
    import importlib

    return importlib.import_module(PIPELINES[pipeline]).STEPS


def check_parameters(values: dict, pipeline: str = "training", check_paths: bool = False) -> dict:
    """Every value checked against the steps' declarations before anything runs or is sent."""
    from imgclf.components import steps
    from imgclf.components.lib.options import validate

    return validate(values, *steps.pipeline_options(list(steps_of(pipeline))), check_paths=check_paths,
                    pipeline_only=True)
