"""What deploy's KFP component does in its task, once its arguments arrive: unpack the artifacts, call the
step with its options, fill the outputs and metrics. Called by the generated face beside it
(component.py); options are forwarded as they come (`**options`) and validated by the step's Options
class. Runs in the task's process (the container, or this virtualenv under kfp.local)."""
from __future__ import annotations


def deploy(deployment, **options) -> str:
    from imgclf.components.deploy.step import deploy as run

    d = run(deployment.path, **options)
    deployment.metadata.update({"target": d.target, "version": d.version})
    return d.summary()
