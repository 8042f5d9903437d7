"""The relabel round trip: a user's `relabel.csv` (`location,label` or `location,drop`), applied to the
items ingest lists before any file is checked. The source is never touched; each change is recorded in
`relabels.csv` beside the manifest, and the manifest's labels (which preprocess's data fingerprint
hashes) carry it, so a changed label or a dropped file changes the data a model is known to have
learned from.
"""
from __future__ import annotations

import csv
import io
from dataclasses import replace

from imgclf.components.contracts import DatasetError
from imgclf.components.lib import storage, tables

DROP = "drop"
RELABELS = "relabels.csv"
RELABEL_FIELDS = ["location", "given", "now"]
"""`now` is the new label, or "drop" for a file left out."""


def read_relabel(uri: str) -> dict[str, str]:
    """location -> new label or "drop", from a CSV with a `location,label` header (the header may be
    left out). A location listed twice with two answers is refused: which one the user meant is unknown."""
    try:
        text = storage.read_text(uri)
    except Exception as e:  # noqa: BLE001 - any reason it cannot be read is the user's to fix
        raise DatasetError(f"relabel file {uri}: cannot be read: {e}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["location", "label"]:
        rows = rows[1:]
    out: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"relabel file {uri}: row {n} {row!r}: expected location,label (or location,drop)")
        location, label = tables.unescape(row[0].strip()), row[1].strip()
        if out.get(location, label) != label:
            raise DatasetError(f"relabel file {uri}: {location} is listed twice ({out[location]} and {label})")
        out[location] = label
    return out


def apply_relabel(items: list, changes: dict[str, str], uri: str, label_problem) -> tuple[list, list[dict]]:
    """(the items with the changes applied, the changes as relabels.csv rows). A location that is not in
    the source is an error naming it: a typo must not be ignored silently. `label_problem` checks a new
    label as ingest checks a folder's name."""
    known = {item.location for item in items}
    unknown = [loc for loc in changes if loc not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DatasetError(f"relabel file {uri}: {len(unknown)} location(s) not in the source: {shown} (use the "
                           "location column of manifest.csv or suspects.csv, exactly as written there)")
    for loc, label in changes.items():
        problem = "" if label == DROP else label_problem(label)
        if problem:
            raise DatasetError(f"relabel file {uri}: {loc}: new label {label!r} {problem}")
    kept, log = [], []
    for item in items:
        now = changes.get(item.location)
        if now is None or now == item.label:
            kept.append(item)
            continue
        log.append({"location": item.location, "given": item.label, "now": now})
        if now != DROP:
            kept.append(replace(item, label=now))
    return kept, log


def write_relabels(path, log: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        tables.Writer(f, RELABEL_FIELDS).writerows(log)
