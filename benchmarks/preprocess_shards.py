"""Wall time of preprocess spread over 1, 2 and 4 shard tasks under kfp.local, on all 70,000
Fashion-MNIST images (28 px grey, as `make run`), next to one in-process preprocess.

Ingest runs once, outside the clock; each kfp.local run imports its manifest and runs plan -> shard
tasks (a ParallelFor) -> merge, the graph the training pipeline uses. The runs are interleaved per round
so machine load hits every task count alike. Every sharded output is checked to equal the single task's,
byte for byte. On this machine the shard tasks share its cores (and preprocess already decodes on a
thread pool): the gain is bounded by the cores, and the per-task seconds are what a cluster, one pod
per task, would see. Writes <out>/preprocess_shards.{json,md}.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from benchmarks import harness

FULL_FOLDER = "build/fashion-mnist-full"
OPTS = {"image_size": 28, "color_mode": "grayscale"}


def run_sharded(dataset_dir: str, tasks: int, pipeline_root: str, **opts) -> tuple[str, float, dict]:
    """Preprocess of ingest's `dataset_dir` as plan -> `tasks` shard tasks -> merge under kfp.local:
    (the records folder, wall seconds of the run, seconds of the plan and merge tasks)."""
    from kfp import dsl

    from imgclf.pipelines.definitions.training import sharded_preprocess
    from imgclf.pipelines.local.run import run_pipeline

    def shards_pipeline():
        manifest = dsl.importer(artifact_uri=str(Path(dataset_dir).resolve()), artifact_class=dsl.Dataset,
                                reimport=False)
        return sharded_preprocess(manifest.output, {**opts, "shard_tasks": tasks})

    shards_pipeline.__annotations__["return"] = dsl.Dataset  # a real type (this module's annotations are text)
    task, timings, seconds = run_pipeline(dsl.pipeline(name="imgclf-preprocess-shards")(shards_pipeline), {},
                                          pipeline_root)
    return task.output.path, seconds, {k: round(timings[f"preprocess-{k}"], 2) for k in ("plan", "merge")}


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        h.update(p.name.encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _shard_seconds(records: str) -> list[float]:
    run_dir = Path(records).parents[1]
    return [json.loads(p.read_text())["seconds"]
            for p in sorted(run_dir.glob("*-iteration-*/preprocess-shard/part/part.json"))]


def main(argv: list[str] | None = None) -> int:
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess
    from imgclf.pipelines.local.sample_data import build_folder

    args = harness.parse_args(__doc__, argv, **{
        "--folder": {"default": FULL_FOLDER, "help": f"the image folder (default {FULL_FOLDER}; built if missing)"},
        "--tasks": {"default": "1,2,4", "help": "shard task counts, comma-separated"},
        "--rounds": {"type": int, "default": 1, "help": "interleaved rounds"}})
    counts = [int(n) for n in args.tasks.split(",")]
    machine = harness.machine()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-shards-") as tmp:
        work = Path(tmp)
        folder = Path(args.folder)
        if args.quick:
            folder = work / "images"
            build_folder(str(folder), per_class=30)
        elif not folder.is_dir():
            build_folder(str(folder), per_class=0)
        opts = {**OPTS, **({"images_per_shard": 64} if args.quick else {})}
        t = time.perf_counter()
        ingest(str(folder), str(work / "ds"))
        ingest_seconds = time.perf_counter() - t
        runs: dict[str, list[float]] = {"in-process": [], **{str(n): [] for n in counts}}
        per_task: dict[str, list[float]] = {}
        plan_merge: dict[str, dict] = {}
        reference = ""
        for r in range(args.rounds):
            t = time.perf_counter()
            one = preprocess(str(work / "ds"), str(work / f"one-{r}"), **opts)
            runs["in-process"].append(time.perf_counter() - t)
            reference = _digest(str(work / f"one-{r}"))
            for n in counts:
                records, seconds, plan_merge[str(n)] = run_sharded(str(work / "ds"), n, str(work / f"runs-{n}-{r}"),
                                                                   **opts)
                if _digest(records) != reference:
                    raise RuntimeError(f"{n} shard tasks wrote records that differ from one task's")
                runs[str(n)].append(seconds)
                per_task[str(n)] = _shard_seconds(records)
        images = sum(one.counts.values())
    best = {k: min(v) for k, v in runs.items()}
    base = best[str(counts[0])]
    rows = [f"| one preprocess, in-process (no kfp.local) | - | {best['in-process']:.1f} | - | - | - |"]
    rows += [f"| kfp.local: plan, {n} shard task(s), merge | {n} | {best[str(n)]:.1f} | {base / best[str(n)]:.2f} | "
             f"{plan_merge[str(n)]['plan']:.1f} / {plan_merge[str(n)]['merge']:.1f} | "
             f"{', '.join(f'{s:.1f}' for s in per_task[str(n)])} |" for n in counts]
    md = "\n".join([f"{images:,} images at {OPTS['image_size']} px grey; ingest (not timed below) {ingest_seconds:.1f} s; "
                    f"best of {args.rounds} interleaved round(s)", "",
                    "| run | shard tasks | wall s | speed-up vs first | plan / merge task s (last round) | "
                    "each shard task's own work s |", "|---|---|---|---|---|---|", *rows])
    harness.save("preprocess_shards", args.out, {
        "machine": machine, "images": images, "ingest_seconds": round(ingest_seconds, 2),
        "wall_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "shard_task_seconds": per_task, "plan_merge_task_seconds": plan_merge, "outputs_identical": True}, md,
        "Preprocess over shard tasks (kfp.local)", args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
