"""imgclf: labelled images in, a served Keras image classifier out.

Everything installed lives under this one name: `imgclf.components` (each step's logic and its KFP face)
and `imgclf.pipelines` (the pipelines, local runs, clusters and the `imgclf` command).

From Python (a notebook): `imgclf.run(data=..., epochs=...)` runs the training pipeline locally as
`imgclf run` does and returns a `RunResult`; `imgclf.predict(model, images)` returns the rows
`imgclf predict` writes (imgclf/api.py, docs/notebook.md). Importing `imgclf` stays light (no
TensorFlow, no kfp: a notebook's first cell and every step's container import it): the API is loaded
when first used.
"""
_API = ("run", "predict", "RunResult", "Predictions")
__all__ = list(_API)


def __getattr__(name: str):
    # `__version__` too is looked up when asked for, not at import: `import imgclf` must work before
    # imgclf.components can be found (benchmarks/gpu_training.py, run from a checkout with no install,
    # imports imgclf first and only then maps components/ onto imgclf.components).
    if name == "__version__":
        from imgclf.components import __version__  # declared once, in components/__init__.py

        return __version__
    if name in _API:
        from imgclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, "__version__"})
