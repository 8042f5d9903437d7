"""Wall time, throughput and peak memory of ingest and preprocess at 7,000 vs 70,000 Fashion-MNIST
images (local PNG folders built from Debian's dataset-fashion-mnist). Each step runs in a fresh process
so its peak RSS is its own. Prints a Markdown table; writes build/bench/steps_scaling.{json,md}."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.sample_data import build_folder

MEASURE = """
import json, resource, sys, time
step, args = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
if step == "ingest":
    from components.ingest import ingest
    n = ingest(args[0], args[1]).images
else:
    from components.preprocess import preprocess
    n = sum(preprocess(args[0], args[1], image_size=28, color_mode="grayscale").counts.values())
print(json.dumps({"images": n, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(step: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, step, *args], capture_output=True, text=True,
                          check=True, env=os.environ)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for n, per_class in ((7_000, 700), (70_000, 0)):
            folder = t / f"fmnist{n}"
            build_folder(str(folder), per_class=per_class, seed=3)
            for step, args in (("ingest", (str(folder), str(t / f"ds{n}"))),
                               ("preprocess", (str(t / f"ds{n}"), str(t / f"pp{n}")))):
                r = measure(step, *args)
                assert r["images"] == n, r
                r.update(step=step, n=n, seconds=round(r["seconds"], 1), images_per_s=round(n / r["seconds"]),
                         peak_rss_mb=round(r["peak_rss_mb"], 1))
                runs.append(r)
                print(r, flush=True)
    table = ["| step | images | wall time | images/s | peak memory (RSS) |", "|---|---:|---:|---:|---:|"]
    table += [f"| {r['step']} | {r['n']:,} | {r['seconds']} s | {r['images_per_s']:,} | {r['peak_rss_mb']} MB |"
              for r in runs]
    md = "\n".join(table)
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps_scaling.json").write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "runs": runs}, indent=1))
    (out / "steps_scaling.md").write_text(md + "\n")
    print(f"\nIngest and preprocess (local PNG folder, 28x28 grayscale, {os.cpu_count()} cores):\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
