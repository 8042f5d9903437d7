"""The audit pipeline: validate -> ingest -> for each fold k of K [preprocess with fold k held out as its
test split -> train -> evaluate (out-of-fold probabilities of fold k)] -> audit (cleanlab over all folds).

The folds are a `dsl.ParallelFor` over 0..K-1, fixed when the pipeline is built (like a sweep's trials:
a loop's items are part of the graph), so on a cluster the K fold trainings run side by side, and under
kfp.local they take turns. Each fold reuses the training pipeline's steps through their artifacts:
preprocess gets `audit_folds`/`audit_fold` (step-level options, not pipeline parameters), train and
evaluate are the training pipeline's own. Nothing is exported, gated or published.
"""
from kfp import dsl

from imgclf.components.kfp_glue import wrappers as steps
from imgclf.pipelines import kfp_seams
from imgclf.pipelines.definitions import audit_face as face
from imgclf.pipelines.definitions.declare import for_step, pipeline
from imgclf.pipelines.definitions.platform import LOCAL, Platform
from imgclf.pipelines.definitions.training import sharded_ingest, sharded_preprocess

PIPELINE_NAME = "imgclf-audit"
STEPS = face.STEPS
DEFAULT_FOLDS = 5


def build_audit_pipeline(platform: Platform = LOCAL, folds: int = DEFAULT_FOLDS):
    """A fresh audit pipeline of `folds` fold trainings; preprocess and the audit task get the same
    `audit_folds`, and the audit task checks that it received that many folds' predictions."""
    def graph(p: dict):
        check = face.validate(pipeline_steps=",".join(STEPS), **p)
        ingest = sharded_ingest(for_step("ingest", p), platform, after=check)
        merged = fold_audit(ingest.outputs["dataset"], p, folds, platform)
        platform.apply(*kfp_seams.pipeline_tasks())
        return merged.outputs["suspects"]

    return pipeline(PIPELINE_NAME, face.DESCRIPTION + f" {folds} folds.", face, graph)


def fold_audit(dataset, p: dict, folds: int, platform: Platform):
    """The folds and the audit task over ingest's `dataset`: the audit pipeline's body, and the branch the
    training pipeline gains when compiled with `--audit-folds K` (scheduled retraining that also audits
    its labels). Options `p` lacks (the training pipeline has no audit parameters) keep their defaults."""
    with dsl.ParallelFor(list(range(folds)), name="audit-folds") as fold:
        records = sharded_preprocess(dataset, {**for_step("preprocess", p), "audit_folds": folds, "audit_fold": fold})
        fit = steps.train(records=records, warm_start_from="", **for_step("train", p))
        platform.apply_retry(fit)
        ev = steps.evaluate(records=records, model=fit.outputs["model"], **for_step("evaluate", p))
    platform.apply_gpu(fit)
    return steps.audit(dataset=dataset, predictions=dsl.Collected(ev.outputs["predictions"]), audit_folds=folds,
                       **for_step("audit", p))


audit_pipeline = build_audit_pipeline()
