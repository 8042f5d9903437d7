"""The training pipeline: ingest -> preprocess -> train -> evaluate -> export."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Model

from components import kfp_wrappers as steps
from pipelines.platform import LOCAL, Platform

PIPELINE_NAME = "imgclf-training"


def build_training_pipeline(platform: Platform = LOCAL):
    """A fresh pipeline for `platform` (KFP builds the graph when the decorator runs, so cluster
    settings must be known here, not passed as parameters)."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Labelled images in, a served Keras image classifier (raw-bytes SavedModel) out.")
    def training_pipeline(
        data: str,
        image_size: int = 160,
        color_mode: str = "rgb",
        model: str = "baseline",
        epochs: int = 20,
        batch_size: int = 32,
        learning_rate: float = 0.001,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        width: int = 32,
        depth: int = 3,
        dropout: float = 0.3,
        augment: bool = True,
        patience: int = 5,
        weights: str = "auto",
        fine_tune_layers: int = 0,
        fine_tune_epochs: int = 10,
        fine_tune_lr_factor: float = 0.1,
        label_smoothing: float = 0.0,
        class_weight: str = "auto",
        lr_schedule: str = "cosine",
        precision: str = "auto",
        distribute: str = "auto",
        jit_compile: str = "auto",
        tensorboard_uri: str = "",
        export_to: str = "",
        data_base_uri: str = "",
        min_images_per_class: int = 10,
        max_imbalance: float = 100.0,
        drop_near_duplicates: bool = False,
    ) -> NamedTuple("Outputs", saved_model=Model, report=HTML, ingest_report=HTML, accuracy=float):
        ingest = steps.ingest(source=data, base_uri=data_base_uri, min_images_per_class=min_images_per_class,
                              max_imbalance=max_imbalance)
        # The source is named by a URI whose contents change between runs (scheduled retraining):
        # never let the cache answer for it. Later steps are keyed on ingest's outputs and stay cacheable.
        ingest.set_caching_options(False)
        prep = steps.preprocess(dataset=ingest.outputs["dataset"], image_size=image_size, color_mode=color_mode,
                                val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                drop_near_duplicates=drop_near_duplicates)
        fit = steps.train(records=prep.outputs["records"], model_name=model, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, width=width, depth=depth, dropout=dropout, augment=augment,
                          patience=patience, seed=seed, weights=weights, fine_tune_layers=fine_tune_layers,
                          fine_tune_epochs=fine_tune_epochs, fine_tune_lr_factor=fine_tune_lr_factor,
                          label_smoothing=label_smoothing, class_weight=class_weight, lr_schedule=lr_schedule,
                          precision=precision, distribute=distribute, jit_compile=jit_compile,
                          tensorboard_uri=tensorboard_uri)
        # Preemptible GPU nodes and flaky nodes: retry; the attempt resumes from the last saved epoch.
        fit.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
        ev = steps.evaluate(records=prep.outputs["records"], model=fit.outputs["model"])
        exp = steps.export(model=fit.outputs["model"], records=prep.outputs["records"],
                           predictions=ev.outputs["predictions"], export_to=export_to)
        platform.apply(ingest, prep, fit, ev, exp)
        platform.apply_gpu(fit)
        outputs = NamedTuple("Outputs", saved_model=Model, report=HTML, ingest_report=HTML, accuracy=float)
        return outputs(saved_model=exp.outputs["saved_model"], report=ev.outputs["report"],
                       ingest_report=ingest.outputs["report"], accuracy=ev.outputs["Output"])

    return training_pipeline


training_pipeline = build_training_pipeline()
