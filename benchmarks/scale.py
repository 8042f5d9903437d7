"""`make bench-scale`: how ingest, preprocess and training grow from 10,000 to 1,000,000 images, and what
that means for ImageNet-1k on N pods.

Synthetic tiny images (24x24 RGB PNGs, ten classes: a class colour and gradient direction plus per-image
noise, so no two are alike and their perceptual hashes spread) are written once into build/scale and
reused. Each size goes through every task a pipeline runs, each a fresh process so its wall time includes
its Python start and imports and its peak memory is its own: ingest and preprocess as one task each, and
each as plan -> shard tasks -> merge (the pipelines' form) with a fixed number of shard tasks, so a
shard task's share grows with the data; then one epoch of training with the defaults at sizes up to
100,000. Per task: wall seconds, the step's own seconds (its function call, after the imports), images/s,
peak RSS of the largest process (wait4's ru_maxrss) and the peak anonymous memory of the whole process
tree (sampled; forked workers' shared pages counted once), what grows with the data in a pod.

The growth exponent b of seconds = a * images^b is fitted per step by least squares on log-log over the
sizes measured (goal: b <= 1.15); a step's memory is flat when its exponent is at most 0.1. The page's
section and the ImageNet-1k plan are rendered by `benchmarks.summary.render_scale` from this JSON.
Writes <out>/scale.{json,md}.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import harness

MODULE = "benchmarks.scale"
DATA = harness.REPO / "build" / "scale"
DEFAULT_SIZES = "10k,100k,1M"
QUICK_SIZES = "200,400,800"
TRAIN_MAX = 100_000
"""One epoch of training at sizes up to this (the issue: at 10k and 100k)."""
CLASSES = 10
PIXELS = 24
"""The baseline CNN (the training default) needs at least 20 px; decoding 24 px costs what 12 px does."""
CHUNK = 500
"""Images of one class generated together; image i of a class depends on (class, i) alone, so a smaller
set is the first images of a larger one."""
GENERATOR_VERSION = 1
SHARD_TASKS = 4
MEMORY_FLAT_EXPONENT = 0.1
GOAL_EXPONENT = 1.15
SAMPLE_SECONDS = 0.2
PREPROCESS = {"image_size": PIXELS, "color_mode": "rgb"}
"""The images' native size: the default 160 px would measure upscaling tiny images, not the pipeline."""
QUICK_PREPROCESS = {"images_per_shard": 64}
"""--quick: small TFRecord files, so a few hundred images still spread over every shard task."""


def parse_size(text: str) -> int:
    """'10k' -> 10000, '1M' -> 1000000, '800' -> 800."""
    text = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def parse_sizes(text: str) -> list[int]:
    return sorted({parse_size(s) for s in text.split(",") if s.strip()})


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else \
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# ---------------------------------------------------------------- images


