"""Evaluate's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.options import Options, option


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(Options):
    abstain_precision: float = option(0.0, "0: every answer stands; > 0: the calibrated confidence below which an "
                                           "answer is marked uncertain is chosen on the validation split so the "
                                           "answers kept are right this often (0.95 = 95 %), exported with the "
                                           "model for predict", min=0, max=1)
