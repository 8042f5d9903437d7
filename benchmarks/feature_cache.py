"""The head phase with and without cached bottleneck features (`cache_features` on vs off), MobileNetV2 and
EfficientNetV2-B0 at 160x160 RGB on CPU: wall time of the whole head phase (the cached run includes
computing the features once), steady images/s, and test accuracy of each.

Each run trains in a fresh process on preprocess's TFRecords of Fashion-MNIST (JPEGs upscaled to 160 px),
batch 32, augmentation off, the same seed. The backbones' weights are saved random initialisations,
frozen as pretrained ones would be (nothing can be downloaded here): accuracy is low in absolute terms,
what matters is that both paths reach the same. Writes <out>/feature_cache.{json,md}.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import datasets, harness

MODULE = "benchmarks.feature_cache"
BATCH = 32
SIZE = 160


def measure(model: str, cache: str, dataset_dir: str, model_dir: str, weights: str, epochs: int) -> dict:
    import keras

    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.lib.layers import FAMILIES
    from imgclf.components.train.step import train

    if not Path(weights).exists():
        getattr(keras.applications, FAMILIES[model].constructor)(
            include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(weights)
    start = time.perf_counter()
    r = train(dataset_dir, model_dir, architecture=model, weights=weights, augment=False, cache_features=cache,
              epochs=epochs, patience=epochs, batch_size=BATCH, learning_rate=0.01, seed=1)
    wall = time.perf_counter() - start
    ev = evaluate(dataset_dir, model_dir, model_dir + ".pred")
    return {"model": model, "cache_features": cache, "wall_seconds": round(wall, 1),
            "test_accuracy": round(ev.metrics["accuracy"], 4), **asdict(r)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        harness.child_report(measure(argv[1], argv[2], argv[3], argv[4], argv[5], int(argv[6])))
        return 0
    args = harness.parse_args(__doc__, argv, **{
        "--images": {"type": int, "help": "160 px JPEGs (80% train; default 1,000, 100 with --quick)"},
        "--epochs": {"type": int, "help": "head-phase epochs (default 5; 2 with --quick)"},
        "--models": {"default": "mobilenet_v2,efficientnet_v2_b0", "help": "families to compare"}})
    n = args.images or (100 if args.quick else 1_000)
    epochs = args.epochs or (2 if args.quick else 5)
    result = {"machine": harness.machine(), "batch_size": BATCH, "epochs": epochs, "runs": [], "speedups": {}}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        tmp = Path(tmp)
        data = datasets.prepare(datasets.jpeg_folder(tmp / "jpeg160", n, SIZE), tmp / "d160", SIZE, "rgb")
        for model in filter(None, args.models.split(",")):
            pair = {}
            # Interleaved per model, so a change in the machine's load hits both sides alike.
            for cache in ("off", "on"):
                r = harness.in_fresh_process(MODULE, model, cache, data["dataset_dir"], tmp / f"m-{model}-{cache}",
                                             tmp / f"{model}.weights.h5", epochs)
                r["train_images"] = data["train_images"]
                result["runs"].append(r)
                pair[cache] = r
                print(f"  {model} cache_features={cache}: head phase {r['wall_seconds']} s, steady "
                      f"{r['images_per_second']:,.0f} images/s, test accuracy {r['test_accuracy']:.3f}", flush=True)
            result["speedups"][model] = {
                "wall": round(pair["off"]["wall_seconds"] / pair["on"]["wall_seconds"], 1),
                "steady_images_per_second": round(pair["on"]["images_per_second"] /
                                                  pair["off"]["images_per_second"], 1)}
    rows = ["| model | cache_features | train images | head-phase wall time | steady images/s | test accuracy | "
            "speed-up (wall / steady) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        s = result["speedups"][r["model"]]
        rows.append(f"| {r['model']} | {r['cache_features']} | {r['train_images']:,} | {r['wall_seconds']} s | "
                    f"{r['images_per_second']:,.0f} | {r['test_accuracy']:.3f} | "
                    + (f"{s['wall']}x / {s['steady_images_per_second']}x |" if r["cache_features"] == "on" else "|"))
    harness.save("feature_cache", args.out, result, "\n".join(rows),
                 f"Head phase at {SIZE} px on CPU with and without cached bottleneck features, batch {BATCH}, "
                 f"{epochs} epochs (wall time includes computing the features once)", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
