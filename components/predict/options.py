"""Predict's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.images import PixelLimit
from imgclf.components.lib.options import option

FORMATS = ("csv", "jsonl")


@dataclass(frozen=True, kw_only=True)
class PredictOptions(PixelLimit):
    model: str = option(help="the export step's saved_model folder, a registry version folder, or "
                             "REGISTRY/MODEL_NAME for its champion (local, gs://, s3://)", path="read")
    top_k: int = option(3, "classes listed per image, most probable first", min=1)
    batch_size: int = option(64, "images per serving call", min=1, max=65_536, pipeline=False)


@dataclass(frozen=True, kw_only=True)
class BatchPredictOptions(PredictOptions):
    """The batch-prediction pipeline's: one folder or bucket in, one predictions file out."""
    images: str = option(help="a folder, bucket prefix or image file to classify", path="read")
    output_format: str = option("csv", "predictions file format", choices=FORMATS)
