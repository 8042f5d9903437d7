"""Evaluate: calibrate the trained model on the validation split, score it on the held-out test split, write
predictions, metrics and a report.

Calibration is fitted here rather than in train because this step already loads the finished model and
reads the records, and the temperature must be known before the test predictions are written: the
probabilities in predictions.csv are the calibrated ones, which export's SavedModel serves and its parity
check compares with. Train stays a pure fit, and a model from a sweep or a warm start is calibrated the
same way. Temperature scaling and the 15-bin ECE follow Guo et al. (2017): components/lib/calibration.py.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from imgclf.components.contracts import (
    PREDICTIONS_FILE,
    Evaluation,
    RecordsMetadata,
    SweepResult,
    TrainedModel,
    load_history,
)
from imgclf.components.evaluate.options import EvaluateOptions
from imgclf.components.lib import calibration, records, reports, stats, storage, tables
from imgclf.components.lib.options import takes

MAX_GRID = 24
# Grad-CAM: the most confident errors, and the most confident right answers of the weakest classes.
CAM_WRONG, CAM_RIGHT_PER_CLASS, CAM_CLASSES = 12, 2, 10


class Examples:
    """The test images a reviewer should see, kept while predictions stream: per true class its most
    confident errors and its most confident right answers. Bounded by classes x k, not by the test split."""

    def __init__(self, num_classes: int):
        self.wrong_k = max(1, -(-MAX_GRID // num_classes), CAM_WRONG // num_classes)
        self.wrong = [[] for _ in range(num_classes)]
        self.right = [[] for _ in range(num_classes)]
        self.seen = 0

    def add(self, pixels: np.ndarray, true: int, probs: np.ndarray, location: str = "") -> None:
        pred = int(probs.argmax())
        keep, k = (self.right[true], CAM_RIGHT_PER_CLASS) if pred == true else (self.wrong[true], self.wrong_k)
        item = (float(probs[pred]), self.seen, pixels, true, pred, location)
        self.seen += 1
        if len(keep) < k:
            heapq.heappush(keep, item)
        elif item[0] > keep[0][0]:
            heapq.heapreplace(keep, item)

    def worst_errors(self) -> list[tuple]:
        """Every class's most confident errors, most confident first."""
        return sorted((e for per_class in self.wrong for e in per_class), key=lambda e: (-e[0], e[1]))

    def right_of(self, classes: list[int]) -> list[tuple]:
        return [e for c in classes for e in sorted(self.right[c], key=lambda e: (-e[0], e[1]))]


def _interval_text(ci: dict | None) -> str:
    return "" if not ci else f"{ci['low']:.4f} - {ci['high']:.4f}"


TILE_PATH_CHARS = 20
"""What fits under a 112-pixel tile in the report's font; the table below a grid has the whole path."""


def short_path(location: str, width: int = TILE_PATH_CHARS) -> str:
    """The end of a file's location, where the class folder and the file name are: `.../cat/img_0042.png`."""
    if len(location) <= width:
        return location
    return "..." + location[-(width - 3):]


def _tile_title(classes: list[str], e: tuple, number: int | None = None) -> str:
    prob, _, _, true, pred, location = e
    head = f"true {classes[true]}\npred {classes[pred]} {prob:.2f}" if true != pred else f"{classes[true]} {prob:.2f}"
    return head if number is None else f"#{number} {head}\n{short_path(location)}"


def _paths_table(classes: list[str], picked: list[tuple]) -> str:
    """The grid's files by number with their whole location (the manifest's, as the data was given), so a
    wrong label can be found and fixed."""
    return reports.table(["#", "file", "label", "predicted", "probability"],
                         [[i + 1, e[5], classes[e[3]], classes[e[4]], e[0]] for i, e in enumerate(picked)])


