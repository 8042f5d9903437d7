"""The training pipeline: ingest -> preprocess -> champion lookup -> [train -> evaluate -> export -> gate ->
[publish]].

Two `dsl.If` branches, so the UI shows what did not run and why: training runs unless the data is
exactly the champion's (`skip_unchanged`), and publish runs only when the gate passed. Pipeline outputs
are the ingest report and `outcome` (the gate's or the skip note's JSON summary, via `dsl.OneOf`):
kfp.local 2.17 can pick a `dsl.OneOf` parameter but not a `dsl.OneOf` artifact, and artifacts made
inside a branch cannot be pipeline outputs otherwise. `pipelines/local.py` finds the branch artifacts
(SavedModel, report) in the run's folder.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML

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
        registry: str = "",
        model_name: str = "imgclf",
        min_accuracy: float = 0.0,
        min_macro_f1: float = 0.0,
        margin: float = 0.0,
        compare_metric: str = "accuracy",
        skip_unchanged: bool = True,
        warm_start: bool = False,
        tflite: bool = False,
    ) -> NamedTuple("Outputs", ingest_report=HTML, outcome=str):
        ingest = steps.ingest(source=data, base_uri=data_base_uri, min_images_per_class=min_images_per_class,
                              max_imbalance=max_imbalance)
        # The source is named by a URI whose contents change between runs (scheduled retraining):
        # never let the cache answer for it. Later steps are keyed on ingest's outputs and stay cacheable.
        ingest.set_caching_options(False)
        prep = steps.preprocess(dataset=ingest.outputs["dataset"], image_size=image_size, color_mode=color_mode,
                                val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                drop_near_duplicates=drop_near_duplicates)
        look = steps.champion(records=prep.outputs["records"], registry=registry, model_name=model_name,
                              skip_unchanged=skip_unchanged, warm_start=warm_start)
        look.set_caching_options(False)  # reads the registry, which other runs change
        with dsl.If(look.outputs["action"] == "train", name="train-new-data"):
            fit = steps.train(records=prep.outputs["records"], model_name=model, epochs=epochs,
                              batch_size=batch_size, learning_rate=learning_rate, width=width, depth=depth,
                              dropout=dropout, augment=augment, patience=patience, seed=seed, weights=weights,
                              fine_tune_layers=fine_tune_layers, fine_tune_epochs=fine_tune_epochs,
                              fine_tune_lr_factor=fine_tune_lr_factor, label_smoothing=label_smoothing,
                              class_weight=class_weight, lr_schedule=lr_schedule, precision=precision,
                              distribute=distribute, jit_compile=jit_compile, tensorboard_uri=tensorboard_uri,
                              warm_start=look.outputs["warm_start"])
            # Preemptible GPU nodes and flaky nodes: retry; the attempt resumes from the last saved epoch.
            fit.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
            ev = steps.evaluate(records=prep.outputs["records"], model=fit.outputs["model"])
            exp = steps.export(model=fit.outputs["model"], records=prep.outputs["records"],
                               predictions=ev.outputs["predictions"], export_to=export_to, tflite=tflite)
            gate = steps.gate(records=prep.outputs["records"], predictions=ev.outputs["predictions"],
                              registry=registry, model_name=model_name, min_accuracy=min_accuracy,
                              min_macro_f1=min_macro_f1, margin=margin, compare_metric=compare_metric)
            gate.after(exp)  # publish only what passed export's serving checks
            gate.set_caching_options(False)  # the champion it compares with may have changed
            with dsl.If(gate.outputs["decision"] == "publish", name="gate-passed"):
                pub = steps.publish(saved_model=exp.outputs["saved_model"], model=fit.outputs["model"],
                                    records=prep.outputs["records"], predictions=ev.outputs["predictions"],
                                    registry=registry, model_name=model_name,
                                    gate_summary=gate.outputs["summary"], source_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
                pub.set_caching_options(False)
            # An Else also makes kfp.local (2.17) evaluate the condition: it resolves a condition on a
            # sibling task's output only inside an If/Else group.
            with dsl.Else(name="not-published"):
                nop = steps.not_published(summary=gate.outputs["summary"])
        with dsl.Else(name="data-unchanged"):
            skip = steps.training_skipped(reason=look.outputs["reason"],
                                          champion_version=look.outputs["champion_version"])
        platform.apply(ingest, prep, look, fit, ev, exp, gate, pub, nop, skip)
        platform.apply_gpu(fit)
        outputs = NamedTuple("Outputs", ingest_report=HTML, outcome=str)
        return outputs(ingest_report=ingest.outputs["report"],
                       outcome=dsl.OneOf(gate.outputs["summary"], skip.outputs["Output"]))

    return training_pipeline


training_pipeline = build_training_pipeline()
