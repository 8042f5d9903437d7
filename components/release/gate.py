"""The gate between evaluate and publish: a challenger is published only if it is good enough and
better than the champion on the same test data.

The champion is re-scored here on the challenger's test split, through its own published serving
signature on the test images' original bytes, so both models are judged on identical images in the
way a serving system would run them. Metrics recorded at the champion's own training time are never
compared: they were measured on another test split.

The outcome is not an error either way: `decision` is "publish", "refuse" or "no-registry" and the
pipeline branches on it (`dsl.If`), with the reasons as a Markdown page.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from components.contracts import Evaluation, InputSpec, RecordsMetadata
from components.lib import registry as layout
from components.lib import serving, storage
from components.lib.options import takes
from components.release.options import COMPARE_METRICS as METRICS
from components.release.options import GateOptions


@dataclass
class GateResult:
    decision: str
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict = field(default_factory=dict)  # version + metrics on this test split; {} if none
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.decision == "publish"

    def summary(self) -> str:
        """JSON carried to publish (into the version's record) and to the pipeline's `outcome` output."""
        return json.dumps({"decision": self.decision, "reasons": self.reasons, "challenger": self.challenger,
                           "champion": self.champion, "thresholds": self.thresholds})


def score_saved_model(saved_model: str, dataset_dir: str) -> dict[str, float]:
    """Accuracy and macro F1 of any published SavedModel on this dataset's test split, via serving_default."""
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    meta = RecordsMetadata.load(dataset_dir)
    classes = meta.classes
    with serving.local_model(saved_model) as path:
        loaded = tf.saved_model.load(str(path))
        answers = serving.answer_records(loaded.signatures["serving_default"], meta.shard_paths(dataset_dir, "test"))
    y = [classes[a["label"]] for a in answers]
    pred = [a["class_name"] for a in answers]
    _, _, f1, _ = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1.mean()), "test_images": len(y)}


@takes(GateOptions)
def gate(dataset_dir: str, predictions_dir: str, opts: GateOptions, *, decision_md: str = "") -> GateResult:
    """Decide whether evaluate's challenger may be published.

    Passes when accuracy >= min_accuracy, macro F1 >= min_macro_f1 and, if a champion exists, the
    challenger's `compare_metric` is strictly higher than the champion's on this test split and by at
    least `margin` (absolute, e.g. 0.01 = one point of accuracy).
    """
    registry, model_name, compare_metric, margin = opts.registry, opts.model_name, opts.compare_metric, opts.margin
    min_accuracy, min_macro_f1 = opts.min_accuracy, opts.min_macro_f1
    evaluated = Evaluation.load(predictions_dir)
    challenger = {k: float(evaluated.metrics[k]) for k in METRICS}
    thresholds = {"min_accuracy": min_accuracy, "min_macro_f1": min_macro_f1, "margin": margin}
    reasons, ok = [], True
    for metric, floor in (("accuracy", min_accuracy), ("macro_f1", min_macro_f1)):
        good = math.isfinite(challenger[metric]) and challenger[metric] >= floor  # NaN never passes
        ok &= good
        reasons.append(f"{'PASS' if good else 'FAIL'}: {metric} {challenger[metric]:.4f} "
                       f"{'>=' if good else '<'} required {floor:.4f}")
    champ_info: dict = {}
    if registry:
        champ = layout.champion(registry, model_name)
        if champ is None:
            reasons.append(f"PASS: no champion yet for {model_name!r}: this would be version 1")
        elif InputSpec.from_dict(champ).classes != evaluated.classes:
            ok = False
            reasons.append(f"FAIL: champion v{champ['version']} has classes {InputSpec.from_dict(champ).classes}, "
                           f"the challenger {evaluated.classes}: not comparable; publish under a new model name")
            champ_info = {"version": champ["version"]}
        else:
            scored = score_saved_model(champ["uri"], dataset_dir)
            champ_info = {"version": champ["version"], **scored}
            new, old = challenger[compare_metric], scored[compare_metric]
            better = new > old and new - old >= margin - 1e-12
            ok &= better
            reasons.append(f"{'PASS' if better else 'FAIL'}: {compare_metric} {new:.4f} vs champion "
                           f"v{champ['version']} {old:.4f} on the same {scored['test_images']} test images "
                           f"({new - old:+.4f}; must be better by at least {margin:.4f})")
    decision = ("publish" if registry else "no-registry") if ok else "refuse"
    if decision == "no-registry":
        reasons.append("no registry given: nothing to publish (the SavedModel stays in the pipeline root)")
    result = GateResult(decision, reasons, challenger, champ_info, thresholds)
    if decision_md:
        storage.atomic_write_text(decision_md, markdown(result, model_name))
    print(f"gate: {decision.upper()}: " + "; ".join(reasons), flush=True)
    return result


def markdown(result: GateResult, model_name: str) -> str:
    verdict = {"publish": "PASSED: the challenger will be published",
               "refuse": "REFUSED: the champion stays; nothing is published",
               "no-registry": "PASSED the thresholds; no registry to publish to"}[result.decision]
    champ = result.champion
    head = f"champion v{champ['version']} (re-scored here)" if "accuracy" in champ else "champion"
    rows = "\n".join(f"| {m} | {result.challenger[m]:.4f} | "
                     f"{champ[m]:.4f} |" if m in champ else f"| {m} | {result.challenger[m]:.4f} | - |"
                     for m in METRICS)
    return (f"# Gate for {model_name}: {verdict}\n\n| metric | challenger | {head} |\n|---|---|---|\n{rows}\n\n"
            "## Reasons\n\n" + "\n".join(f"- {r}" for r in result.reasons) + "\n\n"
            f"Thresholds: {', '.join(f'{k} {v}' for k, v in result.thresholds.items())}\n")


def skipped(reason: str, champion_version: int, note_md: str = "") -> str:
    """The `outcome` of a run that did not train (unchanged data); the Markdown note for the UI."""
    if note_md:
        storage.atomic_write_text(note_md, f"# Training skipped\n\n{reason}.\n\nChampion v{champion_version} "
                                           "stays in place.\n")
    return json.dumps({"decision": "skip", "reasons": [reason], "champion": {"version": champion_version}})