@dataclass
class EvalResult(Evaluation):
    """What metrics.json holds, plus the ROC curve for KFP's widget."""
    # Binary problems only: (fpr, tpr, thresholds) of the positive class, for KFP's ROC widget.
    roc: tuple[list[float], list[float], list[float]] | None = None


def _roc(y: np.ndarray, probs: np.ndarray, classes: list[str]):
    from sklearn.metrics import roc_auc_score, roc_curve

    present = np.unique(y)
    if len(present) < 2:
        return None, {}, None
    if len(classes) == 2:
        fpr, tpr, thr = roc_curve(y, probs[:, 1])
        auc = float(roc_auc_score(y, probs[:, 1]))
        # sklearn's first threshold is +inf, which JSON and KFP cannot carry.
        thr = np.minimum(thr, 1.0)
        return auc, {classes[1]: (fpr, tpr, auc)}, (fpr.tolist(), tpr.tolist(), thr.tolist())
    curves = {}
    for k in present:
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        curves[classes[k]] = (fpr, tpr, float(roc_auc_score(y == k, probs[:, k])))
    auc = float(roc_auc_score(y, probs[:, present], multi_class="ovr", average="macro", labels=present)) \
        if len(present) == len(classes) else float(np.mean([c[2] for c in curves.values()]))
    return auc, curves, None


def _validation_probs(model, dataset_dir: str, meta: RecordsMetadata, batch_size: int):
    """The model's (uncalibrated) probabilities and the labels of every validation image."""
    if meta.splits.get("validation") is None or meta.count("validation") == 0:
        return np.zeros((0, len(meta.classes))), np.zeros(0, dtype=int)
    ys, probs = [], []
    for pixels, labels in records.make_dataset(dataset_dir, meta, "validation", batch_size):
        probs.append(np.asarray(model.predict_on_batch(pixels), dtype=np.float64))
        ys.append(labels.numpy())
    return np.concatenate(probs), np.concatenate(ys)


@dataclass
class Calibrated:
    """What calibration found: on validation the temperature and the abstention threshold; on test the
    reliability before and after, and what abstaining gives."""
    temperature: float
    validation_images: int
    before: calibration.Reliability
    after: calibration.Reliability
    abstain_precision: float = 0.0
    abstain_threshold: float = 0.0
    validation_precision: float = float("nan")
    validation_coverage: float = 1.0
    test_precision: float = float("nan")
    test_coverage: float = 1.0

    def metrics(self) -> dict[str, float]:
        out = {"temperature": self.temperature, "ece_uncalibrated": self.before.ece, "ece": self.after.ece}
        if self.abstain_precision > 0:
            out |= {"abstain_threshold": self.abstain_threshold, "abstain_test_coverage": self.test_coverage}
            if self.test_precision == self.test_precision:  # NaN when every test answer abstained
                out["abstain_test_precision"] = self.test_precision
        return out


