"""What export's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def export(model, records, predictions, saved_model, **options):
    from imgclf.components.contracts import INPUT_KEY
    from imgclf.components.export.step import export as run

    r = run(model.path, records.path, predictions.path, saved_model.path, **options)
    saved_model.metadata.update({"framework": "tensorflow", "format": "SavedModel", "signature": "serving_default",
                                 "input": INPUT_KEY, "checked_images": r.checked_images,
                                 "published_to": r.published_to, "rest_images": r.rest_images,
                                 "warmup_requests": r.warmup_requests, "tflite_max_diff": r.tflite_max_diff})