def _write_chunk(job: tuple[str, int, int, int]) -> int:
    """Images start..start+count-1 of class `cls` under `folder`/class<cls>/."""
    import numpy as np
    from PIL import Image

    folder, cls, start, count = job
    rng = np.random.default_rng([GENERATOR_VERSION, cls, start])
    angle = 2 * math.pi * cls / CLASSES
    yy, xx = np.mgrid[0:PIXELS, 0:PIXELS] / (PIXELS - 1) - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * 160
    colour = np.array([(cls * 97) % 256, (cls * 53 + 80) % 256, (cls * 31 + 160) % 256], dtype=np.float64)
    pixels = colour + ramp + rng.normal(0, 40, (count, PIXELS, PIXELS, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    out = Path(folder) / f"class{cls}"
    for k in range(count):
        Image.fromarray(pixels[k]).save(out / f"{start + k:07d}.png", compress_level=1)
    return count


def images(n: int, root: Path = DATA, processes: int | None = None) -> Path:
    """A folder of `n` images (n // CLASSES per class), written once: a `.complete` file records what is
    there, so later runs reuse it."""
    folder = root / f"images-{n}"
    done = folder / ".complete"
    stamp = json.dumps({"images": n, "classes": CLASSES, "pixels": PIXELS, "version": GENERATOR_VERSION})
    if done.exists() and done.read_text() == stamp:
        return folder
    import multiprocessing
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    per_class = n // CLASSES
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), c, s, min(CHUNK, per_class - s)) for c in range(CLASSES) for s in range(0, per_class, CHUNK)]
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes or os.cpu_count()) as pool:
        written = sum(pool.imap_unordered(_write_chunk, jobs))
    print(f"scale: wrote {written:,} images to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    done.write_text(stamp)
    return folder


# ---------------------------------------------------------------- one task, in its own process


def run_step(step: str, a: dict) -> dict:
    """One task; the clock starts after its imports and TensorFlow's, as in a pipeline's preloaded task (the
    process's wall time, with them, is the parent's)."""
    import tensorflow  # noqa: F401  (every step imports it on its first call)

    pre = {**PREPROCESS, **a.get("preprocess", {})}
    if step == "ingest":
        from imgclf.components.ingest.step import ingest
        t = time.perf_counter()
        s = ingest(a["source"], a["out"])
        n = s.images + s.quarantined
    elif step == "ingest_plan":
        from imgclf.components.ingest.shards import plan as ingest_plan
        t = time.perf_counter()
        ingest_plan(a["source"], a["out"], ingest_tasks=a["tasks"])
        n = a["images"]
    elif step == "ingest_shard":
        from imgclf.components.ingest.shards import write_part as ingest_part
        t = time.perf_counter()
        n = ingest_part(a["plan"], a["shard"], a["out"], data=a["source"], ingest_tasks=a["tasks"])["files"]
    elif step == "ingest_merge":
        from imgclf.components.ingest.shards import merge as ingest_merge
        t = time.perf_counter()
        s = ingest_merge(a["plan"], a["parts"], a["out"], data=a["source"], ingest_tasks=a["tasks"])
        n = s.images + s.quarantined
    elif step == "preprocess":
        from imgclf.components.preprocess.step import preprocess
        t = time.perf_counter()
        s = preprocess(a["dataset"], a["out"], **pre)
        n = sum(s.counts.values()) + s.quarantined
    elif step == "preprocess_plan":
        from imgclf.components.preprocess.shards import plan
        t = time.perf_counter()
        plan(a["dataset"], a["out"], shard_tasks=a["tasks"], **pre)
        n = a["images"]
    elif step == "preprocess_shard":
        from imgclf.components.preprocess.shards import write_part
        t = time.perf_counter()
        part = write_part(a["dataset"], a["plan"], a["shard"], a["out"], shard_tasks=a["tasks"], **pre)
        n = sum(sum(f["per_class"].values()) + len(f["quarantined"]) for f in part["files"])
    elif step == "preprocess_merge":
        from imgclf.components.preprocess.shards import merge
        t = time.perf_counter()
        s = merge(a["dataset"], a["plan"], a["parts"], a["out"], shard_tasks=a["tasks"], **pre)
        n = sum(s.counts.values()) + s.quarantined
    elif step == "train":
        from imgclf.components.contracts import RecordsMetadata
        from imgclf.components.train.step import train
        t = time.perf_counter()
        r = train(a["records"], a["out"], epochs=1)
        n = r.epochs_run * RecordsMetadata.load(a["records"]).count("train")
    else:
        raise ValueError(f"unknown step {step!r}")
    return {"images": n, "step_seconds": time.perf_counter() - t}


def _tree_anon_mb(root: int) -> float:
    """Anonymous memory (heap, arrays: what grows with the data) of `root` and every descendant, each
    page shared copy-on-write by forked workers counted once (Pss_Anon). Libraries and other file pages
    are left out: about constant, reclaimable, and their PSS changes with what other processes on the
    machine map."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


def measure(step: str, args: dict, log: Path) -> dict:
    """Run one task as `python -m benchmarks.scale --measure` and time it from outside: wall seconds,
    its own step seconds, the largest process's peak RSS and the tree's sampled peak anonymous memory."""
    argv = [sys.executable, "-m", MODULE, "--measure", step, json.dumps(args)]
    peak = [0.0]
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=harness.REPO, stdout=subprocess.PIPE, stderr=out, env=os.environ, text=True)
        stop = threading.Event()

        def sample():
            while not stop.wait(SAMPLE_SECONDS):
                peak[0] = max(peak[0], _tree_anon_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{step} failed:\n{log.read_text()[-4000:]}")
    r = json.loads(stdout.strip().splitlines()[-1])
    seconds = r["step_seconds"]
    return {"step": step, "images": r["images"], "wall_seconds": round(wall, 3), "step_seconds": round(seconds, 3),
            "images_per_second": round(r["images"] / seconds, 1) if seconds > 0 else None,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_tree_anon_mb": round(peak[0], 1) or None}


# ---------------------------------------------------------------- sharded ingest (hook)


def sharded_ingest(source: Path, work: Path, tasks: int, images: int, log_dir: Path) -> list[dict] | None:
    """Ingest spread over tasks (components/ingest/shards.py): plan, `tasks` shard tasks (one after
    another, each its own process) and merge, rows named "ingest_plan", "ingest_shard" (with "shard") and
    "ingest_merge"; the summary fits their exponents and the ImageNet-1k plan uses the shard tasks' rate
    and the plan and merge times. None where this checkout has no sharded ingest (the page says so)."""
    import importlib.util

    if importlib.util.find_spec("imgclf.components.ingest.shards") is None:
        return None
    common = {"source": str(source), "tasks": tasks, "images": images}
    plan = str(work / "plan")
    rows = [measure("ingest_plan", {**common, "out": plan}, log_dir / "ingest_plan.log")]
    parts = []
    for shard in range(tasks):
        part = str(work / f"part-{shard}")
        row = measure("ingest_shard", {**common, "plan": plan, "shard": shard, "out": part},
                      log_dir / f"ingest_shard-{shard}.log")
        rows.append({**row, "shard": shard})
        parts.append(part)
    rows.append(measure("ingest_merge", {**common, "plan": plan, "parts": parts, "out": str(work / "merged")},
                        log_dir / "ingest_merge.log"))
    return rows


def preprocess_sharded(dataset: Path, work: Path, tasks: int, images: int, log_dir: Path,
                       opts: dict | None = None) -> list[dict]:
    """Plan, `tasks` shard tasks (one after another, each its own process as on a cluster) and merge."""
    common = {"dataset": str(dataset), "tasks": tasks, "images": images, "preprocess": opts or {}}
    rows = [measure("preprocess_plan", {**common, "out": str(work / "plan")}, log_dir / "preprocess_plan.log")]
    parts = []
    for shard in range(tasks):
        part = str(work / f"part-{shard}")
        row = measure("preprocess_shard", {**common, "plan": str(work / "plan"), "shard": shard, "out": part},
                      log_dir / f"preprocess_shard-{shard}.log")
        rows.append({**row, "shard": shard})
        parts.append(part)
    rows.append(measure("preprocess_merge", {**common, "plan": str(work / "plan"), "parts": parts,
                                             "out": str(work / "merged")}, log_dir / "preprocess_merge.log"))
    return rows


# ---------------------------------------------------------------- fitting and the result


def fit_exponent(points: list[tuple[float, float]]) -> float | None:
    """b of y = a * x^b by least squares on (log x, log y); None with fewer than two distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 3)


