"""imgclf step logic: plain, importable functions with typed parameters (no KFP here)."""
import os

# TensorFlow's C++ start-up chatter (CPU feature hints, oneDNN notices) buries the step's own
# progress lines in KFP logs; real errors still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from imgclf import __version__  # noqa: F401 - declared once, in imgclf/__init__.py