@takes(EvaluateOptions)
def evaluate(dataset_dir: str, model_dir: str, predictions_dir: str, opts: EvaluateOptions, *,
             report_html: str = "", batch_size: int = 64) -> EvalResult:
    """Fit the temperature (and the abstention threshold) on validation; predict every test image with
    calibrated probabilities; write `predictions.csv` + `metrics.json`, and the HTML report."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from imgclf.components.lib.layers import load_model  # Keras: only when the step runs

    meta = RecordsMetadata.load(dataset_dir)
    info = TrainedModel.load(model_dir)
    classes = meta.classes
    if info.input != meta.input:
        raise ValueError(f"{model_dir} was trained on {info.input}, but {dataset_dir} holds {meta.input}")
    if meta.count("test") == 0:
        raise ValueError(f"{dataset_dir}: the test split is empty; set test_fraction > 0 or add test/")
    started = time.time()
    model = load_model(model_dir)
    val_p, val_y = _validation_probs(model, dataset_dir, meta, batch_size)
    if not np.isfinite(val_p).all():
        raise ValueError(f"{model_dir}: the model answers non-finite probabilities on the validation split; it "
                         "diverged and is not evaluated")
    temperature = calibration.fit_temperature(val_p, val_y)
    ys, raw, probs, locations, examples = [], [], [], [], Examples(len(classes))
    for pixels, labels, locs, _ in records.make_dataset(dataset_dir, meta, "test", batch_size, with_extras=True):
        r = np.asarray(model.predict_on_batch(pixels), dtype=np.float64)
        p = calibration.scale(r, temperature) if np.isfinite(r).all() else r
        y = labels.numpy()
        x = pixels.numpy()
        where = [loc.decode("utf-8") for loc in locs.numpy()]
        for j in range(len(y)):
            examples.add(x[j], int(y[j]), p[j], where[j])
        ys.append(y)
        raw.append(r)
        probs.append(p)
        locations.extend(where)
    y, p, raw_p = np.concatenate(ys), np.concatenate(probs), np.concatenate(raw)
    if not np.isfinite(p).all():
        raise ValueError(f"{model_dir}: the model answers non-finite probabilities for "
                         f"{int((~np.isfinite(p)).any(1).sum())} of {len(p)} test images; it diverged and is not "
                         "evaluated")
    pred = p.argmax(1)
    labels_idx = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels_idx, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels_idx)
    auc, curves, roc = _roc(y, p, classes)
    metrics = {"accuracy": float(accuracy_score(y, pred)), "macro_precision": float(prec.mean()),
               "macro_recall": float(rec.mean()), "macro_f1": float(f1.mean()), "test_images": int(len(y))}
    if auc is not None:
        metrics["roc_auc"] = auc
    cal = _calibration(temperature, val_p, val_y, raw_p, p, y, opts.abstain_precision)
    metrics |= cal.metrics()
    per_class = [{"class": c, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                  "support": int(support[i])} for i, c in enumerate(classes)]
    intervals = {"accuracy": stats.wilson(int((pred == y).sum()), len(y)).as_dict(),
                 "macro_f1": stats.bootstrap_macro_f1(y, pred, len(classes)).as_dict()}

    with storage.atomic_dir(predictions_dir) as out:
        with open(out / PREDICTIONS_FILE, "w", newline="", encoding="utf-8") as f:
            w = tables.Writer(f)
            w.writerow(["location", "label", "predicted", "probability", *[f"p_{c}" for c in classes]])
            for loc, t, k, row in zip(locations, y, pred, p):
                w.writerow([loc, classes[t], classes[k], f"{row[k]:.6f}", *[f"{v:.6f}" for v in row]])
        Evaluation(classes, metrics, per_class, cm.tolist(), intervals).save(out)
    result = EvalResult(classes, metrics, per_class, cm.tolist(), intervals, roc)
    if report_html:
        write_report(report_html, model, meta, info, model_dir, metrics, per_class, cm, curves, examples,
                     time.time() - started, intervals, cal)
    ci = intervals["accuracy"]
    print(f"evaluate: accuracy {metrics['accuracy']:.4f} (95 % CI {ci['low']:.4f}-{ci['high']:.4f}), "
          f"macro F1 {metrics['macro_f1']:.4f}"
          + (f", ROC AUC {auc:.4f}" if auc is not None else "") + f" on {len(y)} test images; temperature "
          f"{temperature:.3f} (fitted on {len(val_y)} validation images), ECE {cal.before.ece:.4f} -> "
          f"{cal.after.ece:.4f}" + (f"; abstaining below {cal.abstain_threshold:.4f} keeps "
                                     f"{cal.test_coverage:.1%} of test answers" if opts.abstain_precision else ""),
          flush=True)
    return result


def _calibration(temperature: float, val_p: np.ndarray, val_y: np.ndarray, raw_p: np.ndarray, p: np.ndarray,
                 y: np.ndarray, abstain_precision: float) -> Calibrated:
    cal = Calibrated(temperature, len(val_y), calibration.reliability(raw_p, y), calibration.reliability(p, y),
                     abstain_precision)
    if abstain_precision > 0:
        # Chosen on the calibrated validation answers: the threshold applies to what is served.
        val_cal = calibration.scale(val_p, temperature) if len(val_y) else val_p
        cal.abstain_threshold = calibration.abstain_threshold(val_cal, val_y, abstain_precision)
        cal.validation_precision, cal.validation_coverage = calibration.precision_coverage(
            val_cal, val_y, cal.abstain_threshold)
        cal.test_precision, cal.test_coverage = calibration.precision_coverage(p, y, cal.abstain_threshold)
    return cal


def reliability_figure(before: calibration.Reliability, after: calibration.Reliability, temperature: float):
    """Guo et al.'s reliability diagram, before and after temperature scaling: accuracy per confidence bin
    against the diagonal of perfect calibration, and how many test images each bin holds."""
    import matplotlib.pyplot as plt

    bins = len(before.counts)
    edges = np.linspace(0, 1, bins + 1)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for col, (title, rel) in enumerate((("uncalibrated", before), (f"temperature {temperature:.3f}", after))):
        ax, count_ax = axes[0, col], axes[1, col]
        filled = rel.counts > 0
        ax.bar(edges[:-1][filled], rel.accuracy[filled], width=1 / bins, align="edge", color="tab:blue",
               edgecolor="black", label="accuracy")
        ax.bar(edges[:-1][filled], (rel.confidence - rel.accuracy)[filled], bottom=rel.accuracy[filled],
               width=1 / bins, align="edge", color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(title=f"{title}: ECE {rel.ece:.4f}", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
        count_ax.bar(edges[:-1], rel.counts, width=1 / bins, align="edge", color="grey", edgecolor="black")
        count_ax.set(xlabel="top-1 confidence", ylabel="images")
    fig.tight_layout()
    return fig


def _calibration_section(cal: Calibrated) -> str:
    text = (f"<p>Temperature T = {cal.temperature:.4f}, fitted on the {cal.validation_images} validation images "
            "by minimising the negative log-likelihood of softmax(log p / T) (Guo et al., 2017); "
            + ("T &gt; 1 softens over-confident answers, T &lt; 1 sharpens timid ones. "
               if cal.validation_images else "no validation images, so no calibration (T = 1). ")
            + "The top-1 class never changes. Expected calibration error on the test split (15 equal-width "
            f"confidence bins): {cal.before.ece:.4f} before, {cal.after.ece:.4f} after. The exported model serves "
            "the calibrated probabilities, as predictions.csv holds them.</p>")
    text += reports.img(reports.fig_to_data_uri(reliability_figure(cal.before, cal.after, cal.temperature)),
                        "reliability diagram before and after temperature scaling")
    if cal.abstain_precision > 0:
        def pct(v: float) -> str:
            return "-" if v != v else f"{v:.1%}"
        text += (f"<h3>Abstaining</h3><p>Answers with a calibrated top probability below "
                 f"{cal.abstain_threshold:.4f} are marked <code>uncertain</code> by predict: the lowest threshold "
                 f"whose answers kept on validation are right at least {cal.abstain_precision:.1%} of the time "
                 "(abstain_precision).</p>"
                 + reports.table(["split", "precision of the answers kept", "coverage (answers kept)"],
                                 [["validation (chosen on)", pct(cal.validation_precision), pct(cal.validation_coverage)],
                                  ["test", pct(cal.test_precision), pct(cal.test_coverage)]]))
    return text


def write_report(path: str, model, meta: RecordsMetadata, info: TrainedModel, model_dir: str, metrics: dict,
                 per_class: list[dict], cm: np.ndarray, curves: dict, examples: Examples, seconds: float,
                 intervals: dict, cal: Calibrated) -> None:
    """One self-contained page: what was run on what, the scores, where it fails, and what it looked at."""
    classes = meta.classes
    history = load_history(model_dir)
    weakest = sorted(per_class, key=lambda r: (r["f1"], r["class"]))
    sections = [
        ("Run", reports.run_context(info, meta, seconds)),
        ("Summary", reports.table(["metric", "value", "95 % confidence interval"],
                                  [[k, v, _interval_text(intervals.get(k))] for k, v in metrics.items()])
         + "<p>Intervals: Wilson's score interval for accuracy, a percentile bootstrap over the test images "
           "for macro F1. Two models' intervals overlapping does not mean they are equally good: the gate "
           "compares them image by image with a paired test.</p>"),
        ("Per class (weakest F1 first)", reports.table(
            ["class", "precision", "recall", "F1", "support"],
            [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in weakest])),
        ("Confusion matrix", reports.img(reports.fig_to_data_uri(reports.confusion_matrix(cm, classes)),
                                         "confusion matrix: counts and row-normalised")
         + reports.top_confusions(cm, classes)),
    ]
    sections.append(("Calibration", _calibration_section(cal)))
    if curves:
        sections.append(("ROC" + (" (one-vs-rest)" if len(classes) > 2 else ""),
                         reports.img(reports.fig_to_data_uri(reports.roc_curves(curves)), "ROC curves")))
    sections.append(("Learning curves", reports.img(reports.fig_to_data_uri(
        reports.learning_curves(history, info.result.get("best_epoch"))), "learning curves")))
    sweep = SweepResult.load(model_dir)
    if sweep is not None:  # the model won a sweep: how it was chosen (on validation scores)
        sections += reports.sweep_sections(sweep.trials, sweep.metric, sweep.winner)
    errors = examples.worst_errors()
    if errors:
        sections.append((f"Misclassified: each class's most confident errors ({len(errors)}, most confident first)",
                         reports.img(reports.image_grid([e[2] for e in errors],
                                                        [_tile_title(classes, e, i + 1) for i, e in enumerate(errors)]),
                                     "most confident errors") + _paths_table(classes, errors)))
    sections.append(("What the network looked at (Grad-CAM)", _gradcam_section(model, classes, errors, examples,
                                                                                 weakest)))
    storage.atomic_write_text(path, reports.page(
        f"Evaluation: {info.architecture} on {metrics['test_images']} test images", sections))


def _gradcam_section(model, classes: list[str], errors: list[tuple], examples: Examples, weakest: list[dict]) -> str:
    from imgclf.components.evaluate import gradcam

    weak = [classes.index(r["class"]) for r in weakest[:CAM_CLASSES]]
    chosen = errors[:CAM_WRONG] + examples.right_of(weak)
    if not chosen:
        return "<p>No test images to explain.</p>"
    try:
        maps, _, layer = gradcam.heatmaps(model, np.stack([e[2] for e in chosen]),
                                          np.array([e[4] for e in chosen]))
    except (NotImplementedError, ValueError) as e:
        return f"<p>No Grad-CAM for this model: {reports.escape(str(e))}</p>"
    n_wrong = min(len(errors), CAM_WRONG)
    parts = [f"<p>Heat maps of layer <code>{reports.escape(layer)}</code> (the last convolutional block, "
             f"{maps.shape[1]}x{maps.shape[2]}) for the predicted class: red is where the evidence for it was.</p>"]
    for title, sl in ((f"Most confident errors ({n_wrong})", slice(0, n_wrong)),
                      (f"Right answers, weakest classes first ({len(chosen) - n_wrong})", slice(n_wrong, None))):
        picked = chosen[sl]
        if picked:
            parts.append(f"<h3>{title}</h3>" + reports.img(reports.image_grid(
                [e[2] for e in picked], [_tile_title(classes, e, i + 1) for i, e in enumerate(picked)],
                overlays=list(maps[sl])), title) + _paths_table(classes, picked))
    return "".join(parts)
