"""The gate between evaluate and publish: a challenger is published only if it is good enough and
better than the champion on images neither of them has seen.

Fair by construction:
- The champion is re-scored here, through its own published serving signature on the test images'
  original bytes, so both models are judged on identical images the way a serving system runs them.
  Metrics recorded at the champion's own training time are never compared: another test split.
- Only test images that neither model trained or validated on are compared. Splits follow each image's
  content hash (preprocess), so a grown dataset keeps its old test images in test; the images the
  champion learned from are recorded with its registry version (release/seen.py) and left out here, in
  case the split rule, the seed or a pre-split source moved one. Fewer than `min_compared_images` left:
  refused, with that reason, since such a comparison decides nothing.
- "Better" is a paired test on those images at a stated level (McNemar's exact test on accuracy, a paired
  bootstrap on macro F1; components/lib/stats.py), or a margin the user sets. Every figure carries its
  95 % interval.

The outcome is not an error either way: `decision` is "publish", "refuse" or "no-registry" and the
pipeline branches on it (`dsl.If`), with the reasons as a Markdown page and the compared images as a CSV.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from imgclf.components.contracts import Evaluation, InputSpec, RecordsMetadata, SplitImages, read_predictions
from imgclf.components.lib import registry as layout
from imgclf.components.lib import serving, stats, storage, tables
from imgclf.components.lib.options import takes
from imgclf.components.release import seen
from imgclf.components.release.options import COMPARE_METRICS as METRICS
from imgclf.components.release.options import GateOptions


@dataclass
class GateResult:
    decision: str
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict = field(default_factory=dict)
    """version, and its scores on the compared images ({} if there is no champion)."""
    thresholds: dict[str, float] = field(default_factory=dict)
    compared: dict = field(default_factory=dict)
    """How many test images were compared, how many were left out and why, and a digest of which."""
    intervals: dict = field(default_factory=dict)
    """95 % intervals: the challenger's on its whole test split, both models' on the compared images, and
    the paired comparison."""
    rows: list[dict] = field(default_factory=list, repr=False)
    """The compared images, one row each (written to the gate's CSV, not to the summary)."""

    @property
    def passed(self) -> bool:
        return self.decision == "publish"

    def summary(self) -> str:
        """JSON carried to publish (into the version's record) and to the pipeline's `outcome` output."""
        return json.dumps({"decision": self.decision, "reasons": self.reasons, "challenger": self.challenger,
                           "champion": self.champion, "thresholds": self.thresholds, "compared": self.compared,
                           "intervals": self.intervals})


@dataclass
class _Answers:
    """Both models' answers on the compared images, as class names."""
    locations: list[str]
    hashes: list[str]
    truth: list[str]
    challenger: list[str]
    champion: list[str]


def champion_answers(saved_model: str, dataset_dir: str) -> dict[str, str]:
    """Any published SavedModel's answer (class name) for every test image of this dataset, by location,
    through its `serving_default` signature on the original bytes."""
    import tensorflow as tf

    meta = RecordsMetadata.load(dataset_dir)
    with serving.local_model(saved_model) as path:
        loaded = tf.saved_model.load(str(path))
        answers = serving.answer_records(loaded.signatures["serving_default"], meta.shard_paths(dataset_dir, "test"))
    return {a["location"]: a["class_name"] for a in answers}


def _interval_of(name: str, truth: list[str], pred: list[str], classes: list[str]) -> stats.Interval:
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in truth], dtype=np.int64)
    p = np.array([index.get(q, len(classes)) for q in pred], dtype=np.int64)
    if name == "accuracy":
        return stats.wilson(int((y == p).sum()), len(y))
    # An answer outside `classes` (a class only the other model knows) is index len(classes): a miss.
    return stats.bootstrap_macro_f1(y, p, len(classes))


def _compare(metric: str, a: _Answers, classes: list[str]) -> stats.Comparison:
    index = {c: i for i, c in enumerate(classes)}
    other = len(classes)
    y = np.array([index[t] for t in a.truth], dtype=np.int64)
    new = np.array([index.get(q, other) for q in a.challenger], dtype=np.int64)
    old = np.array([index.get(q, other) for q in a.champion], dtype=np.int64)
    if metric == "accuracy":
        return stats.mcnemar(y, new, old)
    return stats.paired_bootstrap_macro_f1(y, new, old, other)


def _recalls(truth: list[str], pred: list[str], classes: list[str]) -> dict[str, tuple[int, int]]:
    """(right, images) per class on the compared images."""
    out = {c: [0, 0] for c in classes}
    for t, p in zip(truth, pred):
        if t in out:
            out[t][1] += 1
            out[t][0] += int(t == p)
    return {c: (r, n) for c, (r, n) in out.items()}


