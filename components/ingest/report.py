"""The ingest report: what went in, what was left out and why, and what the images look like."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from imgclf.components.lib import images, reports, storage
from imgclf.components.lib.litter import describe_ignored

EXAMPLES_PER_REASON = 3
GRID_PER_CLASS = 6
GRID_CLASSES = 20


def _thumb(dataset_dir: str, location: str, size: int = 64) -> np.ndarray | None:
    from imgclf.components.contracts import location_uri

    try:
        with Image.open(io.BytesIO(storage.read_bytes(location_uri(dataset_dir, location)))) as img:
            up = ImageOps.contain(images.upright_rgb(img), (size, size))  # small images scale up too
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(up, ((size - up.width) // 2, (size - up.height) // 2))
            return np.asarray(canvas)
    except (OSError, ValueError):
        return None


def _sizes_figure(widths: list[int], heights: list[int]):
    """Widths and heights: one bar per size while there are few sizes (one size is one labelled bar, not
    a histogram over fractional ticks), a histogram of whole pixels otherwise."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, v, name in ((axes[0], np.asarray(widths), "width"), (axes[1], np.asarray(heights), "height")):
        sizes, counts = np.unique(v, return_counts=True)
        if len(sizes) <= 12:
            ax.bar([str(x) for x in sizes], counts, color="#4c72b0")
        else:
            ax.hist(v, bins=min(40, len(sizes)), color="#4c72b0")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{name} (pixels)")
        ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def relative(location: str, source: str) -> str:
    """A location as the user knows it: relative to the source they gave, when it lies inside it."""
    base = source.rstrip("/") + "/"
    return location[len(base):] if source and location.startswith(base) else location


def write_report(path: str, summary, by_class_split, examples: dict[str, list[dict]], duplicates: list[dict],
                 samples: dict[str, list[str]], widths: list[int], heights: list[int], dataset_dir: str) -> None:
    """`by_class_split`: image counts keyed by (class, split); `examples`: a few quarantine entries per
    reason; `samples`: a few locations per class."""
    splits = [s for s in ("train", "validation", "test") if any(k[1] == s for k in by_class_split)]
    header = ["class", *(splits or ["images"]), *(["total"] if splits else [])]
    table_rows = [[c, *([by_class_split[(c, s)] for s in splits] or [by_class_split[(c, "")]]),
                   *([sum(by_class_split[(c, s)] for s in splits)] if splits else [])] for c in summary.classes]
    sections = [
        ("Summary", reports.table(None, [
            ["data", summary.data], ["layout", summary.layout], ["usable images", summary.images],
            ["classes", len(summary.classes)],
            *[[f"images in {split}", n] for split, n in summary.per_split.items()],
            ["quarantined files", summary.quarantined],
            # Their own line: litter is neither data nor a problem with the data (lib/litter.py).
            ["ignored files (OS and notebook litter, not data)", describe_ignored(summary.ignored_kinds)],
            *[[f"note: {k}", v] for k, v in summary.notes.items()]])),
        ("Images per class" + (" and split" if splits else ""), reports.table(header, table_rows)),
    ]
    if summary.quarantine_reasons:
        sections.append(("Quarantined files by reason", reports.table(
            ["reason", "files", "examples"],
            [[reason, n, "; ".join(relative(q["location"], summary.data) + (f" ({q['detail']})" if q["detail"] else "")
                                   for q in examples[reason][:EXAMPLES_PER_REASON])]
             for reason, n in summary.quarantine_reasons.items()])))
    if duplicates:
        sections.append(("Duplicates and label conflicts", reports.table(
            ["file", "label", "what", "detail"], [[relative(q["location"], summary.data), q["label"], q["reason"],
                                                  q["detail"]]
                                                 for q in duplicates])))
    if widths:
        sections.append(("Image sizes", reports.img(reports.fig_to_data_uri(_sizes_figure(widths, heights)),
                                                    "image sizes")))
        picks, titles = [], []
        for c in summary.classes[:GRID_CLASSES]:
            for location in samples.get(c, [])[:GRID_PER_CLASS]:
                t = _thumb(dataset_dir, location)
                if t is not None:
                    picks.append(t)
                    titles.append(c)
        if picks:
            sections.append((f"Samples per class (up to {GRID_PER_CLASS})",
                             reports.img(reports.image_grid(picks, titles, cols=GRID_PER_CLASS), "samples per class")))
    storage.atomic_write_text(path, reports.page(f"Ingest: {summary.data}", sections))
