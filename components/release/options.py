"""The release steps' options (champion lookup, gate, publish), declared once; the registry location
and model name are shared by all three (and by deploy) through `RegistryTarget` in components/lib/registry.py."""
from __future__ import annotations

from dataclasses import dataclass

from components.lib.options import option
from components.lib.registry import RegistryTarget

COMPARE_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True, kw_only=True)
class ChampionOptions(RegistryTarget):
    skip_unchanged: bool = option(True, "skip training when the data fingerprint equals the champion's")
    warm_start: bool = option(False, "train starts from the champion's weights (layers of the same name "
                                     "and shape)")


@dataclass(frozen=True, kw_only=True)
class GateOptions(RegistryTarget):
    min_accuracy: float = option(0.0, "test accuracy the challenger must reach", min=0, max=1)
    min_macro_f1: float = option(0.0, "test macro F1 the challenger must reach", min=0, max=1)
    margin: float = option(0.0, "how much better than the champion (re-scored on the same test images) "
                                "compare_metric must be; always strictly better", min=0, max=1)
    compare_metric: str = option("accuracy", "the metric the champion and challenger are compared on",
                                 choices=COMPARE_METRICS)


@dataclass(frozen=True, kw_only=True)
class PublishOptions(RegistryTarget):
    gate_summary: str = option("{}", "the gate's JSON summary, kept in the version's record", pipeline=False)
    source_run: str = option("", "the run that made this version (the pipeline job name)", pipeline=False)
