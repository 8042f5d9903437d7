"""End to end against the notebook: `imgclf run` (ingest with every check, preprocess, train, evaluate,
export a checked SavedModel) against the two notebook-style scripts (`benchmarks.notebook_idg`,
`benchmarks.notebook_idfd`: fit, evaluate, save an unchecked .keras file), on the same folder with the
same image size, colour mode, epochs and batch size.

Every run is a fresh process timed from outside, Python's and TensorFlow's start-up included, as a user
waits for it. The three contenders run interleaved, in the opposite order each repeat, so the machine's
load falls on all of them alike; the figure is the median wall time per contender and the ratios
ours / notebook. Ours runs with `--patience` equal to the epochs, so early stopping cannot make it train
less than the notebooks (which have no early stopping). Accuracy is reported from each side as it
measures it: ours on its test split (10 %, held out from training and model selection), the notebooks on
their 20 % validation subset (also their `validation_data`).

Workloads (`--workloads`): the embedded sample (5,000 PNGs, 28 px grey, 15 epochs, batch 64), 2,000 JPEGs
of 400 px at 160 px RGB (5 epochs, batch 32), all 70,000 Fashion-MNIST images (28 px grey, 11 epochs,
batch 128; ours at learning rate 0.003). The goals are issue 17's. Writes <out>/end_to_end.{json,md}.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import datasets, harness

REPO = harness.REPO
SAMPLE = REPO / "data" / "fashion-mnist-sample"
CONTENDERS = {
    "ours": "imgclf run (checked ingest, preprocess, train, evaluate, checked SavedModel)",
    "notebook_idg": "notebook: ImageDataGenerator.flow_from_directory, fit, evaluate, save .keras",
    "notebook_idfd": "notebook: image_dataset_from_directory + prefetch, fit, evaluate, save .keras",
}
NOTEBOOKS = ("notebook_idg", "notebook_idfd")


@dataclass(frozen=True)
class Workload:
    label: str
    image_size: int
    color_mode: str
    epochs: int
    batch_size: int
    goal: float
    """Issue 17's goal for ours / notebook wall time."""
    rounds: int = 2
    """Interleaved rounds when `--repeats` is not given (a 70,000-image round took 14.4 minutes here)."""
    min_accuracy: float | None = None
    max_seconds: float | None = None
    """Issue 17's goals for ours alone: test accuracy at least this, wall time under this."""
    ours_flags: tuple[str, ...] = ()
    """Ours only: options the notebooks do not have, which change no work done (the same epochs of the same
    images at the same batch on both sides)."""


# The 70,000 images: the run issue 17's other 70,000-image goal (at least 0.92 test accuracy, the whole
# pipeline under 5 minutes) is measured with, so one round shows both: 11 epochs at batch 128, ours with
# Adam at 0.003 (at batch 128 the default 0.001 stayed below the accuracy goal in 10 epochs where 0.003
# reached it; batch 64 at 0.001 reached it too but took longer). The same epochs and batch
# run on both sides; the notebooks keep the tutorials' Adam defaults.
WORKLOADS = {
    "sample": Workload("embedded sample, 5,000 PNGs 28 px grey", 28, "grayscale", 15, 64, 1.3),
    "photos": Workload("2,000 JPEGs of 400 px at 160 px RGB", 160, "rgb", 5, 32, 1.0),
    "fashion70k": Workload("all 70,000 Fashion-MNIST images, 28 px grey", 28, "grayscale", 11, 128, 1.0, 1,
                           0.92, 300.0, ("--learning-rate", "0.003")),
}
QUICK = {
    "sample": Workload("300 PNGs of the sample's kind, 28 px grey", 28, "grayscale", 2, 64, 1.3),
    "photos": Workload("200 JPEGs of 400 px at 160 px RGB", 160, "rgb", 1, 32, 1.0),
    "fashion70k": Workload("300 Fashion-MNIST PNGs, 28 px grey", 28, "grayscale", 2, 64, 1.0),
}


def build_source(name: str, folder: Path, quick: bool) -> Path:
    """The workload's image folder (the embedded sample is used where it lies)."""
    from imgclf.pipelines.local.sample_data import build_folder

    if name == "photos":
        return datasets.jpeg_folder(folder, 200 if quick else 2_000, 400)
    if name == "sample" and not quick:
        return SAMPLE
    build_folder(str(folder), per_class=30 if quick else 0, seed=3)
    return folder


