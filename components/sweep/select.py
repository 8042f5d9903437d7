"""Select: the best of a sweep's trials by their validation score; its model becomes the run's model.

Only validation scores are read (each trial's trial.json): the test split is opened by no trial and
not by this step, so no test image can influence which model is evaluated, exported and published.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass

from imgclf.components.contracts import SWEEP_FILE, TRIAL_FILE, TRIAL_METRICS, SweepResult, TrialResult
from imgclf.components.lib import reports, storage


class AllTrialsFailed(RuntimeError):
    """Not one trial trained: the sweep has nothing to select."""


@dataclass
class Selection:
    winner: TrialResult
    trials: list[TrialResult]

    @property
    def failed(self) -> int:
        return sum(t.status != "ok" for t in self.trials)


def best(trials: list[TrialResult], metric: str) -> TrialResult:
    """The best trial that trained; ties go to the lower validation loss, then the earlier trial."""
    if metric not in TRIAL_METRICS:
        raise ValueError(f"metric {metric!r}: a sweep selects on one of {', '.join(TRIAL_METRICS)}")
    ok = [t for t in trials if t.status == "ok"]
    if not ok:
        causes = "\n".join(f"  trial {t.index} {t.options}: {t.error}" for t in trials)
        raise AllTrialsFailed(f"all {len(trials)} trials of the sweep failed:\n{causes}")
    sign = -1 if TRIAL_METRICS[metric] is max else 1
    return min(ok, key=lambda t: (sign * getattr(t, metric), t.val_loss, t.index))


def select(results: list[str], model_dirs: list[str], output_dir: str, metric: str = "val_accuracy",
           report_html: str = "") -> Selection:
    """Copy the winner's model (train's files) to `output_dir`, with sweep.json listing every trial."""
    if len(results) != len(model_dirs):
        raise ValueError(f"{len(results)} trial results for {len(model_dirs)} trial models")
    trials = [TrialResult.from_json(r) for r in results]
    winner = best(trials, metric)
    source = model_dirs[trials.index(winner)]
    sweep = SweepResult(metric, winner.index, [asdict(t) for t in trials])
    with storage.atomic_dir(output_dir) as out:
        shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TRIAL_FILE))
        sweep.save(out)
    if report_html:
        storage.atomic_write_text(report_html, reports.page("Sweep", reports.sweep_sections(
            sweep.trials, metric, winner.index)))
    failed = sum(t.status != "ok" for t in trials)
    print(f"select: trial {winner.index} {winner.options} wins on validation {metric} "
          f"{getattr(winner, metric):.4f} of {len(trials)} trials ({failed} failed); {SWEEP_FILE} written",
          flush=True)
    return Selection(winner, trials)