@takes(GateOptions)
def gate(dataset_dir: str, predictions_dir: str, opts: GateOptions, *, decision_md: str = "",
         compared_csv: str = "") -> GateResult:
    """Decide whether evaluate's challenger may be published.

    Passes when accuracy >= min_accuracy, macro F1 >= min_macro_f1 and (below 1) the calibrated expected
    calibration error <= max_ece on the challenger's test split and,
    if a champion exists, on the test images neither model has seen (at least `min_compared_images`):
    the challenger's `compare_metric` is better than the champion's by a one-sided paired test at
    `significance` (or by at least `margin`, when one is set), no class's recall dropped by more than
    `max_class_recall_drop`, and the classes are the champion's (or `accept_class_change` says a change
    is wanted, and the challenger is not significantly worse on the classes both know).
    """
    evaluated = Evaluation.load(predictions_dir)
    challenger = {k: float(evaluated.metrics[k]) for k in METRICS}
    calibration = {k: float(evaluated.metrics[k]) for k in CALIBRATION if k in evaluated.metrics}
    thresholds = {"min_accuracy": opts.min_accuracy, "min_macro_f1": opts.min_macro_f1, "max_ece": opts.max_ece,
                  "margin": opts.margin,
                  "significance": opts.significance, "min_compared_images": opts.min_compared_images,
                  "max_class_recall_drop": opts.max_class_recall_drop}
    # evaluate's own intervals on the challenger's whole test split
    intervals = {"challenger_test": {m: evaluated.intervals[m] for m in METRICS if m in evaluated.intervals}}
    images = int(evaluated.metrics.get("test_images", 0))
    reasons, ok = [], True
    for metric, floor in (("accuracy", opts.min_accuracy), ("macro_f1", opts.min_macro_f1)):
        good = math.isfinite(challenger[metric]) and challenger[metric] >= floor  # NaN never passes
        ok &= good
        ci = intervals["challenger_test"].get(metric)
        where = f" (95 % CI {ci['low']:.4f}-{ci['high']:.4f}, {images} test images)" if ci else ""
        reasons.append(f"{'PASS' if good else 'FAIL'}: {metric} {challenger[metric]:.4f}{where} "
                       f"{'>=' if good else '<'} required {floor:.4f}")
    if opts.max_ece < 1:
        ok &= _calibration_rule(reasons, calibration, opts.max_ece)
    result = GateResult("", reasons, challenger | calibration, {}, thresholds, {}, intervals)
    if opts.registry:
        champ = layout.champion(opts.registry, opts.model_name)
        if champ is None:
            reasons.append(f"PASS: no champion yet for {opts.model_name!r}: this would be version 1")
        else:
            ok &= _against_champion(result, champ, dataset_dir, read_predictions(predictions_dir),
                                    evaluated.classes, opts)
    result.decision = ("publish" if opts.registry else "no-registry") if ok else "refuse"
    if result.decision == "no-registry":
        reasons.append("no registry given: nothing to publish (the SavedModel stays in the pipeline root)")
    if decision_md:
        storage.atomic_write_text(decision_md, markdown(result, opts.model_name))
    if compared_csv:
        storage.atomic_write_text(compared_csv, _csv(result.rows))
    print(f"gate: {result.decision.upper()}: " + "; ".join(reasons), flush=True)
    return result