def per_size(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """step -> size -> one row: a step with several tasks per size (shard tasks) as its critical path
    (the slowest task's seconds and memory) with the median per-task rate."""
    import statistics

    grouped: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        grouped.setdefault(r["step"], {}).setdefault(r["size"], []).append(r)
    out: dict[str, dict[int, dict]] = {}
    for step, sizes in grouped.items():
        for size, rs in sizes.items():
            if len(rs) == 1:
                row = dict(rs[0])
            else:
                slow = max(rs, key=lambda r: r["step_seconds"])
                row = {**slow, "tasks": len(rs), "images": sum(r["images"] for r in rs),
                       "images_per_task": max(r["images"] for r in rs),
                       "images_per_second": statistics.median([r["images_per_second"] for r in rs
                                                               if r["images_per_second"]] or [0]) or None,
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                       "peak_tree_anon_mb": max((r["peak_tree_anon_mb"] or 0) for r in rs) or None}
            out.setdefault(step, {})[size] = row
    return out


def growth(rows: list[dict]) -> dict[str, dict]:
    """Per step: the fitted exponents of step seconds, wall seconds and peak memory, and the verdicts."""
    result = {}
    for step, sizes in per_size(rows).items():
        pts = sorted(sizes.items())
        b = fit_exponent([(n, r["step_seconds"]) for n, r in pts])
        # The tree's anonymous memory where every size has a sample (a task shorter than one sampling
        # interval has none), else the largest process's RSS, never a mix of the two.
        key = "peak_tree_anon_mb" if all(r.get("peak_tree_anon_mb") for _, r in pts) else "peak_rss_mb"
        mem = fit_exponent([(n, r[key]) for n, r in pts])
        result[step] = {"sizes": [n for n, _ in pts], "exponent": b,
                        "wall_exponent": fit_exponent([(n, r["wall_seconds"]) for n, r in pts]),
                        "memory_exponent": mem, "memory_measure": key,
                        "rss_exponent": fit_exponent([(n, r["peak_rss_mb"]) for n, r in pts]),
                        "meets_goal": None if b is None else b <= GOAL_EXPONENT,
                        "memory_flat": None if mem is None else mem <= MEMORY_FLAT_EXPONENT}
    return result


def run(sizes: list[int], out: str, quick: bool, shard_tasks: int = SHARD_TASKS, root: Path = DATA,
        train_max: int = TRAIN_MAX) -> dict:
    import shutil
    import tempfile

    machine = harness.machine()
    rows: list[dict] = []
    ingest_shards_measured = False
    generate: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-scale-") as tmp:
        for n in sizes:
            t = time.perf_counter()
            folder = images(n, root)
            generate[str(n)] = round(time.perf_counter() - t, 1)
            work = Path(tmp) / f"n{n}"
            logs = work / "logs"
            logs.mkdir(parents=True)
            found = []

            def add(r: dict, _n=n, _found=found) -> None:
                r["size"] = _n
                rows.append(r)
                _found.append(r)
                print(f"  {label(_n)} {r['step']}{'' if 'shard' not in r else ' ' + str(r['shard'])}: "
                      f"{r['wall_seconds']} s wall, {r['step_seconds']} s step, {r['images_per_second']} images/s, "
                      f"peak {r['peak_rss_mb']} MB RSS / {r['peak_tree_anon_mb']} MB tree anon", flush=True)

            print(f"scale: {n:,} images", flush=True)
            add(measure("ingest", {"source": str(folder), "out": str(work / "dataset")}, logs / "ingest.log"))
            sharded = sharded_ingest(folder, work / "ingest-shards", shard_tasks, n, logs)
            if sharded is not None:
                ingest_shards_measured = True
                for r in sharded:
                    add(r)
                shutil.rmtree(work / "ingest-shards", ignore_errors=True)
            pre = QUICK_PREPROCESS if quick else {}
            add(measure("preprocess", {"dataset": str(work / "dataset"), "out": str(work / "records"),
                                       "preprocess": pre}, logs / "preprocess.log"))
            for r in preprocess_sharded(work / "dataset", work / "shards", shard_tasks, n, logs, pre):
                add(r)
            shutil.rmtree(work / "shards", ignore_errors=True)
            if n <= train_max:
                add(measure("train", {"records": str(work / "records"), "out": str(work / "model")}, logs / "train.log"))
            shutil.rmtree(work, ignore_errors=True)
    payload = {"machine": machine, "sizes": sizes, "classes": CLASSES, "pixels": PIXELS, "shard_tasks": shard_tasks,
               "train_max": train_max, "goal_exponent": GOAL_EXPONENT, "memory_flat_exponent": MEMORY_FLAT_EXPONENT,
               "generate_seconds": generate, "ingest_shards_measured": ingest_shards_measured,
               "runs": rows, "growth": growth(rows)}
    save(payload, out, quick)
    return payload


def save(payload: dict, out: str, quick: bool) -> str:
    """<out>/scale.json and scale.md, the notes marked as harness.save marks them; the table is
    `summary.render_scale`'s, the page's section itself."""
    from benchmarks import summary

    m = payload["machine"]
    m["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    cores = m["cores"] or 1
    payload["quick"] = quick
    payload["notes"] = [*(["QUICK MODE: tiny sizes, these figures only show the script works"] if quick else []),
                        *([f"machine was loaded (1-minute load average above {cores} cores): figures are contaminated"]
                          if max(m["load_average_1m_before"], m["load_average_1m_after"]) > cores else [])]
    md = summary.render_scale(payload)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.json").write_text(json.dumps(payload, indent=1))
    (folder / "scale.md").write_text(md + "\n")
    print("\n" + md, flush=True)
    return md


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        r = run_step(argv[1], json.loads(argv[2]))
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps({**r, "peak_rss_mb": round(max(me, kids) / 1024, 1)}), flush=True)
        return 0
    args = harness.parse_args(__doc__, argv, **{
        "--sizes": {"default": "", "help": f"image counts, comma-separated, k and M allowed (default {DEFAULT_SIZES}; "
                                           f"{QUICK_SIZES} with --quick)"},
        "--shard-tasks": {"type": int, "default": SHARD_TASKS,
                          "help": f"ingest and preprocess shard tasks (default {SHARD_TASKS})"},
        "--train-max": {"type": int, "default": TRAIN_MAX, "help": f"one training epoch at sizes up to this "
                                                                    f"(default {TRAIN_MAX:,})"},
        "--data": {"default": str(DATA), "help": f"where the images are written once and reused (default {DATA})"}})
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    if any(n < 10 * CLASSES for n in sizes):
        raise SystemExit(f"sizes must be at least {10 * CLASSES} images (10 per class)")
    run(sizes, args.out, args.quick, args.shard_tasks, Path(args.data), args.train_max)
    return 0


if __name__ == "__main__":
    sys.exit(main())
