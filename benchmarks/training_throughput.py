"""Training images/s on CPU and the share of step time spent waiting for input, as the train step reports
them (its TrainResult: steady = median of the epochs after the first), for the baseline CNN and MobileNetV2
(weights none: nothing can be downloaded here) at 160x160 RGB, and the baseline at 28x28 grey.

Each model trains in a fresh process on preprocess's TFRecords of Fashion-MNIST (JPEGs upscaled to 160 px;
PNGs at 28 px), batch 32, augmentation in the model as shipped. Also writes <out>/gpu_input.npz: real
preprocessed training pixels for `make bench-gpu`, whose machine has no TensorFlow to read TFRecords.
Writes <out>/training_throughput.{json,md}.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks import datasets, harness
from imgclf.pipelines.local.sample_data import build_folder

MODULE = "benchmarks.training_throughput"
BATCH = 32
GPU_INPUT = "gpu_input.npz"
# 512 images of 160x160x3 are 39 MB raw: under the 64 MiB a remote GPU run may carry, even uncompressed.
GPU_INPUT_IMAGES = 512


def measure(model: str, dataset_dir: str, model_dir: str, epochs: int) -> dict:
    from imgclf.components.train.step import train

    r = train(dataset_dir, model_dir, architecture=model, epochs=epochs, batch_size=BATCH, weights="none",
              patience=epochs, seed=1)
    return {"model": model, **asdict(r)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        harness.child_report(measure(argv[1], argv[2], argv[3], int(argv[4])))
        return 0
    args = harness.parse_args(__doc__, argv, **{
        "--images": {"type": int, "help": "160 px JPEGs to train on (80% train; default 1,000, 100 with --quick)"},
        "--epochs": {"type": int, "help": "epochs per model (default 3; 2 with --quick)"},
        "--models": {"default": "baseline,mobilenet_v2", "help": "models at 160 px (default baseline,mobilenet_v2)"}})
    n = args.images or (100 if args.quick else 1_000)
    n28 = 200 if args.quick else 5_000
    epochs = args.epochs or (2 if args.quick else 3)
    result = {"machine": harness.machine(), "batch_size": BATCH, "epochs": epochs, "runs": []}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        tmp = Path(tmp)
        big = datasets.prepare(datasets.jpeg_folder(tmp / "jpeg160", n, 160), tmp / "d160", 160, "rgb")
        small_folder = tmp / "png28"
        build_folder(str(small_folder), per_class=n28 // datasets.CLASSES, seed=7)
        small = datasets.prepare(small_folder, tmp / "d28", 28, "grayscale")
        npz = datasets.export_npz(big["dataset_dir"], Path(args.out) / GPU_INPUT, GPU_INPUT_IMAGES)
        result["gpu_input"] = npz
        print(f"training_throughput: {npz['images']} preprocessed images written to {npz['path']} "
              f"({npz['bytes'] / 2**20:.1f} MB) for make bench-gpu", flush=True)
        plan = [(m, 160, big) for m in args.models.split(",") if m] + [("baseline", 28, small)]
        for model, size, data in plan:
            r = harness.in_fresh_process(MODULE, model, data["dataset_dir"], tmp / f"m-{model}-{size}", epochs)
            r.update(image_size=size, channels=3 if size == 160 else 1, train_images=data["train_images"])
            result["runs"].append(r)
            print(f"  {model} at {size} px: steady {r['images_per_second']:,} images/s (first epoch "
                  f"{r['first_epoch_images_per_second']:,}), input wait {r['input_wait_share']:.1%}, "
                  f"peak {r['peak_rss_mb']} MB", flush=True)
    rows = ["| model | input | train images | first epoch images/s | steady images/s | steady epoch | "
            "input wait (share of step time) | peak RSS |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {r['model']} | {r['image_size']}x{r['image_size']}x{r['channels']} | {r['train_images']:,} "
             f"| {r['first_epoch_images_per_second']:,.0f} | {r['images_per_second']:,.0f} | {r['epoch_seconds']} s "
             f"| {r['input_wait_share']:.1%} | {r['peak_rss_mb']:,.0f} MB |" for r in result["runs"]]
    harness.save("training_throughput", args.out, result, "\n".join(rows),
                 f"Training on CPU, batch {BATCH}, {epochs} epochs, steady = median of epochs 2-{epochs}", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
