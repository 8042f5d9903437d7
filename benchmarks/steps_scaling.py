"""Wall time and peak memory of every pipeline step (ingest, preprocess, train, evaluate, export) on the
embedded sample (5,000 clean images) and on 7,000 vs 70,000 Fashion-MNIST images (local PNG folders built
from Debian's dataset-fashion-mnist) with 1% of the files damaged in assorted ways (truncated, emptied,
replaced by text, converted to TIFF, duplicated), and how each grows from 7,000 to 70,000.

28x28 grey, as `make run`; train is the baseline CNN for a fixed number of epochs (2; no early stop), batch 64.
Each step runs in a fresh process so its peak RSS is its own (imports included, as in a pipeline task).
Writes <out>/steps_scaling.{json,md}.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from imgclf.pipelines.local.sample_data import build_folder

MODULE = "benchmarks.steps_scaling"
SAMPLE = "data/fashion-mnist-sample"
STEPS = ("ingest", "preprocess", "train", "evaluate", "export")


def damage(folder: Path, share: float = 0.01, seed: int = 0) -> dict[str, int]:
    """Damage `share` of the files in place, five ways in equal parts."""
    import random

    from PIL import Image

    files = sorted(folder.rglob("*.png"))
    picked = random.Random(seed).sample(files, int(len(files) * share))
    kinds = ["truncated", "empty", "text", "tiff", "duplicate"]
    done = dict.fromkeys(kinds, 0)
    for i, f in enumerate(picked):
        kind = kinds[i % len(kinds)]
        if kind == "truncated":
            f.write_bytes(f.read_bytes()[:60])
        elif kind == "empty":
            f.write_bytes(b"")
        elif kind == "text":
            f.write_text("<html>404 not found</html>")
        elif kind == "tiff":
            Image.open(f).save(f.with_suffix(".tiff"), "TIFF")
            f.unlink()
        else:
            f.with_name("copy-" + f.name).write_bytes(f.read_bytes())
        done[kind] += 1
    return done


def run_step(step: str, source: str, work: str, epochs: int) -> dict:
    """One step on `work`'s folders; the clock includes the step's own imports, as a pipeline task pays them.
    `images` is what the step went through: files checked, images written, trained (x epochs), predicted,
    checked through the SavedModel."""
    w = Path(work)
    ds, model = str(w / "preprocessed"), str(w / "model")
    t = time.perf_counter()
    quarantined = 0
    if step == "ingest":
        from imgclf.components.ingest.step import ingest
        s = ingest(source, str(w / "ingested"))
        n, quarantined = s.images, s.quarantined
    elif step == "preprocess":
        from imgclf.components.preprocess.step import preprocess
        s = preprocess(str(w / "ingested"), ds, image_size=28, color_mode="grayscale")
        n, quarantined = sum(s.counts.values()), s.quarantined
    elif step == "train":
        from imgclf.components.contracts import RecordsMetadata
        from imgclf.components.train.step import train
        r = train(ds, model, epochs=epochs, batch_size=64, patience=epochs)
        n = r.epochs_run * RecordsMetadata.load(ds).count("train")
    elif step == "evaluate":
        from imgclf.components.contracts import RecordsMetadata
        from imgclf.components.evaluate.step import evaluate
        evaluate(ds, model, str(w / "predictions"))
        n = RecordsMetadata.load(ds).count("test")
    else:
        from imgclf.components.export.step import export
        n = export(model, ds, str(w / "predictions"), str(w / "saved_model")).checked_images
    return {"images": n, "quarantined": quarantined, "seconds": time.perf_counter() - t}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        harness.child_report(run_step(argv[1], argv[2], argv[3], int(argv[4])))
        return 0
    args = harness.parse_args(__doc__, argv, **{
        "--epochs": {"type": int, "help": "training epochs (default 2; 1 with --quick)"}})
    epochs = args.epochs or (1 if args.quick else 2)
    # (label, files, per_class for build_folder or None for the embedded sample, damaged?)
    sizes = [("sample", None, False), ("200", 20, True), ("2,000", 200, True)] if args.quick else \
        [("sample", None, False), ("7,000", 700, True), ("70,000", 0, True)]
    result = {"machine": harness.machine(), "epochs": epochs, "runs": []}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        t = Path(tmp)
        for label, per_class, _dirty in sizes:
            if per_class is None:
                folder, damaged = Path(SAMPLE).resolve(), {}
            else:
                folder = t / f"fmnist{per_class}"
                build_folder(str(folder), per_class=per_class, seed=3)
                damaged = damage(folder)
            files = sum(1 for f in folder.rglob("*") if f.is_file())
            print(f"steps_scaling: {label}: {files} files, damaged: {damaged or 'none'}", flush=True)
            work = t / f"work-{label}"
            for step in STEPS:
                r = harness.in_fresh_process(MODULE, step, folder, work, epochs)
                r.update(step=step, size=label, files=files, damaged=damaged, seconds=round(r["seconds"], 1),
                         images_per_s=round(r["images"] / r["seconds"]) if r["images"] else None)
                result["runs"].append(r)
                print(f"  {step}: {r['seconds']} s, {r['images_per_s'] or '-'} images/s, peak {r['peak_rss_mb']} MB",
                      flush=True)
    runs = result["runs"]
    table = ["| data | step | images | quarantined | wall time | images/s | peak memory (RSS) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['size']}{' (1% damaged)' if r['damaged'] else ''} | {r['step']} | {r['images']:,} "
              f"| {r['quarantined'] if r['step'] in ('ingest', 'preprocess') else ''} | {r['seconds']} s "
              f"| {r['images_per_s'] or ''} | {r['peak_rss_mb']} MB |" for r in runs]
    small, big = sizes[1][0], sizes[2][0]
    by = {(r["size"], r["step"]): r for r in runs}
    growth = {s: {"time_x": round(by[big, s]["seconds"] / max(by[small, s]["seconds"], 1e-9), 1),
                  "memory_x": round(by[big, s]["peak_rss_mb"] / by[small, s]["peak_rss_mb"], 2),
                  "memory_added_mb": round(by[big, s]["peak_rss_mb"] - by[small, s]["peak_rss_mb"], 1)}
              for s in STEPS}
    result["growth"] = {"from": small, "to": big, "steps": growth}
    table += ["", f"Growth from {small} to {big} files (10x the data):", "",
              "| step | wall time | peak memory | memory added |", "|---|---:|---:|---:|"]
    table += [f"| {s} | {g['time_x']}x | {g['memory_x']}x | {g['memory_added_mb']} MB |" for s, g in growth.items()]
    harness.save("steps_scaling", args.out, result, "\n".join(table),
                 f"Pipeline steps, 28x28 grey, train = baseline {epochs} epoch(s) batch 64, each step a fresh process "
                 "(wall time includes its Python start and imports, as a pipeline task pays them)",
                 args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
