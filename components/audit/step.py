"""The audit's merge: every fold's out-of-fold probabilities (evaluate's predictions.csv of a fold model
that never saw those images) concatenated, then confident learning with cleanlab to rank likely label
errors. Confident learning is cleanlab's (Northcutt et al.), not ours: `find_label_issues` flags,
`get_label_quality_scores` (self-confidence: the out-of-fold probability of the given label) ranks.

Kinds, decided here (cleanlab flags issues but does not name them):
- near-duplicate across classes: the suspect's perceptual hash (the manifest's dhash) is within
  `duplicate_bits` bits of an image with another label; the fix is to decide which of the two is right;
- wrong label: the suggested class has at least `wrong_label_above` out-of-fold probability (the fold
  model is confident the image is another class);
- ambiguous: neither, the fold model spreads its probability (the image may belong to no class, or two).
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from imgclf.components.audit.options import AuditOptions
from imgclf.components.contracts import (
    DatasetError,
    Evaluation,
    load_manifest,
    location_uri,
    read_predictions,
)
from imgclf.components.lib import storage, tables
from imgclf.components.lib.options import takes

SUSPECTS, SUSPECTS_HTML, SCORES, AUDIT_SUMMARY = "suspects.csv", "suspects.html", "scores.csv", "audit.json"
SUSPECT_FIELDS = ["rank", "location", "label", "suggested", "score", "suggested_probability", "kind", "fold"]
SCORE_FIELDS = ["location", "label", "suggested", "score", "suggested_probability", "fold"]
KINDS = ("wrong label", "ambiguous", "near-duplicate across classes")
PAGE = 100
"""Suspects per page of suspects.html: a page's thumbnails are decoded only when it is shown."""
THUMB = 96


@dataclass
class AuditSummary:
    images: int
    folds: int
    suspects: int
    kinds: dict[str, int]
    out_of_fold_accuracy: float


def out_of_fold(predictions_dirs: list[str]) -> tuple[list[str], list[dict]]:
    """(classes, rows with `fold` and a `probs` list) over every fold's predictions; an image scored by
    two folds is an error (the folds must partition the images)."""
    classes, seen, rows = None, {}, []
    for fold, d in enumerate(predictions_dirs):
        mine = Evaluation.load(d).classes
        if classes is None:
            classes = mine
        elif mine != classes:
            raise DatasetError(f"fold {fold} was trained on classes {mine}, fold 0 on {classes}")
        for r in read_predictions(d):
            if r["location"] in seen:
                raise DatasetError(f"{r['location']} was scored by folds {seen[r['location']]} and {fold}: the "
                                   "folds overlap")
            seen[r["location"]] = fold
            rows.append({"location": r["location"], "label": r["label"], "fold": fold,
                         "probs": [float(r[f"p_{c}"]) for c in classes]})
    if not rows:
        raise DatasetError("the folds scored no image")
    return classes, rows


def cross_class_duplicates(idx: list[int], hashes: list[str], labels: list[str], max_bits: int) -> set[int]:
    """The positions in `idx` whose hash is within `max_bits` of an image with another label (the
    suspects only, against every image: suspects x images distances, in chunks)."""
    import numpy as np

    if max_bits < 0 or not idx:
        return set()
    have = [i for i, h in enumerate(hashes) if h]
    if not have:
        return set()
    words = np.frombuffer(b"".join(bytes.fromhex(hashes[i]) for i in have), dtype=np.uint64).reshape(len(have), -1)
    label_of = np.array([labels[i] for i in have], dtype=object)
    row_of = {i: n for n, i in enumerate(have)}
    found = set()
    for start in range(0, len(idx), 16):
        chunk = [i for i in idx[start:start + 16] if i in row_of]
        if not chunk:
            continue
        q = words[[row_of[i] for i in chunk]]
        dist = np.bitwise_count(q[:, None, :] ^ words[None, :, :]).sum(axis=2)
        for n, i in enumerate(chunk):
            near = dist[n] <= max_bits
            if np.any(label_of[near] != labels[i]):
                found.add(i)
    return found


def rank_suspects(classes: list[str], rows: list[dict], hashes: list[str], opts: AuditOptions) -> list[dict]:
    """Every row scored (label quality, suggested class) and the flagged ones, most suspicious first, with
    their kind. `hashes[i]` is row i's dhash ("" when unknown)."""
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r["label"]] for r in rows])
    probs = np.array([r["probs"] for r in rows], dtype=float)
    probs = probs / probs.sum(axis=1, keepdims=True)  # the CSV's six decimals
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    suggested = probs.argmax(axis=1)
    for i, r in enumerate(rows):
        r.update(score=float(scores[i]), suggested=classes[suggested[i]],
                 suggested_probability=float(probs[i, suggested[i]]))
    flagged = [int(i) for i in flagged]
    dups = cross_class_duplicates(flagged, hashes, [r["label"] for r in rows], opts.duplicate_bits)
    out = []
    for rank, i in enumerate(flagged, 1):
        r = rows[i]
        kind = (KINDS[2] if i in dups else KINDS[0] if r["suggested_probability"] >= opts.wrong_label_above
                else KINDS[1])
        out.append({**{k: r[k] for k in ("location", "label", "suggested", "score", "suggested_probability",
                                         "fold")}, "rank": rank, "kind": kind})
    return out