def _against_champion(result: GateResult, champ: dict, dataset_dir: str, predictions: list[dict],
                      classes: list[str], opts: GateOptions) -> bool:
    """The comparison with the champion: appends its reasons to `result`; returns whether it passed."""
    reasons, version = result.reasons, champ["version"]
    old_classes = InputSpec.from_dict(champ).classes
    result.champion = {"version": version}
    changed = old_classes != classes
    if changed and not opts.accept_class_change:
        added = sorted(set(classes) - set(old_classes))
        removed = sorted(set(old_classes) - set(classes))
        reasons.append(f"FAIL: champion v{version} has classes {old_classes}, the challenger {classes} (added "
                       f"{added or 'none'}, removed {removed or 'none'}): a class change is a decision, not a "
                       "retraining; pass accept_class_change=true (--accept-class-change) to publish it as the "
                       "next version, or publish under a new model name")
        return False
    shared = [c for c in classes if c in old_classes]
    split_images = SplitImages.load(dataset_dir)
    test_hashes = split_images.by_split["test"]
    champion_seen = seen.of_version(opts.registry, opts.model_name, version)
    by_location = champion_answers(champ["uri"], dataset_dir)
    chosen = _Answers([], [], [], [], [])
    left_out = {"seen_by_champion": 0, "class_unknown_to_champion": 0}
    for r in predictions:
        sha = test_hashes[r["location"]]
        if champion_seen is not None and seen.key(sha) in champion_seen:
            left_out["seen_by_champion"] += 1
            continue
        if r["label"] not in shared:
            left_out["class_unknown_to_champion"] += 1
            continue
        for bucket, value in zip((chosen.locations, chosen.hashes, chosen.truth, chosen.challenger, chosen.champion),
                                 (r["location"], sha, r["label"], r["predicted"], by_location[r["location"]])):
            bucket.append(value)
    n = len(chosen.truth)
    result.compared = {"images": n, "test_images": len(predictions), "left_out": left_out,
                       "champion_seen_recorded": champion_seen is not None,
                       "images_sha256": hashlib.sha256("".join(sorted(chosen.hashes)).encode()).hexdigest()}
    result.rows = [{"location": loc, "sha256": sha, "label": t, "challenger": a, "champion": b}
                   for loc, sha, t, a, b in zip(chosen.locations, chosen.hashes, chosen.truth, chosen.challenger,
                                                chosen.champion)]
    if champion_seen is None:
        reasons.append(f"WARN: champion v{version} was published before imgclf recorded the images it learned "
                       "from: the comparison cannot leave them out, and may favour the champion")
    why_out = f"{left_out['seen_by_champion']} in champion v{version}'s training or validation split"
    if changed:
        why_out += f", {left_out['class_unknown_to_champion']} of classes it does not know"
    if n < opts.min_compared_images:
        reasons.append(f"FAIL: only {n} of {len(predictions)} test images were seen by neither model ({why_out}); "
                       f"a fair comparison needs at least {opts.min_compared_images} (min_compared_images): add "
                       "test images (more data or a larger test_fraction), or lower min_compared_images")
        return False
    comparison = _compare(opts.compare_metric, chosen, shared)
    on_compared = {who: {m: _interval_of(m, chosen.truth, answers, shared).as_dict() for m in METRICS}
                   for who, answers in (("challenger", chosen.challenger), ("champion", chosen.champion))}
    result.champion.update({m: on_compared["champion"][m]["value"] for m in METRICS})
    result.champion["compared_images"] = n
    result.intervals["compared"] = {**on_compared, "comparison": comparison.as_dict()}
    diff = comparison.difference
    where = f"on the same {n} test images seen by neither model ({why_out})"
    delta = (f"{comparison.challenger:.4f} vs champion v{version} {comparison.champion:.4f} {where}: "
             f"{diff.value:+.4f} (95 % CI {diff.low:+.4f} to {diff.high:+.4f}), one-sided p = "
             f"{comparison.p_value:.4f} ({comparison.test})")
    if changed:
        swapped = _Answers(chosen.locations, chosen.hashes, chosen.truth, chosen.champion, chosen.challenger)
        worse = comparison.challenger < comparison.champion and \
            _compare(opts.compare_metric, swapped, shared).p_value < opts.significance
        good = not worse
        reasons.append(f"{'PASS' if good else 'FAIL'}: class change accepted (accept_class_change); on the classes "
                       f"both know the challenger's {opts.compare_metric} is {delta}; "
                       + ("not significantly worse" if good else f"significantly worse at {opts.significance}"))
    elif opts.margin > 0:
        good = diff.value > 0 and diff.value >= opts.margin - 1e-12
        reasons.append(f"{'PASS' if good else 'FAIL'}: {opts.compare_metric} {delta}; must be better by at least "
                       f"{opts.margin:.4f} (margin)")
    else:
        good = diff.value > 0 and comparison.p_value < opts.significance
        reasons.append(f"{'PASS' if good else 'FAIL'}: {opts.compare_metric} {delta}; must be better at one-sided "
                       f"level {opts.significance} (significance)")
    return _recall_rule(reasons, chosen, shared, version, opts.max_class_recall_drop) and good


def _recall_rule(reasons: list[str], chosen: _Answers, classes: list[str], version: int, max_drop: float) -> bool:
    if max_drop >= 1:
        return True
    new, old = _recalls(chosen.truth, chosen.challenger, classes), _recalls(chosen.truth, chosen.champion, classes)
    dropped = []
    for c in classes:
        (r_new, n), (r_old, _) = new[c], old[c]
        if n and (r_old - r_new) / n > max_drop + 1e-12:
            dropped.append(f"{c} {r_old / n:.3f} -> {r_new / n:.3f} ({n} images)")
    if dropped:
        reasons.append(f"FAIL: recall dropped by more than {max_drop:.3f} against champion v{version} for "
                       + "; ".join(dropped) + " (max_class_recall_drop)")
        return False
    reasons.append(f"PASS: no class's recall dropped by more than {max_drop:.3f} against champion v{version}")
    return True


