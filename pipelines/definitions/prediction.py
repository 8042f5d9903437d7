"""The batch-prediction pipeline: a published SavedModel and a folder or bucket of images in,
a predictions file (CSV or JSON Lines) out. Schedule it like training."""
from kfp.dsl import Dataset

from imgclf.components.kfp_glue import wrappers as steps
from imgclf.pipelines import kfp_seams
from imgclf.pipelines.definitions import prediction_face as face
from imgclf.pipelines.definitions.declare import for_step, pipeline
from imgclf.pipelines.definitions.platform import LOCAL, Platform

PIPELINE_NAME = "imgclf-predict"
STEPS = face.STEPS


def build_prediction_pipeline(platform: Platform = LOCAL):
    def graph(p: dict) -> Dataset:
        check = face.validate(pipeline_steps=",".join(STEPS), **p)
        task = steps.predict(**for_step("predict", p)).after(check)
        # New images land under the same URI: a cached answer would be stale.
        task.set_caching_options(False)
        platform.apply(*kfp_seams.pipeline_tasks())
        return task.outputs["predictions"]

    return pipeline(PIPELINE_NAME, face.DESCRIPTION, face, graph)


prediction_pipeline = build_prediction_pipeline()
