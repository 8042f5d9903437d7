"""The release steps' options (champion lookup, gate, publish), declared once; the registry location
and model name are shared by all three (and by deploy) through `RegistryTarget` in components/lib/registry.py."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.options import option
from imgclf.components.lib.registry import RegistryTarget

COMPARE_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True, kw_only=True)
class ChampionOptions(RegistryTarget):
    skip_unchanged: bool = option(True, "skip training when the data, the preprocessing and the training "
                                        "options are all the champion's")
    warm_start: bool = option(False, "train starts from the champion's weights: every layer whose role and "
                                     "shape match (all but the head when the classes changed)")


@dataclass(frozen=True, kw_only=True)
class GateOptions(RegistryTarget):
    min_accuracy: float = option(0.0, "test accuracy the challenger must reach", min=0, max=1)
    min_macro_f1: float = option(0.0, "test macro F1 the challenger must reach", min=0, max=1)
    margin: float = option(0.0, "0: the challenger must be better than the champion (re-scored on the same "
                                "test images) by a paired test at the significance level; > 0: better by at "
                                "least this much instead (absolute, e.g. 0.01 = one point)", min=0, max=1)
    compare_metric: str = option("accuracy", "the metric the champion and challenger are compared on (accuracy: "
                                             "McNemar's exact test; macro_f1: a paired bootstrap)",
                                 choices=COMPARE_METRICS)
    significance: float = option(0.05, "one-sided level of the paired test that 'better' means when margin is 0",
                                 min=0, min_exclusive=True, max=0.5)
    min_compared_images: int = option(100, "the fewest test images seen by neither model (not in either's "
                                           "training or validation split) that a comparison needs; fewer: "
                                           "refused with that reason", min=1)
    max_class_recall_drop: float = option(1.0, "refuse when any class's recall on the compared images is lower "
                                               "than the champion's by more than this (0.05 = five points); "
                                               "1: no per-class rule", min=0, max=1)
    max_ece: float = option(1.0, "refuse when the served (calibrated) model's expected calibration error on the "
                                 "test split (15 confidence bins) is above this (0.05: its confidence may be off "
                                 "by five points on average); 1: no calibration rule", min=0, max=1)
    accept_class_change: bool = option(False, "publish a challenger whose classes differ from the champion's "
                                              "(compared on the classes both know, where it must not be "
                                              "significantly worse); otherwise refused")


@dataclass(frozen=True, kw_only=True)
class PublishOptions(RegistryTarget):
    gate_summary: str = option("{}", "the gate's JSON summary, kept in the version's record", pipeline=False)
    source_run: str = option("", "the run that made this version (the pipeline job name)", pipeline=False)
