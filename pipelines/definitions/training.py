"""The training pipeline: validate -> ingest (plan -> shard tasks -> merge) -> preprocess (likewise) -> champion lookup
-> [train (or a sweep's trials -> select) -> evaluate -> export -> gate -> [publish -> deploy]].

Two `dsl.If` branches, so the UI shows what did not run and why: training runs unless the data is
exactly the champion's (`skip_unchanged`), and publish runs only when the gate passed. Pipeline outputs
are the ingest report and `outcome` (the gate's or the skip note's JSON summary, via `dsl.OneOf`):
kfp.local 2.17 can pick a `dsl.OneOf` parameter but not a `dsl.OneOf` artifact, and artifacts made
inside a branch cannot be pipeline outputs otherwise. `imgclf run` (pipelines/local/run.py) finds the branch artifacts
(SavedModel, report) in the run's folder.

The parameters are the steps' declared options; the function's signature and the validate task are
generated into training_face.py (pipelines/definitions/declare.py); each task gets its own.
"""
from kfp import dsl

from imgclf.components.kfp_glue import wrappers as steps
from imgclf.pipelines import kfp_seams
from imgclf.pipelines.definitions import training_face as face
from imgclf.pipelines.definitions.declare import for_step, pipeline
from imgclf.pipelines.definitions.platform import LOCAL, Platform
from imgclf.pipelines.definitions.sweep import Sweep

PIPELINE_NAME = "imgclf-training"
STEPS = face.STEPS
Outputs = face.Outputs


def build_training_pipeline(platform: Platform = LOCAL, sweep: Sweep | None = None, audit_folds: int = 0):
    """A fresh pipeline for `platform` (KFP builds the graph when the decorator runs, so cluster
    settings must be known here, not passed as parameters), with one train task or a `sweep`'s trials;
    with `audit_folds` K > 0 also a label audit of the same data beside the training (K fold trainings,
    pipelines/definitions/audit.py), whose suspects are in the run's artifacts."""
    if audit_folds:  # imported here: audit.py imports this module, and builds its pipeline on import
        from imgclf.pipelines.definitions.audit import fold_audit

    def graph(p: dict) -> Outputs:
        check = face.validate(pipeline_steps=",".join(STEPS), **p)
        ingest = sharded_ingest(for_step("ingest", p), platform, after=check)
        records = sharded_preprocess(ingest.outputs["dataset"], for_step("preprocess", p))
        look = steps.champion(records=records, **for_step("champion", p), **for_step("train", p))
        look.set_caching_options(False)  # reads the registry, which other runs change
        with dsl.If(look.outputs["action"] == "train", name="train-new-data"):
            if sweep is None:
                fit = steps.train(records=records, warm_start_from=look.outputs["warm_start_from"],
                                  **for_step("train", p))
                platform.apply_retry(fit)
                gpu_tasks, model = [fit], fit.outputs["model"]
            else:
                gpu_tasks, model = sweep_trials(sweep, platform, records, look.outputs["warm_start_from"], p)
            ev = steps.evaluate(records=records, model=model, **for_step("evaluate", p))
            exp = steps.export(model=model, records=records, predictions=ev.outputs["predictions"],
                               **for_step("export", p))
            gate = steps.gate(records=records, predictions=ev.outputs["predictions"], **for_step("gate", p))
            gate.after(exp)  # publish only what passed export's serving checks
            gate.set_caching_options(False)  # the champion it compares with may have changed
            with dsl.If(gate.outputs["decision"] == "publish", name="gate-passed"):
                pub = steps.publish(saved_model=exp.outputs["saved_model"], model=model, records=records,
                                    predictions=ev.outputs["predictions"], gate_summary=gate.outputs["summary"],
                                    source_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                    **for_step("publish", p)).set_caching_options(False)
                # Optional serving of what was just published: with deploy=none the task says so and ends.
                steps.deploy(model_version=pub.output, **for_step("deploy", p)).set_caching_options(False)
            # An Else also makes kfp.local (2.17) evaluate the condition: it resolves a condition on a
            # sibling task's output only inside an If/Else group.
            with dsl.Else(name="not-published"):
                steps.not_published(summary=gate.outputs["summary"])
        with dsl.Else(name="data-unchanged"):
            skip = steps.training_skipped(reason=look.outputs["reason"],
                                          champion_version=look.outputs["champion_version"])
        if audit_folds:  # built last: the training's own tasks keep their names (train, evaluate)
            fold_audit(ingest.outputs["dataset"], p, audit_folds, platform)
        platform.apply(*kfp_seams.pipeline_tasks())
        for task in gpu_tasks:
            platform.apply_gpu(task)
        return Outputs(ingest_report=ingest.outputs["report"],
                       outcome=dsl.OneOf(gate.outputs["summary"], skip.outputs["Output"]))

    description = face.DESCRIPTION
    if sweep is not None:
        description += (f" Sweep: {len(sweep.trials)} trials over {', '.join(sweep.swept)}, {sweep.parallelism} at "
                        f"a time, selected on {sweep.metric} (validation split).")
    return pipeline(PIPELINE_NAME, description, face, graph)


