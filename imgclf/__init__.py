"""imgclf: labelled images in, a served Keras image classifier out.

Everything installed lives under this one name: `imgclf.components` (each step's logic and its KFP face)
and `imgclf.pipelines` (the pipelines, local runs, clusters and the `imgclf` command).

From Python (a notebook): `imgclf.run(data=..., epochs=...)` runs the training pipeline locally as
`imgclf run` does and returns a `RunResult`; `imgclf.predict(model, images)` returns the rows
`imgclf predict` writes (imgclf/api.py, docs/notebook.md). Importing `imgclf` stays light (no
TensorFlow, no kfp: a notebook's first cell and every step's container import it): the API is loaded
when first used.
"""
from imgclf.components import __version__  # noqa: F401 - declared in components/__init__.py

_API = ("run", "predict", "RunResult", "Predictions")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from imgclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
