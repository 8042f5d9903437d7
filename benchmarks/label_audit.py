"""Label audit, measured: move a seeded share of a folder's labels to other classes (through a relabel.csv,
so the images are never touched), run `imgclf audit`, and report how many of the moved files it finds:
recall and precision of the moved files among the top k and top 2k suspects (k = the moved files the
audit scored: it leaves the test split out).

Workloads (`--workloads`): the embedded sample (5,000 PNGs, 28 px grey, 5 % moved, 5 folds) and all
70,000 Fashion-MNIST images (2 % moved, 5 folds: five trainings on about 50,000 images, so it is not
part of `make bench`). Writes <out>/label_audit.{json,md}.
"""
from __future__ import annotations

import base64
import csv
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import harness

REPO = harness.REPO
SAMPLE = REPO / "data" / "fashion-mnist-sample"


@dataclass(frozen=True)
class Workload:
    label: str
    moved_share: float
    epochs: int
    batch_size: int
    folds: int = 5
    flags: tuple = ()


WORKLOADS = {
    "sample": Workload("embedded sample, 5,000 PNGs 28 px grey", 0.05, 6, 64),
    "fashion70k": Workload("all 70,000 Fashion-MNIST images, 28 px grey", 0.02, 8, 128,
                           flags=("--learning-rate", "0.003")),
}
QUICK = {
    "sample": Workload("300 PNGs of the sample's kind, 28 px grey", 0.05, 2, 64, 3),
    "fashion70k": Workload("300 Fashion-MNIST PNGs, 28 px grey", 0.02, 2, 64, 3),
}


def build_source(name: str, folder: Path, quick: bool) -> Path:
    from imgclf.pipelines.local.sample_data import build_folder

    if name == "sample" and not quick:
        return SAMPLE
    build_folder(str(folder), per_class=30 if quick else 0, seed=3)
    return folder


def move_labels(source: Path, share: float, seed: int, relabel: Path) -> dict[str, str]:
    """Write relabel.csv moving a seeded `share` of the files (at least one) to another class, chosen
    uniformly; returns location -> the label it was given. Locations are what ingest records for a local
    folder: the file's absolute path."""
    files = sorted(p for p in source.resolve().glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in files})
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, round(share * len(files))))
    moved = {str(p): rng.choice([c for c in classes if c != p.parent.name]) for p in chosen}
    with open(relabel, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["location", "label"])
        w.writerows(sorted(moved.items()))
    return moved


def found(suspects: list[str], moved: set[str], top: int) -> dict:
    hits = sum(loc in moved for loc in suspects[:top])
    return {"top": top, "found": hits, "recall": round(hits / len(moved), 4),
            "precision": round(hits / min(top, len(suspects)), 4) if suspects else 0.0}


