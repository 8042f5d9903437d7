"""Pictures and self-contained HTML for the KFP UI: every image is inlined as a data URI, so the one
HTML artifact renders anywhere without a server or relative links."""
from __future__ import annotations

import base64
import html
import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def fig_to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def learning_curves(history: dict[str, list[float]], best_epoch: int | None = None):
    """Loss, accuracy and the learning rate per epoch (integer ticks), the kept (best) epoch marked."""
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in ("loss", "accuracy", "learning_rate") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        epochs = range(1, len(history[m]) + 1)
        ax.plot(epochs, history[m], "o-", ms=3, label="train" if m != "learning_rate" else "learning rate")
        if f"val_{m}" in history:
            ax.plot(epochs, history[f"val_{m}"], "o-", ms=3, label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best epoch {best_epoch}")
        if m == "learning_rate" and min(history[m]) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(m.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrix(cm: np.ndarray, classes: list[str]):
    """Counts beside the row-normalised matrix (share of each true class), readable up to ~100 classes:
    the figure stops growing at 100 classes' worth, the font shrinks with the classes, and the cells
    are only written in while they still fit."""
    n = len(classes)
    side = min(1.2 + 0.55 * n, 16.0)
    cell_pt = side * 72 / max(n, 1)  # a row's height in points
    font, tick_font = min(9.0, 0.3 * cell_pt), min(9.0, 0.6 * cell_pt)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    # Side by side while small; one above the other when large, so a browser shows each at full width.
    stacked = n > 30
    fig, axes = plt.subplots(2 if stacked else 1, 1 if stacked else 2,
                             figsize=(side + 1.5, 2 * side + 1) if stacked else (2 * side + 1.5, side + 0.5))
    for ax, data, title, text in ((axes[0], cm, "counts", lambda v: f"{v:d}"),
                                  (axes[1], norm, "share of the true class", lambda v: f"{v:.2f}")):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_xticks(range(n), classes, rotation=90 if n > 12 else 45, ha="center" if n > 12 else "right",
                      fontsize=tick_font)
        ax.set_yticks(range(n), classes, fontsize=tick_font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if n <= 30:
            peak = data.max() if data.size else 0
            for i in range(n):
                for j in range(n):
                    if data[i, j]:
                        ax.text(j, i, text(data[i, j]), ha="center", va="center", fontsize=font,
                                color="white" if data[i, j] > peak / 2 else "black")
    fig.tight_layout()
    return fig


def top_confusions(cm: np.ndarray, classes: list[str], limit: int = 15) -> str:
    """The largest off-diagonal cells as a table: at 100 classes the matrix shows where, this says what."""
    rows = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    if not cells:
        return "<p>No confusions: every test image was classified correctly.</p>"
    return "<h3>Top confusions</h3>" + table(["true class", "predicted as", "images", "share of the true class"], [
        [classes[i], classes[j], n, f"{n / rows[i]:.1%}"] for n, i, j in cells[:limit]])


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


def image_grid(pixels: list[np.ndarray], titles: list[str], cols: int | None = None,
               overlays: list[np.ndarray] | None = None, tile: int = 112) -> str:
    """Tiles with titles (6 or, past 36 tiles, 10 a row unless `cols` says) as one PNG data URI;
    `overlays` (heat maps in [0, 1], any resolution) are blended over their images in the jet colours.

    Drawn with PIL on one canvas: a matplotlib axes per tile cost seconds per grid under cProfile (ticks and
    text extents laid out for axes that show none), on every ingest and evaluate.
    """
    from PIL import Image, ImageDraw, ImageFont

    cols = cols or (6 if len(pixels) <= 36 else 10)
    rows = max(1, -(-len(pixels) // cols))
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow without FreeType: its small bitmap font
        font = ImageFont.load_default()
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    pad, line_h = 6, 13
    cell_w, cell_h = tile + 2 * pad, tile + 2 * pad + lines * line_h
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    jet = plt.get_cmap("jet")
    for k, (img, title) in enumerate(zip(pixels, titles)):
        arr = np.asarray(img, dtype=np.uint8)
        im = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr).convert("RGB")
        scale = tile / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        # Small images grow in blocks, as matplotlib's imshow shows them; large ones shrink smoothly.
        im = im.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
        if overlays is not None:
            heat = Image.fromarray(np.clip(np.asarray(overlays[k], dtype=np.float32) * 255, 0, 255).astype(np.uint8))
            heat = np.asarray(heat.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255
            colour = jet(heat)[..., :3] * 255
            im = Image.fromarray((np.asarray(im, dtype=np.float32) * 0.55 + colour * 0.45).round().astype(np.uint8))
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        for n, line in enumerate(title.split("\n")):
            while line and draw.textlength(line, font=font) > cell_w - 4:
                line = line[:-2] + "…"
            width = draw.textlength(line, font=font)
            draw.text((x + (cell_w - width) / 2, y + pad + n * line_h), line, fill="black", font=font)
        sheet.paste(im, (x + (cell_w - size[0]) // 2, y + pad + lines * line_h + (tile - size[1]) // 2))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def number(v) -> str:
    """A float at a precision a person reads: 4 decimals from 0 to 1 (scores), fewer as it grows, 3
    significant digits when tiny (learning rates), no decimals for whole numbers above 1."""
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if not np.isfinite(v):
        return str(v)
    a = abs(v)
    if 0.001 <= a <= 1 or a == 0:
        return f"{v:.4f}"
    if a < 0.001:
        return f"{v:.3g}"
    if v == int(v) and a < 1e15:
        return f"{int(v):,}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def escape(text: str) -> str:
    return html.escape(text)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
"""What formats or breaks inline Markdown (a table cell, a list item); line-start marks cannot occur inline."""


def markdown_text(text) -> str:
    """`text` shown as itself in Markdown: class names and folder names are the user's, and one named
    `<img src=x onerror=...>`, `**bold**` or `a|b` must neither run, format nor break a table. HTML's
    specials become entities, Markdown's are backslash-escaped, line breaks become spaces."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(" ".join(str(text).split("\n")), quote=False))


def versions() -> dict[str, str]:
    """Python and the libraries whose versions change results, as installed."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for pkg in ("tensorflow", "tensorflow-cpu", "keras", "jax", "numpy", "scikit-learn", "pillow", "kfp"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found


def run_context(info, meta, seconds: float) -> str:
    """What was run on what: the data, its fingerprint, the training parameters, libraries, run time."""
    import datetime
    import os

    r = info.result
    facts = [["data source", meta.source or "(not recorded)"],
             ["data fingerprint", meta.data_fingerprint[:16]],
             ["classes", len(meta.classes)],
             ["images (train / validation / test)",
              " / ".join(f"{meta.count(s):,}" for s in ("train", "validation", "test") if s in meta.splits)],
             ["input", f"{meta.input.image_size}x{meta.input.image_size}x{meta.input.channels}"],
             ["training", f"{r.get('epochs_run')} epochs in {number(float(r.get('seconds', 0)))} s, best epoch "
                          f"{r.get('best_epoch')}; {info.hardware.get('backend')} on "
                          f"{', '.join(info.hardware.get('devices', []))}"],
             ["evaluated", f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} in "
                           f"{number(float(seconds))} s (Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')})"],
             ["libraries", ", ".join(f"{k} {v}" for k, v in versions().items())]]
    params = [[k, v if not isinstance(v, dict) else ", ".join(f"{a}={b}" for a, b in v.items())]
              for k, v in sorted(info.params.items())]
    return (table(None, facts) + "<details><summary>training parameters</summary>"
            + table(["parameter", "value"], params) + "</details>")


def table(header: list[str] | None, rows: list[list]) -> str:
    """A table of numbers (right-aligned, `number` precision); header None: a left-aligned list of facts."""
    def cell(v):
        return number(v) if isinstance(v, float) else html.escape(str(v))
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    if header is None:
        return f'<table class="facts"><tbody>{body}</tbody></table>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """`sections` are (heading, inner HTML); use `img(uri)` and `table(...)` to build them."""
    parts = "".join(f"<section><h2>{html.escape(h)}</h2>{body}</section>" for h, body in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child{{text-align:left}}
table.facts td{{text-align:left}}table.facts td:first-child{{color:#555}}
img{{max-width:100%}}section{{margin-bottom:1.5em}}</style></head>
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
