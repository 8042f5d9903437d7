"""Preprocess's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.images import COLOR_MODES
from imgclf.components.lib.options import Seeded, option
from imgclf.components.lib.sharding import MAX_TASKS

MAX_SHARDS = MAX_TASKS
MAX_FOLDS = 20
LAYOUT_ONLY = ("shard_tasks",)
"""Options that change how the work is spread, never the records: left out of the records' fingerprint."""


@dataclass(frozen=True, kw_only=True)
class PreprocessOptions(Seeded):
    image_size: int = option(160, "images are resized to image_size x image_size pixels", min=8, max=1024)
    color_mode: str = option("rgb", "colour channels the model sees", choices=tuple(COLOR_MODES))
    val_fraction: float = option(0.1, "validation share when the source is not pre-split", min=0, max=0.9)
    test_fraction: float = option(0.1, "test share when the source is not pre-split", min=0, max=0.9)
    near_duplicate_bits: int = option(10, "validation/test images within this many bits (of 256) of a "
                                           "training image's perceptual hash are near-duplicates; -1: no check",
                                      min=-1, max=256)
    drop_near_duplicates: bool = option(False, "leave validation/test near-duplicates of training images out "
                                               "(they are always reported)")
    shard_tasks: int = option(0, "preprocess tasks the TFRecord shards are spread over (each writes whole files); "
                            "0: automatic, one per 10,000 images up to 32 (one under imgclf run, whose tasks "
                            "take turns)", min=0, max=MAX_SHARDS)
    audit_folds: int = option(0, "label audit (imgclf audit): split the train and validation images into this many "
                                 "folds by content hash and seed, leave the source's test images out; 0: off",
                              min=0, max=MAX_FOLDS, pipeline=False)
    audit_fold: int = option(0, "label audit: the fold that becomes the test split (its images are scored "
                                "out-of-fold); a val_fraction slice of the rest is the validation split",
                             min=0, max=MAX_FOLDS - 1, pipeline=False)
    images_per_shard: int = option(2048, "images per TFRecord shard", min=1, pipeline=False)
    workers: int = option(4, "threads reading and decoding images", min=1, max=256, pipeline=False)

    def __post_init__(self):
        super().__post_init__()
        if self.val_fraction + self.test_fraction >= 1:
            from imgclf.components.lib.options import ParameterError

            raise ParameterError(f"parameters val_fraction={self.val_fraction} and test_fraction="
                                 f"{self.test_fraction}: together they must leave room for training (sum < 1)")
        if self.audit_folds == 1 or self.audit_fold >= max(self.audit_folds, 1):
            from imgclf.components.lib.options import ParameterError

            raise ParameterError(f"parameters audit_folds={self.audit_folds} and audit_fold={self.audit_fold}: "
                                 "audit_folds is 0 (off) or at least 2, and audit_fold one of 0..audit_folds-1")
