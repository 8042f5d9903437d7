"""The KFP components, declared once: each component's artifacts, wired inputs and return, and the steps
whose options become its inputs (components/steps.py); each pipeline's steps, which make its
parameters and its validate task. `generate.py` writes the components' source from these (each step's
`component.py`, each pipeline's `*_face.py`); nothing here runs in a task.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from imgclf.components.deploy.options import TARGETS as DEPLOY_TARGETS
from imgclf.components.deploy.options import served
from imgclf.components.lib.options import Option, union


@dataclass(frozen=True)
class Artifact:
    name: str
    annotation: str
    """Source text as KFP expects it, e.g. "Input[Dataset]" or "Output[HTML]"."""
    help: str


@dataclass(frozen=True)
class Wired:
    """A component input the pipeline wires from another task's output, not from an Options class."""
    name: str
    type: type | str
    """A type, or its annotation as source text ("List[str]")."""
    help: str

    @property
    def annotation(self) -> str:
        return self.type if isinstance(self.type, str) else self.type.__name__


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    doc: str
    artifacts: tuple[Artifact, ...] = ()
    options: tuple[str, ...] = ()
    """The steps (components/steps.py) whose options become inputs: one for a step's component, all of a
    pipeline's for its validate task."""
    wired: tuple[Wired, ...] = ()
    returns: str = ""
    """The return annotation as source text ("float", "NamedTuple('Gate', decision=str, summary=str)")."""
    returns_help: str = ""
    pipeline_only: bool = False
    """Only the options' pipeline parameters (the validate task); a step's component takes them all."""

    @property
    def outputs(self) -> tuple[str, tuple[str, ...]] | None:
        """A NamedTuple return as (its name, its field names in order), read from `returns`; else None.

        The order is declared here only: KFP fills a NamedTuple's outputs by position, so the task body
        returns a dict and the generated face builds the tuple in this order (a reorder on one side
        alone would otherwise swap outputs silently)."""
        call = ast.parse(self.returns, mode="eval").body if self.returns.startswith("NamedTuple(") else None
        if call is None:
            return None
        return ast.literal_eval(call.args[0]), tuple(k.arg for k in call.keywords)

    def declared(self) -> list[Option]:
        """Its options' inputs, in the order of its function's signature."""
        return parameters(self.options, pipeline_only=self.pipeline_only)


def parameters(steps: tuple[str, ...] | list[str], pipeline_only: bool = True) -> list[Option]:
    """The union of the steps' options (only their pipeline parameters unless `pipeline_only` is false),
    required ones first (a Python signature needs that order), each group in declaration order: the one
    ordering of every generated component and pipeline signature (pipelines/definitions/declare.py reads
    it too)."""
    from imgclf.components.steps import pipeline_options

    found = union(*pipeline_options(list(steps)), pipeline_only=pipeline_only)
    return [o for o in found if o.required] + [o for o in found if not o.required]


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline's face: its function's signature (every parameter of its steps) and its validate task."""
    name: str
    """"training" -> pipelines/definitions/training_face.py, function `training_pipeline`."""
    steps: tuple[str, ...]
    description: str
    returns: str
    """The return annotation as source text; a "NamedTuple(...)" is written out as `Outputs`."""

    def validate(self) -> ComponentSpec:
        """The pipeline's first task: every pipeline parameter of its steps, checked."""
        return ComponentSpec("validate", "Check every pipeline parameter (choices, ranges, finite numbers) in seconds, "
                                         "before any work starts; a bad value fails here, and is not retried.",
                             options=self.steps, pipeline_only=True,
                             wired=(Wired("pipeline_steps", str, "the steps whose options to check"),),
                             returns="str", returns_help="ok")


RECORDS = Artifact("records", "Input[Dataset]", "preprocess's TFRecords and metadata")
MODEL = Artifact("model", "Input[Model]", "train's Keras model, history and train.json")
PREDICTIONS = Artifact("predictions", "Input[Dataset]", "evaluate's predictions.csv and metrics.json")