def _csv(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    w = tables.Writer(buf)
    w.writerow(["location", "sha256", "label", "challenger", "champion"])
    for r in rows:
        w.writerow([r["location"], r["sha256"], r["label"], r["challenger"], r["champion"]])
    return buf.getvalue()


CALIBRATION = ("ece", "ece_uncalibrated", "temperature")
"""evaluate's calibration metrics, carried into the gate's summary (and the version's record)."""


def _calibration_rule(reasons: list[str], calibration: dict[str, float], max_ece: float) -> bool:
    """max_ece: the served probabilities must be calibrated on the test split (Guo et al.'s 15-bin ECE)."""
    if "ece" not in calibration:
        reasons.append(f"FAIL: max_ece {max_ece:.4f} is required, but this evaluation has no expected calibration "
                       "error (evaluated before imgclf calibrated models); evaluate it again")
        return False
    ece = calibration["ece"]
    good = math.isfinite(ece) and ece <= max_ece
    reasons.append(f"{'PASS' if good else 'FAIL'}: expected calibration error {ece:.4f} (temperature "
                   f"{calibration.get('temperature', 1.0):.3f}; {calibration.get('ece_uncalibrated', ece):.4f} "
                   f"uncalibrated) {'<=' if good else '>'} allowed {max_ece:.4f}")
    return good


def _ci(d: dict | None) -> str:
    return "-" if not d else f"{d['value']:.4f} ({d['low']:.4f}-{d['high']:.4f})"


def markdown(result: GateResult, model_name: str) -> str:
    verdict = {"publish": "PASSED: the challenger will be published",
               "refuse": "REFUSED: the champion stays; nothing is published",
               "no-registry": "PASSED the thresholds; no registry to publish to"}[result.decision]
    own = result.intervals.get("challenger_test", {})
    compared = result.intervals.get("compared", {})
    from imgclf.components.lib.reports import markdown_text as md

    lines = [f"# Gate for {md(model_name)}: {verdict}", "",
             "## The challenger on its test split (95 % confidence intervals)", "",
             "| metric | challenger |", "|---|---|", *[f"| {m} | {_ci(own.get(m))} |" for m in METRICS]]
    if "ece" in result.challenger:
        c = result.challenger
        lines += ["", f"Calibration: expected calibration error {c['ece']:.4f} with temperature "
                      f"{c.get('temperature', 1.0):.3f} ({c.get('ece_uncalibrated', c['ece']):.4f} uncalibrated; 15 "
                      "confidence bins, test split)."]
    if compared:
        c = result.compared
        cmp = compared["comparison"]
        d = cmp["difference"]
        lines += ["", f"## Against champion v{result.champion['version']} on {c['images']} test images neither "
                      "model trained or validated on", "",
                  f"Left out of the {c['test_images']} test images: {c['left_out']['seen_by_champion']} in the "
                  f"champion's training or validation split, {c['left_out']['class_unknown_to_champion']} of a "
                  "class the champion does not know." + ("" if c["champion_seen_recorded"] else
                                                         " (The champion's images were not recorded.)"), "",
                  "| metric | challenger | champion (re-scored here) |", "|---|---|---|",
                  *[f"| {m} | {_ci(compared['challenger'].get(m))} | {_ci(compared['champion'].get(m))} |"
                    for m in METRICS], "",
                  f"Paired comparison on {cmp['metric']}: difference {d['value']:+.4f} (95 % CI {d['low']:+.4f} to "
                  f"{d['high']:+.4f}), one-sided p = {cmp['p_value']:.4f}: {cmp['test']}."]
    lines += ["", "## Reasons", "", *[f"- {md(r)}" for r in result.reasons], "",  # they quote class names
              "Thresholds: " + ", ".join(f"{k} {v}" for k, v in result.thresholds.items()), ""]
    return "\n".join(lines)


def skipped(reason: str, champion_version: int, note_md: str = "") -> str:
    """The `outcome` of a run that did not train (unchanged data and options); the Markdown note for the UI."""
    if note_md:
        storage.atomic_write_text(note_md, f"# Training skipped\n\n{reason}.\n\nChampion v{champion_version} "
                                           "stays in place.\n")
    return json.dumps({"decision": "skip", "reasons": [reason], "champion": {"version": champion_version}})