def run_workload(name: str, w: Workload, source: Path, work: Path, seed: int) -> dict:
    relabel = work / "relabel.csv"
    moved = move_labels(source, w.moved_share, seed, relabel)
    out = work / "audit"
    argv = [*harness.imgclf(), "audit", "--data", str(source), "--relabel", str(relabel), "--image-size", "28",
            "--color-mode", "grayscale", "--epochs", str(w.epochs), "--batch-size", str(w.batch_size),
            "--folds", str(w.folds), "--quiet", "--output-dir", str(out), "--pipeline-root", str(work / "runs"),
            *w.flags]
    wall, cpu, _ = harness.timed_process(argv, work / "audit.log")
    return {"label": w.label, "folds": w.folds, "epochs": w.epochs, **score(out, moved),
            "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}


def score(out: Path, moved: dict[str, str]) -> dict:
    """What an audit in `out` found of the `moved` files. Only the moved files it audited count (k): the
    audit scores the train and validation splits, and a moved file that preprocess put in the test split
    can never be found, so counting it would understate recall by about the test share."""
    with open(out / "suspects.csv", newline="", encoding="utf-8") as f:
        suspects = [r["location"] for r in csv.DictReader(f)]
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        audited = {r["location"] for r in csv.DictReader(f)}
    targets = set(moved) & audited
    k = len(targets)
    summary = json.loads((out / "audit.json").read_text())
    return {"images": summary["images"], "moved": len(moved), "moved_audited": k, "suspects": len(suspects),
            "kinds": summary["kinds"], "out_of_fold_accuracy": summary["out_of_fold_accuracy"],
            "top_k": found(suspects, targets, k), "top_2k": found(suspects, targets, 2 * k)}


def suspects_figure(audit_dir: Path, png: Path, top: int = 24, moved: dict | None = None,
                    leave_out_moved: bool = False) -> None:
    """The top suspects of an audit as one PNG grid (the pictures in docs/how-to/audit.md): each tile's
    rank, kind, given and suggested label and file name, as suspects.html shows them. With
    `leave_out_moved`, the files the benchmark moved are passed over: what remains are suspects in the
    labels as published."""
    from PIL import Image

    from imgclf.components.lib.images import upright_rgb
    from imgclf.components.lib.reports import image_grid

    with open(audit_dir / "suspects.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not (leave_out_moved and moved and r["location"] in moved)][:top]
    pixels = [np.asarray(upright_rgb(Image.open(r["location"]))) for r in rows]
    titles = [f"#{r['rank']} {r['kind'].replace(' across classes', '')}\ngiven {r['label']}\n"
              f"-> {r['suggested']} ({float(r['suggested_probability']):.2f})\n{Path(r['location']).name}"
              + ("\n(moved)" if moved and r["location"] in moved else "")
              for r in rows]
    uri = image_grid(pixels, titles, cols=6, tile=112)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(base64.b64decode(uri.split(",", 1)[1]))


def table(result: dict) -> str:
    rows = ["| workload | images audited | moved | moved and audited (k) | folds x epochs | suspects | recall@k | "
            "precision@k | recall@2k | precision@2k | out-of-fold accuracy | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["workloads"].items():
        rows.append(f"| {name}: {r['label']} | {r['images']} | {r['moved']} | {r['moved_audited']} | "
                    f"{r['folds']} x {r['epochs']} | "
                    f"{r['suspects']} | {r['top_k']['recall']} | {r['top_k']['precision']} | {r['top_2k']['recall']} | "
                    f"{r['top_2k']['precision']} | {r['out_of_fold_accuracy']} | {r['wall_seconds']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, argv, **{
        "--workloads": {"default": "sample", "help": f"comma-separated, of {','.join(WORKLOADS)} (default: sample; "
                                                     "fashion70k trains five models on 50,000 images)"},
        "--seed": {"type": int, "default": 7, "help": "which files are moved, and to which class"},
        "--figure": {"default": "", "help": "also draw the first workload's top suspects into this PNG"},
        "--keep": {"default": "", "help": "keep the runs and suspects under this folder (default: a temporary "
                                          "folder, removed)"}})
    names = [n for n in args.workloads.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    result = {"machine": harness.machine(), "seed": args.seed, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="imgclf-audit-bench-") as tmp:
        tmp = args.keep or tmp
        for name in names:
            w = (QUICK if args.quick else WORKLOADS)[name]
            work = Path(tmp) / name
            work.mkdir(parents=True)
            source = build_source(name, work / "images", args.quick)
            print(f"label_audit: {name}: {w.label}, {w.moved_share:.0%} moved, {w.folds} folds x {w.epochs} epochs",
                  flush=True)
            r = result["workloads"][name] = run_workload(name, w, source, work, args.seed)
            if args.figure and name == names[0]:
                suspects_figure(work / "audit", Path(args.figure))
            print(f"  {name}: recall {r['top_k']['recall']} / precision {r['top_k']['precision']} in the top "
                  f"{r['moved']}; recall {r['top_2k']['recall']} / precision {r['top_2k']['precision']} in the top "
                  f"{2 * r['moved']}", flush=True)
    harness.save("label_audit", args.out, result, table(result),
                 "Label audit: moved labels found among the top k and 2k suspects (k = moved files the audit scored)", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
