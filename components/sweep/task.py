"""What sweep's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def select(models, model, report, results: list, metric: str) -> str:
    from imgclf.components.sweep.select import select as run

    s = run(list(results), [m.path for m in models], model.path, metric=metric, report_html=report.path)
    model.metadata.update({"framework": "keras", "trial": s.winner.index, "options": s.winner.options,
                           "trials": len(s.trials), "failed_trials": s.failed})
    return s.winner.to_json()
