"""Wall time, throughput and peak memory of ingest and preprocess at 7,000 vs 70,000 Fashion-MNIST
images (local PNG folders built from Debian's dataset-fashion-mnist), with 1% of the files damaged in
assorted ways (truncated, emptied, replaced by text, converted to TIFF, duplicated). Each step runs in
a fresh process so its peak RSS is its own. Prints a Markdown table; writes
build/bench/steps_scaling.{json,md}."""
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
quarantined = 0
if step == "ingest":
    from components.ingest import ingest
    s = ingest(args[0], args[1])
    n, quarantined = s.images, s.quarantined
else:
    from components.preprocess import preprocess
    n = sum(preprocess(args[0], args[1], image_size=28, color_mode="grayscale").counts.values())
print(json.dumps({"images": n, "quarantined": quarantined, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


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
            damaged = damage(folder)
            print(f"{n} images, damaged: {damaged}", flush=True)
            for step, args in (("ingest", (str(folder), str(t / f"ds{n}"))),
                               ("preprocess", (str(t / f"ds{n}"), str(t / f"pp{n}")))):
                r = measure(step, *args)
                r.update(step=step, n=n, damaged=damaged, seconds=round(r["seconds"], 1),
                         images_per_s=round(r["images"] / r["seconds"]),
                         peak_rss_mb=round(r["peak_rss_mb"], 1))
                runs.append(r)
                print(r, flush=True)
    table = ["| step | files (1% damaged) | usable images | quarantined | wall time | images/s | peak memory (RSS) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['step']} | {r['n']:,} | {r['images']:,} | {r['quarantined'] if r['step'] == 'ingest' else ''} "
              f"| {r['seconds']} s | {r['images_per_s']:,} | {r['peak_rss_mb']} MB |" for r in runs]
    md = "\n".join(table)
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps_scaling.json").write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "runs": runs}, indent=1))
    (out / "steps_scaling.md").write_text(md + "\n")
    print(f"\nIngest and preprocess (local PNG folder with 1% damaged files, 28x28 grayscale, "
          f"{os.cpu_count()} cores):\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
