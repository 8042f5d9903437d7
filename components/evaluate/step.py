"""Evaluate: score the trained model on the held-out test split, write predictions, metrics and a report."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.contracts import PREDICTIONS_FILE, Evaluation, RecordsMetadata, SweepResult, TrainedModel, load_history
from components.lib import records, reports, storage, tables

MAX_GRID = 24


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


def evaluate(dataset_dir: str, model_dir: str, predictions_dir: str, report_html: str = "",
             batch_size: int = 64) -> EvalResult:
    """Predict every test image; write `predictions.csv` + `metrics.json`, and the HTML report."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from components.lib.layers import load_model  # Keras: only when the step runs

    meta = RecordsMetadata.load(dataset_dir)
    info = TrainedModel.load(model_dir)
    classes = meta.classes
    if info.input != meta.input:
        raise ValueError(f"{model_dir} was trained on {info.input}, but {dataset_dir} holds {meta.input}")
    if meta.count("test") == 0:
        raise ValueError(f"{dataset_dir}: the test split is empty; set test_fraction > 0 or add test/")
    model = load_model(model_dir)
    ys, probs, locations, wrong = [], [], [], []
    for pixels, labels, locs, _ in records.make_dataset(dataset_dir, meta, "test", batch_size, with_extras=True):
        p = np.asarray(model.predict_on_batch(pixels))
        y = labels.numpy()
        for j in np.flatnonzero(p.argmax(1) != y):
            if len(wrong) < MAX_GRID:
                wrong.append((pixels[j].numpy(), f"true {classes[y[j]]}\npred {classes[p[j].argmax()]}"))
        ys.append(y)
        probs.append(p)
        locations.extend(loc.decode("utf-8") for loc in locs.numpy())
    y, p = np.concatenate(ys), np.concatenate(probs).astype(np.float64)
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
    per_class = [{"class": c, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                  "support": int(support[i])} for i, c in enumerate(classes)]

    with storage.atomic_dir(predictions_dir) as out:
        with open(out / PREDICTIONS_FILE, "w", newline="", encoding="utf-8") as f:
            w = tables.Writer(f)
            w.writerow(["location", "label", "predicted", "probability", *[f"p_{c}" for c in classes]])
            for loc, t, k, row in zip(locations, y, pred, p):
                w.writerow([loc, classes[t], classes[k], f"{row[k]:.6f}", *[f"{v:.6f}" for v in row]])
        Evaluation(classes, metrics, per_class, cm.tolist()).save(out)
    result = EvalResult(classes, metrics, per_class, cm.tolist(), roc)
    if report_html:
        sections = [
            ("Summary", reports.table(["metric", "value"], [[k, v] for k, v in metrics.items()])),
            ("Confusion matrix", reports.img(reports.fig_to_data_uri(reports.confusion_matrix(cm, classes)))),
            ("Per class", reports.table(["class", "precision", "recall", "F1", "support"],
                                        [list(r.values()) for r in per_class])),
        ]
        if curves:
            sections.append(("ROC" + (" (one-vs-rest)" if len(classes) > 2 else ""),
                             reports.img(reports.fig_to_data_uri(reports.roc_curves(curves)))))
        sections.append(("Learning curves",
                         reports.img(reports.fig_to_data_uri(reports.learning_curves(load_history(model_dir))))))
        sweep = SweepResult.load(model_dir)
        if sweep is not None:  # the model won a sweep: how it was chosen (on validation scores)
            sections += reports.sweep_sections(sweep.trials, sweep.metric, sweep.winner)
        if wrong:
            sections.append((f"Misclassified examples (first {len(wrong)})", reports.img(reports.fig_to_data_uri(
                reports.image_grid([w[0] for w in wrong], [w[1] for w in wrong])))))
        storage.atomic_write_text(report_html, reports.page(
            f"Evaluation: {info.architecture} on {len(y)} test images", sections))
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}"
          + (f", ROC AUC {auc:.4f}" if auc is not None else "") + f" on {len(y)} test images", flush=True)
    return result
