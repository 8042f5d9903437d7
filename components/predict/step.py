"""Predict: classify images with an exported SavedModel through its own raw-bytes serving signature.

What we report is what a serving system would answer: bytes go to `serving_default` untouched. Each
file's header is checked with ingest's rules first (a known image format, within the pixel limit: no
decoding, which is the signature's job); a file the signature cannot decode fails its batch, and the
batch is split until that file alone is named with TensorFlow's cause. Two batches are read and served
at once, and answered in order.

A model exported with an abstention threshold (imgclf.json's `abstain_below`, chosen by evaluate on the
validation split for `abstain_precision`) has each answer below it marked `uncertain`; the class stays in
the row, so a reviewer sees what the model would have said.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.components.contracts import INPUT_KEY, ExportInfo
from imgclf.components.lib import calibration, images, serving, storage, tables
from imgclf.components.lib.litter import is_ignored
from imgclf.components.lib.options import takes
from imgclf.components.lib.progress import Progress
from imgclf.components.predict.options import FORMATS, PredictOptions


@dataclass
class PredictResult:
    predicted: int
    failed: int
    class_counts: dict[str, int]
    output: str = ""
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list, repr=False)
    uncertain: int = 0
    """Answers below the model's abstention threshold (0 for a model exported without one)."""


def _entries(inputs: list[str]) -> Iterator[storage.Entry]:
    """The files to classify: those given, and those in folders given, less OS and notebook litter
    (a folder's `.ipynb_checkpoints/` copies, `.DS_Store`; a file named explicitly is always read)."""
    for item in inputs:
        if storage.is_dir(item):
            yield from (e for e in storage.walk_files(item) if not is_ignored(e.rel))
        else:
            yield storage.Entry(os.path.basename(item), item, 0)


def _read(entry: storage.Entry, max_pixels: int) -> tuple[bytes | None, str]:
    if entry.skip_reason:
        return None, entry.skip_reason
    try:
        data = storage.read_bytes(entry.uri)
        images.inspect(data, max_pixels=max_pixels, decode=False)
        return data, ""
    except FileNotFoundError:
        return None, "not found"
    except OSError as e:
        if storage.is_store_failure(e, entry.uri):
            raise
        return None, f"unreadable: {e}"
    except images.ImageRejected as e:
        return None, str(e)


# Batches served at once. One call of the signature leaves cores idle (its decode and model take
# turns); two calls in flight keep them full, faster and with less CPU time in all (benchmarks/
# step_speed.py; see docs/performance.md). More would only hold more batches in memory.
IN_FLIGHT = 2


def _read_and_serve(serve, readers: ThreadPoolExecutor, chunk: list[storage.Entry], max_pixels: int) -> tuple[list, dict]:
    """One batch: its (bytes, error) pairs in order, and the signature's answer per URI.

    Local files are read in this task: a file from the page cache takes tens of microseconds, less
    than a task's own cost. A store's files get a reader each, so their round trips overlap.
    """
    if all(storage.is_local(e.uri) for e in chunk):
        loaded = [_read(e, max_pixels) for e in chunk]
    else:
        loaded = [f.result() for f in [readers.submit(_read, e, max_pixels) for e in chunk]]
    good = [(e, d) for e, (d, _) in zip(chunk, loaded) if d is not None]
    answers = _serve_batch(serve, [d for _, d in good])
    return loaded, {e.uri: a for (e, _), a in zip(good, answers)}


def _in_order(pool: ThreadPoolExecutor, work, items: list) -> Iterator:
    """`work(item)` for each item on `pool` (IN_FLIGHT workers), yielded in the items' order.

    One more item than there are workers is queued, so both keep working while the oldest is handed out.
    """
    pending = deque()
    for item in items:
        pending.append((item, pool.submit(work, item)))
        if len(pending) > IN_FLIGHT:
            item, done = pending.popleft()
            yield item, done.result()
    while pending:
        item, done = pending.popleft()
        yield item, done.result()