def command(contender: str, source: Path, w: Workload, work: Path) -> list[str]:
    common = ["--image-size", str(w.image_size), "--color-mode", w.color_mode, "--epochs", str(w.epochs),
              "--batch-size", str(w.batch_size)]
    if contender == "ours":
        return [*harness.imgclf(), "run", "--data", str(source), *common, "--patience", str(w.epochs), "--quiet",
                *w.ours_flags, "--pipeline-root", str(work)]
    return [sys.executable, "-m", f"benchmarks.{contender}", "--data", str(source), *common, "--out", str(work)]


def read_ours(stdout: str, work: Path) -> dict:
    """Test accuracy and step times from the summary `imgclf run` prints; epochs trained from train.json."""
    from imgclf.components.contracts import TrainedModel, load_history

    acc = re.search(r"^test accuracy : ([0-9.]+)$", stdout, re.M)
    if not acc:
        raise RuntimeError(f"no 'test accuracy' line in imgclf run's summary:\n{stdout[-2000:]}")
    steps = dict(re.findall(r"^  (\S+) +([0-9.]+) s$", stdout.split("\nstep times:\n")[-1], re.M))
    (model_dir,) = [p.parent for p in work.glob("*/train/model/train.json")]
    result, history = TrainedModel.load(str(model_dir)).result, load_history(str(model_dir))
    # Time in fit but in no epoch, from the train step's own record (docs/performance.md): kept per run so
    # a slow round can be told apart from slow epochs.
    return {"accuracy": float(acc.group(1)), "epochs": result["epochs_run"],
            "step_seconds": {k: float(v) for k, v in steps.items()},
            "fit_seconds": round(result["seconds"], 1),
            "fit_outside_epochs_seconds": round(max(0.0, result["seconds"] - sum(history["epoch_seconds"])), 1),
            "seconds_before_each_epoch": [round(s, 2) for s in history.get("seconds_before_epoch", [])]}


def read_notebook(stdout: str) -> dict:
    last = json.loads(stdout.strip().splitlines()[-1])
    return {"accuracy": last["accuracy"], "epochs": last["epochs"], "fit_seconds": last["fit_seconds"],
            "script_seconds": last["wall_seconds"], "images": last["images"]}


