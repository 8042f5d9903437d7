"""`imgclf audit`: the audit pipeline on this machine with kfp.local (its fold trainings take turns), then
its suspects copied to the output folder."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

AUDIT_FILES = ("suspects.csv", "suspects.html", "scores.csv", "audit.json")


@dataclass
class LocalAudit:
    output_dir: str
    summary: dict
    """audit.json: images, folds, suspects, suspects per kind, out-of-fold accuracy."""
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        s, out = self.summary, Path(self.output_dir)
        kinds = ", ".join(f"{n} {k}" for k, n in s["kinds"].items())
        return "\n".join([f"\n=== imgclf audit finished in {self.seconds:.1f} s ===",
                          f"suspects      : {s['suspects']} of {s['images']} images ({kinds})",
                          f"folds         : {s['folds']} (out-of-fold accuracy {s['out_of_fold_accuracy']:.4f})",
                          f"suspects.csv  : {out / 'suspects.csv'}", f"suspects.html : {out / 'suspects.html'}",
                          f"every score   : {out / 'scores.csv'}"])


def run_audit(values: dict, output_dir: str, *, folds: int = 5, pipeline_root: str = "runs",
              runner: str = "subprocess", network: str = "auto", quiet: bool = False) -> LocalAudit:
    """Check every parameter (local paths included) and the fold count before anything runs, run the
    audit pipeline, copy its files to `output_dir`."""
    import json

    from imgclf.components.audit.options import AuditOptions
    from imgclf.pipelines import check_parameters
    from imgclf.pipelines.definitions.audit import build_audit_pipeline
    from imgclf.pipelines.local.run import check_runner, local_runner, run_pipeline

    check_runner(runner, network)
    params = check_parameters(values, pipeline="audit", check_paths=True)
    AuditOptions(audit_folds=folds)  # the declared range, checked here
    docker, params = local_runner(params, runner, network)
    task, timings, seconds = run_pipeline(build_audit_pipeline(folds=folds), params, pipeline_root, docker, quiet)
    found = Path(task.output.path)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in AUDIT_FILES:
        shutil.copyfile(found / name, out / name)
    return LocalAudit(str(out.resolve()), json.loads((out / "audit.json").read_text()), seconds, timings)
