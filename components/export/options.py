"""Export's options, declared once (see components/lib/options.py for what is derived from them)."""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.options import Options, option


@dataclass(frozen=True, kw_only=True)
class ExportOptions(Options):
    export_to: str = option("", "also publish the checked SavedModel to this folder or bucket URI", path="write")
    tflite: bool = option(False, "also export TensorFlow Lite (pixels in), checked against Keras on every "
                                 "test image")
