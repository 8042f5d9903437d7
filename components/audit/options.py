"""The label audit's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.options import Options, option

MAX_FOLDS = 20
"""Also preprocess's bound (components/preprocess/options.py): a step imports no other step."""


@dataclass(frozen=True, kw_only=True)
class AuditOptions(Options):
    audit_folds: int = option(5, "label audit: models trained, each scoring the train and validation images of "
                                 "one fold it never saw (cleanlab's default is 5); fixed when the audit pipeline is built (its "
                                 "folds are a loop over 0..K-1), so not a pipeline parameter",
                              min=2, max=MAX_FOLDS, pipeline=False)
    wrong_label_above: float = option(0.5, "label audit: a suspect whose suggested class has at least this "
                                           "out-of-fold probability is a wrong label, else ambiguous",
                                      min=0, max=1)
    duplicate_bits: int = option(10, "label audit: a suspect within this many bits (of 256) of the perceptual "
                                     "hash of an image with another label is a near-duplicate across classes; "
                                     "-1: no check", min=-1, max=256)
    thumbnails: int = option(1000, "label audit: suspects shown with thumbnails in suspects.html (all are in "
                                   "suspects.csv)", min=0, max=100_000, pipeline=False)