@takes(AuditOptions)
def audit(dataset_dir: str, predictions_dirs: list[str], output_dir: str, opts: AuditOptions) -> AuditSummary:
    """Write suspects.csv (most suspicious first), suspects.html, scores.csv (every audited image) and
    audit.json to `output_dir`."""
    if len(predictions_dirs) != opts.audit_folds:
        raise DatasetError(f"{len(predictions_dirs)} fold predictions for audit_folds={opts.audit_folds}")
    classes, rows = out_of_fold(predictions_dirs)
    manifest, _ = load_manifest(dataset_dir)
    dhash = {r.location: r.dhash for r in manifest}
    unknown = [r["location"] for r in rows if r["location"] not in dhash]
    if unknown:
        raise DatasetError(f"{len(unknown)} scored image(s) are not in the manifest, e.g. {unknown[0]}")
    suspects = rank_suspects(classes, rows, [dhash[r["location"]] for r in rows], opts)
    accuracy = sum(r["suggested"] == r["label"] for r in rows) / len(rows)
    summary = AuditSummary(len(rows), opts.audit_folds, len(suspects),
                           {k: sum(s["kind"] == k for s in suspects) for k in KINDS}, round(accuracy, 4))
    with storage.atomic_dir(output_dir) as out:
        write_csv(out / SUSPECTS, SUSPECT_FIELDS, suspects)
        write_csv(out / SCORES, SCORE_FIELDS, sorted(rows, key=lambda r: r["score"]))
        (out / AUDIT_SUMMARY).write_text(json.dumps(asdict(summary), indent=1))
        (out / SUSPECTS_HTML).write_text(suspects_page(dataset_dir, suspects, summary, opts.thumbnails),
                                         encoding="utf-8")
    print(f"audit: {summary.suspects} suspect label(s) among {summary.images} images from {summary.folds} folds "
          f"{summary.kinds}; out-of-fold accuracy {summary.out_of_fold_accuracy:.4f}", flush=True)
    return summary


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    def cell(v):
        return f"{v:.6g}" if isinstance(v, float) else v

    with open(path, "w", newline="", encoding="utf-8") as f:
        tables.Writer(f, fields).writerows({k: cell(r[k]) for k in fields} for r in rows)


def thumbnail(uri: str) -> str:
    """A small JPEG data URI of the image (what the model sees: EXIF applied), or "" if unreadable."""
    from PIL import Image, ImageOps

    from imgclf.components.lib.images import upright_rgb

    try:
        img = upright_rgb(Image.open(io.BytesIO(storage.read_bytes(uri))))
    except Exception:  # noqa: BLE001 - a missing picture must not lose the audit
        return ""
    img = ImageOps.contain(img, (THUMB, THUMB))  # small images (28 px) scale up too, or nobody could judge them
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def suspects_page(dataset_dir: str, suspects: list[dict], summary: AuditSummary, thumbnails: int) -> str:
    """Pages of PAGE suspects: each card's thumbnail is a data URI kept in a data-src attribute and set only
    when its page is shown, so a browser decodes at most PAGE images at once; a 96-pixel JPEG is a few
    KB, so 1,000 suspects stay a few MB."""
    cards = []
    for s in suspects[:thumbnails]:
        src = thumbnail(location_uri(dataset_dir, s["location"]))
        cards.append(
            f'<div class="card" data-page="{(s["rank"] - 1) // PAGE}"><div class="pic">'
            + (f'<img data-src="{src}" alt="">' if src else "<i>unreadable</i>")
            + f'</div><b>#{s["rank"]}</b> {html.escape(s["kind"])}<br>given <b>{html.escape(s["label"])}</b>'
            f' &rarr; <b>{html.escape(s["suggested"])}</b> ({s["suggested_probability"]:.2f})<br>'
            f'score {s["score"]:.3f}<br><code>{html.escape(s["location"])}</code></div>')
    pages = max(1, -(-len(cards) // PAGE))
    rest = (f"<p>{len(suspects) - thumbnails} more suspects are in suspects.csv only.</p>"
            if len(suspects) > thumbnails else "")
    kinds = ", ".join(f"{n} {html.escape(k)}" for k, n in summary.kinds.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Label audit: suspects</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px}}
.card{{border:1px solid #ccc;padding:6px;font-size:13px;display:none;overflow-wrap:anywhere}}
.pic{{height:{THUMB}px;display:flex;align-items:center;justify-content:center;background:#f3f3f3}}
code{{font-size:11px;color:#555}}nav button{{margin:2px}}</style></head><body>
<h1>Label audit: {summary.suspects} suspects among {summary.images} images</h1>
<p>{summary.folds} folds, out-of-fold accuracy {summary.out_of_fold_accuracy:.4f}; {kinds}. Most suspicious
first (cleanlab's self-confidence: the out-of-fold probability of the given label). Fix a label by listing
<code>location,label</code> (or <code>location,drop</code>) in a relabel.csv and passing it as
<code>--relabel</code>.</p>{rest}
<nav id="nav"></nav><div class="grid">{"".join(cards)}</div>
<script>
const pages = {pages}, cards = document.querySelectorAll('.card');
function show(p) {{
  cards.forEach(c => {{
    const on = c.dataset.page == p; c.style.display = on ? 'block' : 'none';
    const im = c.querySelector('img'); if (on && im && !im.src) im.src = im.dataset.src;
  }});
  document.querySelectorAll('#nav button').forEach((b, i) => b.disabled = i == p);
}}
for (let p = 0; p < pages; p++) {{
  const b = document.createElement('button'); b.textContent = 'page ' + (p + 1); b.onclick = () => show(p);
  document.getElementById('nav').appendChild(b);
}}
show(0);
</script></body></html>"""
