"""Input throughput against the notebook path users have today, on the same JPEG folders, 160x160, batch 32.

The folders hold Fashion-MNIST upscaled to each source size (`--source-sizes`, default 500 and 1024 px),
one table row group per size: every contender reads each folder, decoding and resizing to 160 px.

Contenders (each in a fresh process, after the folder has been read once so the page cache is warm for all):
- `ImageDataGenerator.flow_from_directory` (rescale only, and with the tutorials' classic augmentation:
  shear 0.2, zoom 0.2, horizontal flip), consumed batch by batch as `fit` does with its default one worker;
- `keras.utils.image_dataset_from_directory`, without and with `.prefetch(AUTOTUNE)`;
- ours: preprocess's TFRecords read by the train step's own input pipeline, then the models' augmentation
  layer with flip, rotation and zoom (what the transfer families ship; the baseline flips only) and
  rescaling, in training mode, as one compiled function, and the same without augmentation to show its
  cost.
Every contender ends with a TensorFlow tensor ready for a train step (ImageDataGenerator's numpy batches are
converted, as `fit`'s data adapter converts them); TensorFlow is imported before any clock starts, so "setup"
is the file listing and pipeline construction alone. Each runs several epochs:
the first (cold: file listing, tracing, shuffle buffer) apart from the steady state (median of the rest).
Ratios are like with like: ours with augmentation against ImageDataGenerator with augmentation, ours
without against the baselines without. Ours also pays a one-off ingest + preprocess, reported
separately with the epochs after which it has paid for itself against each baseline. Writes <out>/input_throughput.{json,md}.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks import datasets, harness

MODULE = "benchmarks.input_throughput"
SIZE, BATCH = 160, 32
SOURCE_SIZES = (500, 1024)
"""JPEG sizes on disk by default: photo-like sources, which must be decoded and resized to SIZE every
epoch by the notebook paths and once by ours (at SIZE itself there is nothing to resize).
"""
IDG_AUGMENT = {"shear_range": 0.2, "zoom_range": 0.2, "horizontal_flip": True}
CONTENDERS = {
    "idg": "ImageDataGenerator.flow_from_directory, rescale only",
    "idg_augment": "ImageDataGenerator.flow_from_directory, classic augmentation (shear, zoom, flip)",
    "idfd": "image_dataset_from_directory",
    "idfd_prefetch": "image_dataset_from_directory + prefetch(AUTOTUNE)",
    "ours": "imgclf TFRecords + train input pipeline + in-model augmentation",
    "ours_no_augment": "imgclf TFRecords + train input pipeline, no augmentation",
}
BASELINES = ("idg", "idg_augment", "idfd", "idfd_prefetch")
AUGMENTING = ("idg_augment",)


def _batches_idg(folder: str, augment: bool):
    import tensorflow as tf

    gen = tf.keras.preprocessing.image.ImageDataGenerator(rescale=1.0 / 255, **(IDG_AUGMENT if augment else {}))
    it = gen.flow_from_directory(folder, target_size=(SIZE, SIZE), batch_size=BATCH, class_mode="categorical",
                                 shuffle=True, seed=1)

    def epoch():
        for _ in range(len(it)):
            x, y = next(it)
            yield tf.convert_to_tensor(x), y
    return epoch, it.n


def _batches_idfd(folder: str, prefetch: bool):
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE), batch_size=BATCH, shuffle=True,
                                                  seed=1, verbose=False)
    n = len(ds.file_paths)
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)

    def epoch():
        yield from ds
    return epoch, n


def _batches_ours(dataset_dir: str, augment: bool):
    import keras
    import tensorflow as tf

    from imgclf.components.contracts import RecordsMetadata
    from imgclf.components.lib import records
    from imgclf.components.train import models
    from imgclf.components.train import step as train

    meta = RecordsMetadata.load(dataset_dir)
    ds = train._input(records.make_dataset(dataset_dir, meta, "train", BATCH, shuffle=True, seed=1, prefetch=False),
                      len(meta.classes))
    # The transfer families' flip, rotation and zoom (the baseline flips only): the closest to the
    # classic ImageDataGenerator augmentation it is compared with.
    inputs = keras.Input(meta.input.shape)
    x = models.augmentation(seed=1)(inputs) if augment else inputs
    front_model = keras.Model(inputs, keras.layers.Rescaling(1.0 / 255)(x))
    front = tf.function(lambda x: front_model(x, training=True))

    def epoch():
        for x, y in ds:
            yield front(x), y
    return epoch, meta.count("train")


def measure_contender(name: str, source: str, epochs: int) -> dict:
    import keras  # noqa: F401 - imports are not the pipeline's cost
    import tensorflow  # noqa: F401

    t = time.perf_counter()
    if name.startswith("idg_") or name == "idg":
        epoch, n = _batches_idg(source, name == "idg_augment")
    elif name.startswith("idfd"):
        epoch, n = _batches_idfd(source, name == "idfd_prefetch")
    else:
        epoch, n = _batches_ours(source, name == "ours")
    setup = time.perf_counter() - t
    per_epoch, seen = [], 0
    for _ in range(epochs):
        t, seen = time.perf_counter(), 0
        for x, _y in epoch():
            assert tuple(x.shape[1:]) == (SIZE, SIZE, 3), x.shape
            seen += len(x)
        per_epoch.append(time.perf_counter() - t)
        assert seen == n, f"{name}: {seen} images in an epoch, expected {n}"
    ips = [n / s for s in per_epoch]
    return {"contender": name, "images": n, "setup_seconds": round(setup, 2),
            "epoch_seconds": [round(s, 3) for s in per_epoch], "images_per_second": [round(v, 1) for v in ips],
            "first_epoch_images_per_second": round(ips[0], 1), "steady_images_per_second": round(harness.steady(ips), 1)}


def break_even_epochs(one_off_s: float, n: int, ours_ips: float, base_ips: float) -> float | None:
    """Epochs after which ours, one-off preparation included, has spent less time than the baseline."""
    saved_per_epoch = n / base_ips - n / ours_ips
    return round(one_off_s / saved_per_epoch, 1) if saved_per_epoch > 0 else None


def measure_source(source_size: int, n: int, epochs: int, tmp: Path) -> dict:
    """Every contender on one folder of `n` JPEGs of `source_size` px, with the like-with-like ratios."""
    folder = datasets.jpeg_folder(tmp / f"jpeg{source_size}", n, source_size)
    mb = datasets.warm_page_cache(folder) / 2**20
    result = {"source_size": source_size, "images": n, "folder_mb": round(mb, 1), "contenders": {}}
    print(f"input_throughput: {n} JPEGs of {source_size}x{source_size} ({mb:.1f} MB) read at "
          f"{SIZE}x{SIZE}, batch {BATCH}, {epochs} epochs each", flush=True)
    prep = harness.in_fresh_process(MODULE, "prepare", folder, tmp / f"ours{source_size}")
    prep["one_off_seconds"] = round(prep["ingest_seconds"] + prep["preprocess_seconds"], 2)
    result["ours_one_off"] = prep
    print(f"  ours, one-off ingest + preprocess: {prep['one_off_seconds']} s, peak {prep['peak_rss_mb']} MB",
          flush=True)
    for name in CONTENDERS:
        source = prep["dataset_dir"] if name.startswith("ours") else folder
        r = harness.in_fresh_process(MODULE, name, source, epochs)
        result["contenders"][name] = r
        print(f"  {name}: first epoch {r['first_epoch_images_per_second']:,} images/s, steady "
              f"{r['steady_images_per_second']:,} images/s, peak {r['peak_rss_mb']} MB", flush=True)
    c = result["contenders"]
    # Like with like: augmenting baselines against ours with augmentation, the others against ours without.
    result["ratios"] = {}
    for b in BASELINES:
        ours = c["ours" if b in AUGMENTING else "ours_no_augment"]
        result["ratios"][b] = {
            "against": ours["contender"],
            "steady": round(ours["steady_images_per_second"] / c[b]["steady_images_per_second"], 2),
            "first_epoch": round(ours["first_epoch_images_per_second"] / c[b]["first_epoch_images_per_second"], 2),
            "break_even_epochs": break_even_epochs(prep["one_off_seconds"], n, ours["steady_images_per_second"],
                                                   c[b]["steady_images_per_second"])}
    return result


def rows_for(r: dict) -> list[str]:
    """One source size's group of rows: every contender, then our one-off cost."""
    c, prep, n = r["contenders"], r["ours_one_off"], r["images"]
    source = f"{r['source_size']} px ({r['folder_mb']:.1f} MB)"
    rows = []
    for i, (name, label) in enumerate(CONTENDERS.items()):
        m, ratio = c[name], r["ratios"].get(name)
        times = (f"{ratio['steady']}x ({'with' if ratio['against'] == 'ours' else 'without'} augmentation)"
                 if ratio else "")
        pays = (f"{ratio['break_even_epochs']} epochs" if ratio and ratio["break_even_epochs"] is not None
                else "never" if ratio else "")
        rows.append(f"| {source if i == 0 else ''} | {label} | {m['first_epoch_images_per_second']:,.0f} "
                    f"| {m['steady_images_per_second']:,.0f} | {times} | {pays} | {m['setup_seconds']} s "
                    f"| {m['peak_rss_mb']:,.0f} MB |")
    rows.append(f"| | one-off: imgclf ingest + preprocess of the same {n:,} JPEGs | | "
                f"{n / prep['one_off_seconds']:,.0f} | | | {prep['one_off_seconds']} s "
                f"(ingest {prep['ingest_seconds']} s, preprocess {prep['preprocess_seconds']} s) "
                f"| {prep['peak_rss_mb']:,.0f} MB |")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        if argv[1] == "prepare":
            import sklearn.model_selection  # noqa: F401 - the same rule: imports before the clock
            import tensorflow  # noqa: F401

            folder, work = Path(argv[2]), Path(argv[3])
            harness.child_report(datasets.prepare(folder, work, SIZE, "rgb", val_fraction=0, test_fraction=0))
        else:
            harness.child_report(measure_contender(argv[1], argv[2], int(argv[3])))
        return 0
    args = harness.parse_args(__doc__, argv, **{
        "--images": {"type": int, "help": "JPEGs in each folder (default 2,000; 200 with --quick)"},
        "--epochs": {"type": int, "help": "epochs per contender (default 4; 3 with --quick)"},
        "--source-sizes": {"default": ",".join(map(str, SOURCE_SIZES)),
                           "help": "pixel sizes of the JPEGs on disk, one folder and one row group each "
                                   f"(default {','.join(map(str, SOURCE_SIZES))}; {SIZE} means no resizing "
                                   "for anyone)"}})
    n = args.images or (200 if args.quick else 2_000)
    epochs = args.epochs or (3 if args.quick else 4)
    sizes = [int(v) for v in args.source_sizes.split(",") if v]
    result = {"machine": harness.machine(), "image_size": SIZE, "batch_size": BATCH, "epochs": epochs,
              "images": n, "sources": {}}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        for size in sizes:
            result["sources"][str(size)] = measure_source(size, n, epochs, Path(tmp))
    rows = ["| source JPEGs | pipeline | first epoch images/s | steady images/s | ours, like with like (steady) "
            "| ours pays back its one-off cost after | setup | peak RSS |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["sources"].values():
        rows += rows_for(r)
    harness.save("input_throughput", args.out, result, "\n".join(rows),
                 f"Input throughput, {n:,} JPEGs per source size ({', '.join(f'{s} px' for s in sizes)}) read at "
                 f"{SIZE}x{SIZE}, batch {BATCH}, steady = median of epochs 2-{epochs}", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