def run_workload(name: str, w: Workload, source: Path, repeats: int, tmp: Path) -> dict:
    order = list(CONTENDERS)
    runs = []
    for r in range(repeats):
        for contender in (order if r % 2 == 0 else order[::-1]):
            work = tmp / f"{name}-{contender}-{r}"
            wall, cpu, stdout = harness.timed_process(command(contender, source, w, work), tmp / f"{work.name}.log")
            got = read_ours(stdout, work) if contender == "ours" else read_notebook(stdout)
            if got["epochs"] != w.epochs:
                raise RuntimeError(f"{contender} trained {got['epochs']} epochs, not {w.epochs}: not a fair pair")
            runs.append({"contender": contender, "repeat": r, "wall_seconds": round(wall, 1),
                         "cpu_seconds": round(cpu, 1), **got})
            print(f"  {name} repeat {r + 1}/{repeats} {contender}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"accuracy {got['accuracy']:.4f}", flush=True)
    by = {c: [x for x in runs if x["contender"] == c] for c in CONTENDERS}
    median = {c: round(statistics.median(x["wall_seconds"] for x in rs), 1) for c, rs in by.items()}
    ours_steps = {s: round(statistics.median(x["step_seconds"][s] for x in by["ours"]), 1)
                  for s in by["ours"][0]["step_seconds"]}
    ratios = {nb: round(median["ours"] / median[nb], 2) for nb in NOTEBOOKS}
    return {"label": w.label, "image_size": w.image_size, "color_mode": w.color_mode, "epochs": w.epochs,
            "batch_size": w.batch_size, "images": sum(1 for f in source.rglob("*") if f.is_file()),
            "goal_ratio": w.goal, "runs": runs, "median_wall_seconds": median, "ratios": ratios,
            "meets_goal": {nb: ratio <= w.goal for nb, ratio in ratios.items()},
            "median_accuracy": {c: round(statistics.median(x["accuracy"] for x in rs), 4) for c, rs in by.items()},
            "ours_median_step_seconds": ours_steps, "rounds": repeats, **own_goals(w, by["ours"])}


def own_goals(w: Workload, ours: list[dict]) -> dict:
    """Ours against the workload's absolute goals (median accuracy, median wall time), where it has any."""
    acc = statistics.median(x["accuracy"] for x in ours)
    wall = statistics.median(x["wall_seconds"] for x in ours)
    goals = {}
    if w.min_accuracy is not None:
        goals["accuracy_goal"] = {"goal": w.min_accuracy, "measured": round(acc, 4), "met": acc >= w.min_accuracy}
    if w.max_seconds is not None:
        goals["seconds_goal"] = {"goal": w.max_seconds, "measured": round(wall, 1), "met": wall < w.max_seconds}
    return goals


def table(result: dict) -> str:
    rows = ["| workload | contender | wall time (median) | each run | accuracy | ours / this | goal |",
            "|---|---|---:|---|---:|---:|---|"]
    for name, wl in result["workloads"].items():
        head = (f"{name}: {wl['label']}, {wl['epochs']} epoch{'s' * (wl['epochs'] != 1)}, batch {wl['batch_size']}, "
                f"{wl['rounds']} round{'s' * (wl['rounds'] != 1)}")
        for c, label in CONTENDERS.items():
            each = ", ".join(f"{x['wall_seconds']}" for x in wl["runs"] if x["contender"] == c)
            where = "test split" if c == "ours" else "validation subset"
            ratio = f"{wl['ratios'][c]}x" if c in wl["ratios"] else ""
            goal = (f"≤ {wl['goal_ratio']}x: {'met' if wl['meets_goal'][c] else 'not met'}"
                    if c in wl["ratios"] else "")
            rows.append(f"| {head if c == 'ours' else ''} | {label} | {wl['median_wall_seconds'][c]} s | {each} "
                        f"| {wl['median_accuracy'][c]:.4f} ({where}) | {ratio} | {goal} |")
    steps = [f"- {name}, imgclf run's steps (median): " + ", ".join(f"{s} {sec} s" for s, sec in
                                                                     wl["ours_median_step_seconds"].items())
             for name, wl in result["workloads"].items()]
    own = [f"- {name}, imgclf run alone: " + "; ".join(
        f"{what} {g['measured']}{unit} (goal {sign} {g['goal']}{unit}: {'met' if g['met'] else 'not met'})"
        for key, what, sign, unit in (("accuracy_goal", "test accuracy", "≥", ""),
                                      ("seconds_goal", "wall time", "<", " s")) if (g := wl.get(key)))
           for name, wl in result["workloads"].items() if "accuracy_goal" in wl or "seconds_goal" in wl]
    fits = [f"- {name}, imgclf run's `fit` (each run): " + ", ".join(
        f"{x['fit_seconds']} s, {x['fit_outside_epochs_seconds']} s of it outside the epochs"
        for x in wl["runs"] if x["contender"] == "ours" and x.get("fit_seconds") is not None)
            for name, wl in result["workloads"].items()]
    return "\n".join(rows + [""] + steps + [f for f in fits if not f.endswith(": ")] + own)


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, argv, **{
        "--workloads": {"default": ",".join(WORKLOADS), "help": f"comma-separated, of {','.join(WORKLOADS)} "
                                                               "(default all)"},
        "--repeats": {"type": int, "help": "interleaved rounds per workload (default: 2, and 1 for fashion70k; "
                                           "1 with --quick)"}})
    names = [n for n in args.workloads.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    result = {"machine": harness.machine(), "repeats": args.repeats, "contenders": CONTENDERS, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        tmp = Path(tmp)
        for name in names:
            w = (QUICK if args.quick else WORKLOADS)[name]
            repeats = args.repeats or (1 if args.quick else w.rounds)
            source = build_source(name, tmp / f"{name}-images", args.quick)
            mb = datasets.warm_page_cache(source) / 2**20
            imports = harness.warm_imports()
            print(f"end_to_end: {name}: {w.label} ({mb:.1f} MB), {w.epochs} epochs, batch {w.batch_size}, "
                  f"{repeats} interleaved round(s); imports warmed in {imports:.1f} s", flush=True)
            result["workloads"][name] = {**run_workload(name, w, source, repeats, tmp),
                                         "imports_warmed_seconds": round(imports, 1)}
            for nb, ratio in result["workloads"][name]["ratios"].items():
                print(f"  {name}: ours / {nb} = {ratio}x (goal ≤ {w.goal}x)", flush=True)
    harness.save("end_to_end", args.out, result, table(result),
                 "End to end: imgclf run vs notebook scripts, whole processes timed from outside, "
                 "interleaved rounds, median wall time", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
