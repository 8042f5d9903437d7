"""Ingest throughput from an S3 API server (moto on 127.0.0.1, standing in for MinIO) and peak memory
at 1,000 vs 10,000 small images. Prints a Markdown table; writes build/bench/storage_ingest.{json,md}.

Each measurement runs ingest in a fresh process so its peak RSS is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from imgclf.components.lib import storage
from imgclf.pipelines.local.sample_data import build_folder
from tests import stores

MEASURE = """
import json, resource, sys, time
from imgclf.components.ingest.step import ingest
t = time.perf_counter()
s = ingest(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]))
dt = time.perf_counter() - t
print(json.dumps({"images": s.images, "seconds": dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_ingest(uri: str, workers: int, scratch: Path) -> dict:
    out = scratch / f"ds-{time.monotonic_ns()}"
    proc = subprocess.run([sys.executable, "-c", MEASURE, uri, str(out), str(workers)], capture_output=True,
                          text=True, check=True, env=os.environ)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, argv)
    small, big = (100, 300) if args.quick else (1_000, 10_000)
    results = {"machine": f"{os.cpu_count()} cores", "store": "moto_server (S3 API) on 127.0.0.1", "runs": []}
    server = stores.moto_s3()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", IMGCLF_S3_ENDPOINT_URL=server.url)
    storage.reset()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            fs, _ = storage.filesystem("s3://bench")
            fs.mkdir("bench")
            for n in (small, big):
                folder = scratch / f"img{n}"
                build_folder(str(folder), per_class=n // 10, seed=1)
                t = time.perf_counter()
                storage.upload_dir(str(folder), f"s3://bench/img{n}")
                print(f"uploaded {n} images in {time.perf_counter() - t:.1f}s", flush=True)
            for n, workers in ((small, 1), (small, 16), (big, 16), (big, 32)):
                r = run_ingest(f"s3://bench/img{n}", workers, scratch)
                assert r["images"] == n, r
                r.update(n=n, workers=workers, images_per_s=round(n / r["seconds"], 1),
                         seconds=round(r["seconds"], 2), peak_rss_mb=round(r["peak_rss_mb"], 1))
                results["runs"].append(r)
                print(r, flush=True)
    finally:
        server.stop()
    table = ["| images | parallel reads | wall time | images/s | peak memory (RSS) |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {r['n']:,} | {r['workers']} | {r['seconds']} s | {r['images_per_s']:,} | {r['peak_rss_mb']} MB |"
              for r in results["runs"]]
    md = "\n".join(table)
    if args.quick:
        md = "> QUICK MODE: tiny sizes, these figures only show the script works\n\n" + md
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "storage_ingest.json").write_text(json.dumps(results, indent=1))
    (out / "storage_ingest.md").write_text(md + "\n")
    print(f"\nIngest from S3 ({results['store']}, {results['machine']}):\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
