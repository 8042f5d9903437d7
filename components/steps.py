"""Every step, registered once: its function and its options class, by name. The container entry point
(`python -m imgclf.components <step>`), `imgclf step`, the KFP glue and the pipelines' parameter lists all
read this table; nothing is imported until a step is asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from imgclf.components.lib.options import Options


@dataclass(frozen=True)
class Step:
    function: str
    """"module:name" of the step's plain function."""
    options: str = ""
    """"module:Class" of its options ("" for a step without options)."""
    help: str = ""
    entry: bool = True
    """A subcommand of the container entry point (`python -m imgclf.components <step>`)."""


STEPS = {
    "ingest": Step("imgclf.components.ingest.step:ingest", "imgclf.components.ingest.options:IngestOptions",
                   "list and decode-check every image of a source; write the manifest and quarantine"),
    # Ingest spread over tasks (the pipelines' form): plan -> N shard tasks -> merge, the merge being the
    # pipelines' `ingest` component (components/ingest/shards.py:merge); the same manifest.
    "ingest_plan": Step("imgclf.components.ingest.shards:plan", "imgclf.components.ingest.options:IngestOptions",
                        "list the source, refuse what can be refused unread, deal the listing to shard tasks",
                        entry=False),
    "ingest_shard": Step("imgclf.components.ingest.shards:write_part", "imgclf.components.ingest.options:IngestOptions",
                         "decode-check one shard task's run of the listing", entry=False),
    "preprocess": Step("imgclf.components.preprocess.step:preprocess", "imgclf.components.preprocess.options:PreprocessOptions",
                       "seeded stratified split, serving-time decode + resize, sharded TFRecords"),
    # Preprocess spread over tasks (the pipelines' form): plan -> N shard tasks -> merge; same records.
    "preprocess_plan": Step("imgclf.components.preprocess.shards:plan", "imgclf.components.preprocess.options:PreprocessOptions",
                            "fix every split and its order from the manifest; choose the shard tasks", entry=False),
    "preprocess_shard": Step("imgclf.components.preprocess.shards:write_part",
                             "imgclf.components.preprocess.options:PreprocessOptions",
                             "write one shard task's share of the TFRecord files", entry=False),
    "preprocess_merge": Step("imgclf.components.preprocess.shards:merge",
                             "imgclf.components.preprocess.options:PreprocessOptions",
                             "gather the shard tasks' files into one records artifact with its metadata",
                             entry=False),
    "train": Step("imgclf.components.train.step:train", "imgclf.components.train.options:TrainOptions",
                  "fit a Keras 3 model on the TFRecords, resumable; save .keras, history and curves"),
    # A diagnostic beside train, not a pipeline step: `imgclf lr-find` (= `imgclf step lr_find`).
    "lr_find": Step("imgclf.components.train.lr_find:lr_find", "imgclf.components.train.options:TrainOptions",
                    "learning-rate range test on the records: the loss against exponentially growing rates, a "
                    "suggested learning_rate and its curve"),
    "evaluate": Step("imgclf.components.evaluate.step:evaluate", "imgclf.components.evaluate.options:EvaluateOptions",
                     "score the test split: metrics, confusion matrix, ROC, predictions, HTML report"),
    "export": Step("imgclf.components.export.step:export", "imgclf.components.export.options:ExportOptions",
                   "write the raw-bytes SavedModel and prove it answers like evaluate"),
    "champion": Step("imgclf.components.release.champion:lookup", "imgclf.components.release.options:ChampionOptions",
                     "read the registry's champion; decide whether this run trains"),
    "gate": Step("imgclf.components.release.gate:gate", "imgclf.components.release.options:GateOptions",
                 "thresholds and the champion re-scored on this test split: publish or refuse"),
    "publish": Step("imgclf.components.release.publish:publish", "imgclf.components.release.options:PublishOptions",
                    "copy the checked SavedModel into the registry as the next version"),
    # A sweep's trial (train, its failure kept as its result) and selection: wired by pipelines/definitions/training.py
    # from the sweep file, their inputs are lists and JSON, so no entry-point subcommand.
    "trial": Step("imgclf.components.train.trial:run_trial", "imgclf.components.train.options:TrainOptions",
                  "one trial of a sweep: train with the trial's options, scored on the validation split", entry=False),
    "select": Step("imgclf.components.sweep.select:select", "",
                   "the best trial of a sweep by its validation score; its model becomes the run's", entry=False),
    # The label audit's merge: its inputs are every fold's predictions (dsl.Collected); `imgclf audit` runs it.
    "audit": Step("imgclf.components.audit.step:audit", "imgclf.components.audit.options:AuditOptions",
                  "rank likely label errors from K folds' out-of-fold probabilities with cleanlab", entry=False),
    "deploy": Step("imgclf.components.deploy.step:deploy", "imgclf.components.deploy.options:DeployOptions",
                   "serve a published version on the target the deploy option names (its choices)"),
    # Predict has its own command (`imgclf predict`): its inputs are a list of files and folders.
    "predict": Step("imgclf.components.predict.step:predict", "imgclf.components.predict.options:BatchPredictOptions",
                    "classify a folder or bucket of images through a SavedModel's serving signature", entry=False),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def function(step: str):
    return _load(STEPS[step].function)


def options(step: str) -> type[Options] | None:
    ref = STEPS[step].options
    return _load(ref) if ref else None


def pipeline_options(steps: str | list[str]) -> list[type[Options]]:
    """The options classes of the named steps ("ingest,preprocess,..." or a list)."""
    names = steps.split(",") if isinstance(steps, str) else steps
    return [cls for cls in (options(n) for n in names) if cls is not None]
