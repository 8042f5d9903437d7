"""The ingest report: what went in, what was left out and why, and what the images look like."""
from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
from PIL import Image

from components import images, reports, storage

EXAMPLES_PER_REASON = 3
GRID_PER_CLASS = 6
GRID_CLASSES = 20


def _thumb(dataset_dir: str, location: str, size: int = 64) -> np.ndarray | None:
    from components.ingest import location_uri

    try:
        with Image.open(io.BytesIO(storage.read_bytes(location_uri(dataset_dir, location)))) as img:
            up = images.upright_rgb(img)
            up.thumbnail((size, size))
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(up, ((size - up.width) // 2, (size - up.height) // 2))
            return np.asarray(canvas)
    except (OSError, ValueError):
        return None


def _sizes_figure(rows: list[dict]):
    import matplotlib.pyplot as plt

    w = np.array([int(r["width"]) for r in rows])
    h = np.array([int(r["height"]) for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, v, name in ((axes[0], w, "width"), (axes[1], h, "height")):
        ax.hist(v, bins=min(40, max(1, len(np.unique(v)))), color="#4c72b0")
        ax.set_xlabel(f"{name} (pixels)")
        ax.set_ylabel("images")
    return fig


def write_report(path: str, summary, rows: list[dict], quarantined: list[dict], dataset_dir: str) -> None:
    by_reason = defaultdict(list)
    for q in quarantined:
        by_reason[q["reason"]].append(q)
    splits = sorted({r["split"] for r in rows if r["split"]}, key=lambda s: ("train", "validation", "test").index(s))
    counts = defaultdict(lambda: defaultdict(int))
    for r in rows:
        counts[r["label"]][r["split"]] += 1
    header = ["class", *(splits or ["images"]), *(["total"] if splits else [])]
    table_rows = [[c, *([counts[c][s] for s in splits] or [counts[c][""]]),
                   *([sum(counts[c].values())] if splits else [])] for c in summary.classes]
    sections = [
        ("Summary", reports.table(["", "value"], [
            ["source", summary.source], ["layout", summary.layout], ["usable images", summary.images],
            ["classes", len(summary.classes)], ["quarantined files", summary.quarantined],
            *[[f"note: {k}", v] for k, v in summary.notes.items()]])),
        ("Images per class" + (" and split" if splits else ""), reports.table(header, table_rows)),
    ]
    if by_reason:
        sections.append(("Quarantined files by reason", reports.table(
            ["reason", "files", "examples"],
            [[reason, len(items), "; ".join(f"{q['location']}" + (f" ({q['detail']})" if q["detail"] else "")
                                            for q in items[:EXAMPLES_PER_REASON])]
             for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))])))
    dups = [q for q in quarantined if q["reason"] in ("exact duplicate", "duplicate across splits", "label conflict")]
    if dups:
        sections.append(("Duplicates and label conflicts", reports.table(
            ["file", "label", "what", "detail"], [[q["location"], q["label"], q["reason"], q["detail"]]
                                                 for q in dups[:50]])))
    if rows:
        sections.append(("Image sizes", reports.img(reports.fig_to_data_uri(_sizes_figure(rows)))))
        picks, titles = [], []
        by_class = defaultdict(list)
        for r in rows:
            if len(by_class[r["label"]]) < GRID_PER_CLASS:
                by_class[r["label"]].append(r)
        for c in summary.classes[:GRID_CLASSES]:
            for r in by_class[c]:
                t = _thumb(dataset_dir, r["location"])
                if t is not None:
                    picks.append(t)
                    titles.append(c)
        if picks:
            sections.append((f"Samples per class (up to {GRID_PER_CLASS})", reports.img(reports.fig_to_data_uri(
                reports.image_grid(picks, titles, cols=GRID_PER_CLASS)))))
    storage.atomic_write_text(path, reports.page(f"Ingest: {summary.source}", sections))
