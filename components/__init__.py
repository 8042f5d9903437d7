"""imgclf step logic: plain, importable functions with typed parameters (no KFP here)."""
import os

# TensorFlow's C++ start-up chatter (CPU feature hints, oneDNN notices) buries the step's own
# progress lines in KFP logs; real errors still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.2.0"
"""Declared once, here at the bottom of the house: the container, `imgclf --version` and `imgclf.__version__`
read it; pyproject.toml and the image tags follow it (a test checks)."""

IMAGE = os.environ.get("IMGCLF_IMAGE", f"imgclf:{__version__}")
"""The image every task runs in (each step's generated `component.py` reads it): point `IMGCLF_IMAGE` at your
registry for KFP/Vertex; without it, the local build's name."""