@takes(PredictOptions, leading=("model",))
def predict(inputs: list[str], opts: PredictOptions, *, output: str = "", keep_rows: bool = False) -> PredictResult:
    """Classify every image in `inputs` (files, folders or URIs); write CSV/JSON Lines to `output`.

    `output`'s extension picks the format (.csv or .jsonl). Rows stream to a local temporary file and
    are moved (or uploaded) into place at the end, so a failed run leaves no partial predictions.
    """
    import tensorflow as tf

    fmt = Path(output).suffix.lstrip(".").lower() if output else ""
    if output and fmt not in FORMATS:
        raise ValueError(f"--output must end in .csv or .jsonl, got {output!r}")
    from imgclf.components.lib.registry import resolve

    model, top_k, batch_size, max_pixels = opts.model, opts.top_k, opts.batch_size, opts.max_pixels

    entries = list(_entries(inputs))
    if not entries:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    # `REGISTRY/NAME` means that model's current champion, for the CLI and the batch component alike.
    with serving.local_model(resolve(model)) as model_dir:
        info = ExportInfo.load(model_dir)
        classes = info.input.classes if info else None
        abstain_below = info.abstain_below if info else 0.0
        serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
        k = max(1, min(top_k, len(classes) if classes else 1))
        counts, rows, failed, uncertain = Counter(), [], 0, 0
        progress = Progress("predict", len(entries))
        with tempfile.TemporaryDirectory(prefix="imgclf-predict-") as tmp, \
                ThreadPoolExecutor(max_workers=8) as readers, ThreadPoolExecutor(max_workers=IN_FLIGHT) as batch_pool:
            tmp_out = Path(tmp) / f"predictions.{fmt or 'jsonl'}"
            with open(tmp_out, "w", newline="", encoding="utf-8") as f:
                # Without --output there is nothing to write: the rows are only counted (or kept).
                writer = _writer(f, fmt, classes) if output else (lambda row: None)
                chunks = [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
                batches = _in_order(batch_pool, lambda c: _read_and_serve(serve, readers, c, max_pixels), chunks)
                for chunk, (loaded, by_uri) in batches:
                    for e, (_, err) in zip(chunk, loaded):
                        a = by_uri.get(e.uri)
                        if a is not None and "error" in a:
                            err, a = a["error"], None
                        row = {"file": e.uri}
                        if a is None:
                            row["error"] = err
                            failed += 1
                        else:
                            probs = a["probabilities"]
                            order = np.argsort(-probs)[:k]
                            row.update({"class": a["class_name"], "probability": float(probs.max()),
                                        "uncertain": bool(calibration.is_uncertain(probs.max(), abstain_below)),
                                        "top_k": [[classes[i] if classes else a["class_name"], float(probs[i])]
                                                  for i in order],
                                        "probabilities": probs})
                            counts[a["class_name"]] += 1
                            uncertain += row["uncertain"]
                        writer(row)
                        if keep_rows:
                            rows.append(row)
                    progress.update(len(chunk))
            seconds = progress.close()
            if output:
                storage.put_file(str(tmp_out), output)
    result = PredictResult(sum(counts.values()), failed, dict(counts.most_common()), output, round(seconds, 2), rows,
                           uncertain)
    print(f"predict: {result.predicted} images classified, {failed} failed"
          + (f", {uncertain} uncertain (top probability below {abstain_below:.4f})" if abstain_below else "")
          + (f"; wrote {output}" if output else ""), flush=True)
    return result


def _serve_batch(serve, blobs: list[bytes]) -> list[dict]:
    """Answer a batch; if TensorFlow rejects it, answer its halves, so only the bad image fails."""
    import tensorflow as tf

    if not blobs:  # an empty batch crashes TF's CPU kernels
        return []
    try:
        out = serve(**{INPUT_KEY: tf.constant(blobs)})
    except tf.errors.InvalidArgumentError as e:
        if len(blobs) == 1:
            return [{"error": f"TensorFlow cannot decode it: {images.decode_error_cause(e)}"}]
        half = len(blobs) // 2  # halves, so one bad file costs a few extra calls, not one per image
        return _serve_batch(serve, blobs[:half]) + _serve_batch(serve, blobs[half:])
    names = [n.decode("utf-8") for n in out["class_name"].numpy()]
    return [{"class_name": n, "probabilities": p} for n, p in zip(names, out["probabilities"].numpy())]


def _writer(f, fmt: str, classes: list[str] | None):
    if fmt == "csv":
        w = tables.Writer(f)
        w.writerow(["file", "class", "probability", "uncertain", "top_k", *[f"p_{c}" for c in classes or []], "error"])

        def write(row):
            if "error" in row:
                w.writerow([row["file"], "", "", "", "", *[""] * len(classes or []), row["error"]])
            else:
                topk = ";".join(f"{c}:{p:.4f}" for c, p in row["top_k"])
                w.writerow([row["file"], row["class"], f"{row['probability']:.6f}",
                            "true" if row["uncertain"] else "false", topk,
                            *[f"{p:.6f}" for p in (row["probabilities"] if classes else [])], ""])
        return write

    def write_jsonl(row):
        out = {k: v for k, v in row.items() if k != "probabilities"}
        if "probabilities" in row and classes:
            out["probabilities"] = {c: round(float(p), 6) for c, p in zip(classes, row["probabilities"])}
        f.write(json.dumps(out, ensure_ascii=False) + "\n")
    return write_jsonl


def format_table(rows: list[dict]) -> str:
    """A terminal table: file, class, probability, top-k (errors in place of a class; an uncertain answer's
    class followed by `?`)."""
    lines = [("file", "class", "prob", "top-k")]
    for r in rows:
        if "error" in r:
            lines.append((r["file"], "ERROR", "", r["error"]))
        else:
            lines.append((r["file"], r["class"] + ("?" if r.get("uncertain") else ""), f"{r['probability']:.3f}",
                          ", ".join(f"{c} {p:.2f}" for c, p in r["top_k"])))
    width = [min(60, max(len(line[i]) for line in lines)) for i in range(3)]
    return "\n".join(f"{a[-width[0]:]:<{width[0]}}  {b:<{width[1]}}  {c:>{width[2]}}  {d}" for a, b, c, d in lines)