SPECS = [
    ComponentSpec("ingest_plan", "List a labelled folder, bucket, archive or table (refusing clashing class names "
                                 "and splits that hold different classes before a byte is read) and deal the "
                                 "listing out to the shard tasks.", (
        Artifact("plan", "Output[Dataset]", "plan.json and each shard task's run of the listing (a zip extracted)"),),
        ("ingest",), returns="List[int]", returns_help="the shard task indices"),
    ComponentSpec("ingest_shard", "One shard task: decode-check its consecutive run of the listed files into a "
                                  "manifest part and a quarantine part.", (
        Artifact("plan", "Input[Dataset]", "the plan"),
        Artifact("part", "Output[Dataset]", "this task's manifest and quarantine rows, part.json")), ("ingest",),
        wired=(Wired("shard", int, "this task's index"),)),
    ComponentSpec("ingest", "Merge the shard tasks' parts as one ingest task would write them: exact duplicates "
                            "and label conflicts across all of them, the whole-dataset checks, the manifest and "
                            "the quarantine.", (
        Artifact("plan", "Input[Dataset]", "the plan"),
        Artifact("parts", "Input[List[Dataset]]", "every shard task's part (dsl.Collected)"),
        Artifact("dataset", "Output[Dataset]", "manifest.csv, classes.json, quarantine.csv, summary.json"),
        Artifact("metrics", "Output[Metrics]", "images, classes and quarantined files by reason"),
        Artifact("report", "Output[HTML]", "the ingest report")), ("ingest",)),
    ComponentSpec("preprocess_plan", "Fix every split and its order from the whole manifest (seeded, before any "
                                     "image is read) and choose the shard tasks.", (
        Artifact("dataset", "Input[Dataset]", "ingest's manifest"),
        Artifact("plan", "Output[Dataset]", "plan.json: every split's rows in order, near-duplicates, task count")),
        ("preprocess",), returns="List[int]", returns_help="the shard task indices"),
    ComponentSpec("preprocess_shard", "One shard task: decode + resize its share of the images (whole TFRecord "
                                      "files, dealt round-robin) with the serving-time decoder.", (
        Artifact("dataset", "Input[Dataset]", "ingest's manifest"),
        Artifact("plan", "Input[Dataset]", "the plan"),
        Artifact("part", "Output[Dataset]", "this task's TFRecord files and part.json")), ("preprocess",),
        wired=(Wired("shard", int, "this task's index"),)),
    ComponentSpec("preprocess_merge", "Gather the shard tasks' files into one records artifact and write its "
                                      "metadata, as a single preprocess task would.", (
        Artifact("dataset", "Input[Dataset]", "ingest's manifest"),
        Artifact("plan", "Input[Dataset]", "the plan"),
        Artifact("parts", "Input[List[Dataset]]", "every shard task's files (dsl.Collected)"),
        Artifact("records", "Output[Dataset]", "TFRecord shards per split and metadata.json"),
        Artifact("metrics", "Output[Metrics]", "images per split, quarantined, near-duplicates")), ("preprocess",)),
    ComponentSpec("train", "Fit a Keras 3 model (baseline CNN or a transfer family), resumable after a retry; save "
                           ".keras, history, TensorBoard logs and learning curves.", (
        RECORDS, Artifact("model", "Output[Model]", "model.keras, history.json, train.json, tensorboard/"),
        Artifact("metrics", "Output[Metrics]", "the training summary and per-epoch throughput"),
        Artifact("curves", "Output[HTML]", "learning curves")), ("train",)),
    ComponentSpec("trial", "One trial of a sweep: train with the trial's options over the pipeline's, scored on "
                           "the validation split; a failure is kept as the trial's result, not raised.", (
        RECORDS, Artifact("model", "Output[Model]", "train's files (when it trained) and trial.json"),
        Artifact("metrics", "Output[Metrics]", "the trial's validation scores"),
        Artifact("curves", "Output[HTML]", "learning curves")), ("train",),
        wired=(Wired("trial", str, "the sweep's item: JSON {index, options}"),),
        returns="str", returns_help="the trial's result (trial.json) as JSON"),
    ComponentSpec("select", "The best trial of a sweep by its validation score (never a test score); its model "
                            "becomes the run's model.", (
        Artifact("models", "Input[List[Model]]", "every trial's model (dsl.Collected)"),
        Artifact("model", "Output[Model]", "the winner's model, with sweep.json listing every trial"),
        Artifact("report", "Output[HTML]", "trials table, plot and the winner's options")),
        wired=(Wired("results", "List[str]", "every trial's result (dsl.Collected)"),
               Wired("metric", str, "val_accuracy or val_loss")),
        returns="str", returns_help="the winner's trial.json"),
    ComponentSpec("evaluate", "Score the test split: metrics, confusion matrix, ROC, predictions and an HTML "
                              "report.", (
        RECORDS, MODEL, Artifact("predictions", "Output[Dataset]", "predictions.csv and metrics.json"),
        Artifact("metrics", "Output[Metrics]", "accuracy, macro averages, F1 per class"),
        Artifact("classification", "Output[ClassificationMetrics]", "confusion matrix (and ROC when binary)"),
        Artifact("report", "Output[HTML]", "the evaluation report")), ("evaluate",),
        returns="float", returns_help="test accuracy"),
    ComponentSpec("export", "Write the raw-bytes SavedModel, verify it against evaluate in a fresh process, "
                            "optionally publish it.", (
        MODEL, RECORDS, PREDICTIONS, Artifact("saved_model", "Output[Model]", "the TensorFlow SavedModel")),
        ("export",)),
    ComponentSpec("champion", "Read the registry's champion; decide whether this run trains (not when the data, "
                              "preprocessing and training options are the champion's).", (RECORDS,),
                  ("champion", "train"),
                  returns="NamedTuple('Lookup', action=str, reason=str, champion_version=int, warm_start_from=str)",
                  returns_help="action (train or skip), the reason, the champion's version, and the champion's "
                               "model folder when warm starting"),
    ComponentSpec("gate", "Thresholds, and the champion re-scored on the test images neither model has seen, "
                          "compared by a paired test: publish, refuse, or no registry.", (
        RECORDS, PREDICTIONS, Artifact("reasons", "Output[Markdown]", "the decision, its reasons and the 95 % "
                                                                      "intervals"),
        Artifact("compared", "Output[Dataset]",
                 "a CSV of the images compared (location, sha256, label) and both models' answers"),
        Artifact("metrics", "Output[Metrics]", "challenger and champion scores")), ("gate",),
        returns="NamedTuple('Gate', decision=str, summary=str)",
        returns_help="publish, refuse or no-registry, and the JSON summary"),
    ComponentSpec("publish", "Copy the checked SavedModel into the registry as the next version and make it the "
                             "champion.", (
        Artifact("saved_model", "Input[Model]", "export's SavedModel"), MODEL, RECORDS, PREDICTIONS), ("publish",),
        returns="int", returns_help="the published version"),
    ComponentSpec("deploy", f"Serve the published version: {served([t for t in DEPLOY_TARGETS if t != 'none'])}; "
                            "nothing with deploy=none.", (
        Artifact("deployment", "Output[Artifact]", "the InferenceService manifest or models.config written"),),
        ("deploy",), returns="str", returns_help="what was deployed, and the commands that serve or apply it"),
    ComponentSpec("not_published", "The visible end of a run whose model is not published (refused by the gate, "
                                   "or no registry).",
                  wired=(Wired("summary", str, "the gate's JSON summary"),), returns="str",
                  returns_help="the gate's decision"),
    ComponentSpec("training_skipped", "The visible end of a run on unchanged data: why nothing was trained.",
                  (Artifact("note", "Output[Markdown]", "why training was skipped"),),
                  wired=(Wired("reason", str, "the champion lookup's reason"),
                         Wired("champion_version", int, "the champion that stays")),
                  returns="str", returns_help="the outcome JSON"),
    ComponentSpec("audit", "Label audit: every fold's out-of-fold probabilities, ranked by confident learning "
                           "(cleanlab); suspects.csv and a page of thumbnails.", (
        Artifact("dataset", "Input[Dataset]", "ingest's manifest (locations, perceptual hashes)"),
        Artifact("predictions", "Input[List[Dataset]]", "every fold's evaluate predictions (dsl.Collected)"),
        Artifact("suspects", "Output[Dataset]", "suspects.csv, suspects.html, scores.csv, audit.json"),
        Artifact("metrics", "Output[Metrics]", "images, suspects by kind, out-of-fold accuracy"),
        Artifact("report", "Output[HTML]", "the suspects page")), ("audit",),
        returns="int", returns_help="the number of suspects"),
    ComponentSpec("predict", "Batch prediction: a folder or bucket of images in, one row per image (top-k) out.", (
        Artifact("predictions", "Output[Dataset]", "predictions.csv or predictions.jsonl"),
        Artifact("metrics", "Output[Metrics]", "images classified, failed, and counts per class")),
        ("predict",)),
]


