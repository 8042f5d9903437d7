"""The batch-prediction pipeline: a published SavedModel and a folder or bucket of images in,
a predictions file (CSV or JSON Lines) out. Schedule it like training."""
from kfp import dsl
from kfp.dsl import Dataset

from components import kfp_wrappers as steps
from pipelines.platform import LOCAL, Platform

PIPELINE_NAME = "imgclf-predict"


def build_prediction_pipeline(platform: Platform = LOCAL):
    @dsl.pipeline(name=PIPELINE_NAME, description="Classify a folder or bucket of images with an exported model.")
    def prediction_pipeline(model: str, images: str, top_k: int = 3, output_format: str = "csv") -> Dataset:
        task = steps.predict(model=model, images=images, top_k=top_k, output_format=output_format)
        # New images land under the same URI: a cached answer would be stale.
        task.set_caching_options(False)
        platform.apply(task)
        return task.outputs["predictions"]

    return prediction_pipeline


prediction_pipeline = build_prediction_pipeline()
