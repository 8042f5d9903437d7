"""What release's KFP components do in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def champion(records, **options) -> dict:
    """The lookup's outputs by name; the face (component.py) puts them in the order specs.py declares,
    the one place that order is written (KFP fills a NamedTuple's outputs by position)."""
    # The train options come along so that a change of them is a reason to train (skip_unchanged).
    import json

    from imgclf.components.release.champion import lookup
    from imgclf.components.release.options import ChampionOptions

    own = ChampionOptions.pick(options)
    r = lookup(records.path, **own, train_options=json.dumps({k: v for k, v in options.items() if k not in own}))
    return {"action": r.action, "reason": r.reason, "champion_version": r.champion_version,
            "warm_start_from": r.warm_start_from}


def gate(records, predictions, reasons, compared, metrics, **options) -> dict:
    """The decision and its JSON summary by name (ordered by the face, as champion's)."""
    from imgclf.components.release.gate import gate as run

    r = run(records.path, predictions.path, decision_md=reasons.path, compared_csv=compared.path, **options)
    metrics.log_metric("compared images", r.compared.get("images", 0))
    metrics.log_metric("passed", int(r.decision != "refuse"))
    for k, v in r.challenger.items():
        metrics.log_metric(f"challenger {k}", v)
    from imgclf.components.release.options import COMPARE_METRICS

    for k in COMPARE_METRICS:
        if k in r.champion:
            metrics.log_metric(f"champion v{r.champion['version']} {k}", r.champion[k])
    return {"decision": r.decision, "summary": r.summary()}


def publish(saved_model, model, records, predictions, **options) -> int:
    from imgclf.components.release.publish import publish as run

    return run(saved_model.path, model.path, records.path, predictions.path, **options)


def not_published(summary: str) -> str:
    import json

    outcome = json.loads(summary)
    print(f"not published ({outcome['decision']}):\n" + "\n".join(outcome["reasons"]), flush=True)
    return outcome["decision"]


def training_skipped(reason: str, champion_version: int, note) -> str:
    from imgclf.components.release.gate import skipped

    return skipped(reason, champion_version, note.path)