FACES = {
    "ingest": ("ingest_plan", "ingest_shard", "ingest"),
    "preprocess": ("preprocess_plan", "preprocess_shard", "preprocess_merge"),
    "train": ("train", "trial"),
    "sweep": ("select",),
    "evaluate": ("evaluate",),
    "export": ("export",),
    "release": ("champion", "gate", "publish", "not_published", "training_skipped"),
    "deploy": ("deploy",),
    "predict": ("predict",),
    "audit": ("audit",),
}
"""Step package -> its components, written to components/<package>/component.py (in this order), each
calling the function of its name in components/<package>/task.py."""

PIPELINES = (
    PipelineSpec("training", ("ingest", "preprocess", "champion", "train", "evaluate", "export", "gate", "publish",
                              "deploy"),
                 "Labelled images in, a served Keras image classifier (raw-bytes SavedModel) out.",
                 "NamedTuple('Outputs', ingest_report=HTML, outcome=str)"),
    PipelineSpec("prediction", ("predict",), "Classify a folder or bucket of images with an exported model.",
                 "Dataset"),
    PipelineSpec("audit", ("ingest", "preprocess", "train", "evaluate", "audit"),
                 "Label audit: K fold models score every train and validation image out-of-fold; cleanlab ranks "
                 "the likely label errors (suspects.csv, suspects.html).", "Dataset"),
)
