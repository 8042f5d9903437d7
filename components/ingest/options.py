"""Ingest's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.images import ANIMATED_POLICIES, PixelLimit
from imgclf.components.lib.options import option
from imgclf.components.lib.sharding import MAX_TASKS

DEFAULT_MAX_DOWNLOAD = 4 * 2 ** 30


@dataclass(frozen=True, kw_only=True)
class IngestOptions(PixelLimit):
    data: str = option(help="the source: a folder, gs://, s3:// or minio:// prefix, zip URL or path, or a "
                            "CSV/Parquet table of path,label[,split]", path="read")
    data_base_uri: str = option("", "for a CSV/Parquet table: what relative paths resolve against "
                                    "(default: the table's folder)", path="read")
    relabel: str = option("", "a CSV of location,label (or location,drop) applied at ingest, the source left "
                              "untouched; each change is recorded in relabels.csv beside the manifest",
                          path="read")
    allow_outside_paths: bool = option(False, "let a CSV/Parquet table name local files outside its own folder "
                                              "(or data_base_uri); off, such rows are quarantined")
    allow_missing_classes: bool = option(False, "in a pre-split source, let a class have no images in "
                                                "validation/ or test/ (never in train/); off, such a source is "
                                                "refused before any file is read")
    animated: str = option("first_frame", "animated images: use the first frame (what serving decodes) or "
                                          "quarantine them", choices=ANIMATED_POLICIES)
    min_images_per_class: int = option(10, "ingest fails if a class has fewer usable images", min=1)
    max_imbalance: float = option(100.0, "ingest fails if the largest class has more than this many times "
                                         "the images of the smallest", min=1)
    max_quarantined_share: float = option(0.5, "ingest fails if more than this share of the files is "
                                               "quarantined (a wrong source, most likely)", min=0, max=1)
    ingest_tasks: int = option(0, "tasks the listing is dealt over in the pipelines, each decode-checking a "
                                  "consecutive run of the files (the manifest is the same whatever the count); "
                                  "0: automatic, one per 25,000 files up to 32 (one under imgclf run, whose "
                                  "tasks take turns)", min=0, max=MAX_TASKS, identity=False)
    workers: int = option(0, "parallel readers checking files: processes when every file is local (0: one per "
                             "core), threads when files are read from a bucket or URL (0: 16, which wait on "
                             "the network)",
                          min=0, max=256, pipeline=False)
    max_download_bytes: int = option(DEFAULT_MAX_DOWNLOAD, "largest zip archive downloaded or extracted",
                                     min=1, pipeline=False)
