"""Gather the tables the benchmarks wrote into one `<out>/results.md` (what the README's Performance
section is pasted from) and print it, so `make bench` ends with every figure in one place."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import harness

ORDER = ("end_to_end", "step_speed", "input_throughput", "training_throughput", "feature_cache", "steps_scaling", "storage_ingest",
         "preprocess_shards", "gpu_training")


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, argv)
    out = Path(args.out)
    parts = [(out / f"{name}.md").read_text().strip() for name in ORDER if (out / f"{name}.md").exists()]
    if not parts:
        raise SystemExit(f"{out}: no benchmark results; run make bench first")
    text = "\n\n".join(parts) + "\n"
    (out / "results.md").write_text(text)
    print(f"\n=== all benchmark tables ({out / 'results.md'}) ===\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
