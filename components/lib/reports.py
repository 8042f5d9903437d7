"""Pictures and self-contained HTML for the KFP UI: every image is inlined as a data URI, so the one
HTML artifact renders anywhere without a server or relative links."""
from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def fig_to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def learning_curves(history: dict[str, list[float]]):
    metrics = [m for m in ("loss", "accuracy") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        epochs = range(1, len(history[m]) + 1)
        ax.plot(epochs, history[m], "o-", label="train")
        if f"val_{m}" in history:
            ax.plot(epochs, history[f"val_{m}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(m)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_matrix(cm: np.ndarray, classes: list[str]):
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > peak / 2 else "black")
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]):
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def image_grid(pixels: list[np.ndarray], titles: list[str], cols: int = 6):
    rows = max(1, -(-len(pixels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, pixels, titles):
        ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
    return fig


def table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """`sections` are (heading, inner HTML); use `img(uri)` and `table(...)` to build them."""
    parts = "".join(f"<section><h2>{html.escape(h)}</h2>{body}</section>" for h, body in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child{{text-align:left}}img{{max-width:100%}}section{{margin-bottom:1.5em}}</style></head>
<body><h1>{html.escape(title)}</h1>{parts}</body></html>"""


def img(uri: str, alt: str = "") -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def sweep_trials(trials: list[dict], metric: str, winner: int):
    """A sweep at a glance: the metric of every trial (the winner in orange, failed ones as a cross at
    the bottom), then the metric against each swept option's values."""
    ok = [t for t in trials if t["status"] == "ok"]
    options = sorted({k for t in trials for k in t["options"]})
    fig, axes = plt.subplots(1, 1 + len(options), figsize=(4.5 * (1 + len(options)), 3.2), squeeze=False)
    ax = axes[0][0]
    ax.bar([t["index"] for t in ok], [t[metric] for t in ok],
           color=["tab:orange" if t["index"] == winner else "tab:blue" for t in ok])
    failed = [t["index"] for t in trials if t["status"] != "ok"]
    if failed:
        ax.plot(failed, [0] * len(failed), "rx", markersize=10, label="failed")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3, axis="y")
    for ax, name in zip(axes[0][1:], options):
        values = [str(t["options"].get(name, "")) for t in ok]
        levels = sorted(set(values), key=lambda v: (_as_number(v) is None, _as_number(v) or 0, v))
        xs = [levels.index(v) for v in values]
        ax.scatter(xs, [t[metric] for t in ok], c=["tab:orange" if t["index"] == winner else "tab:blue" for t in ok])
        ax.set_xticks(range(len(levels)), levels, rotation=30)
        ax.set_title(f"{metric} by {name}")
        ax.grid(alpha=0.3)
    return fig


def _as_number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def sweep_sections(trials: list[dict], metric: str, winner: int) -> list[tuple[str, str]]:
    """The report sections of a sweep: the winner's options, every trial, and the plot."""
    options = sorted({k for t in trials for k in t["options"]})
    best = next(t for t in trials if t["index"] == winner)
    rows = [[t["index"], *(t["options"].get(o, "") for o in options), t["status"],
             "" if t.get("val_accuracy") is None else float(t["val_accuracy"]),
             "" if t.get("val_loss") is None else float(t["val_loss"]), t.get("epochs_run", 0),
             t.get("error", "")] for t in trials]
    return [
        (f"Sweep winner: trial {winner} (best {metric} on the validation split)",
         table(["option", "value"], [[k, v] for k, v in sorted(best["options"].items())])),
        (f"Sweep trials ({len(trials)}; selected on validation {metric}, never on test images)",
         table(["trial", *options, "status", "val_accuracy", "val_loss", "epochs", "error"], rows)),
        ("Sweep plot", img(fig_to_data_uri(sweep_trials(trials, metric, winner)), "metric per trial and option")),
    ]