def sharded_ingest(options: dict, platform: Platform, after=None):
    """Ingest as plan -> a ParallelFor of shard tasks (each decode-checks a consecutive 1/N of the listed
    files) -> merge, N being the `ingest_tasks` option (0: from the file count); the merge task, named
    `ingest`, writes the manifest one task writes and holds the dataset and report outputs."""
    plan = steps.ingest_plan(**options)
    if after is not None:
        plan.after(after)
    with dsl.ParallelFor(plan.outputs["Output"], name="ingest-shards") as shard:
        part = steps.ingest_shard(plan=plan.outputs["plan"], shard=shard, **options)
    merge = steps.ingest(plan=plan.outputs["plan"], parts=dsl.Collected(part.outputs["part"]), **options)
    # The source is named by a URI whose contents change between runs (scheduled retraining): never let
    # a cluster's cache answer for any task that reads it. Later steps are keyed on ingest's outputs and
    # stay cacheable. Locally only `imgclf run --cache` caches, keyed on the data folder's listing
    # (pipelines/local/cache.py), and never for a remote URI.
    for task in (plan, part, merge):
        task.set_caching_options(platform.target == "local")
    return merge


def sharded_preprocess(dataset, options: dict):
    """Preprocess as plan -> a ParallelFor of shard tasks (each 1/N of the TFRecord files) -> merge, N
    being the `shard_tasks` option (0: from the image count); the records are those one task writes."""
    plan = steps.preprocess_plan(dataset=dataset, **options)
    with dsl.ParallelFor(plan.outputs["Output"], name="preprocess-shards") as shard:
        part = steps.preprocess_shard(dataset=dataset, plan=plan.outputs["plan"], shard=shard, **options)
    merge = steps.preprocess_merge(dataset=dataset, plan=plan.outputs["plan"], parts=dsl.Collected(part.outputs["part"]),
                                   **options)
    return merge.outputs["records"]


def sweep_trials(sweep: Sweep, platform: Platform, records, warm_start_from, p: dict):
    """A sweep in place of the train task: a ParallelFor of trials (each trains and is scored on the
    validation split, a failure kept as its result), then select over the collected results. Returns
    the tasks that train (they get the train task's GPU request) and the winner's model."""
    with dsl.ParallelFor(sweep.items(), parallelism=sweep.parallelism, name="sweep") as item:
        trial = steps.trial(records=records, warm_start_from=warm_start_from, trial=item, **for_step("train", p))
        platform.apply_retry(trial)  # a preempted trial resumes from its own backup
    choose = steps.select(models=dsl.Collected(trial.outputs["model"]),
                          results=dsl.Collected(trial.outputs["Output"]), metric=sweep.metric)
    return [trial], choose.outputs["model"]


training_pipeline = build_training_pipeline()
