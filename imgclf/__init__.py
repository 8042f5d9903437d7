"""imgclf: labelled images in, a served Keras image classifier out.

Everything installed lives under this one name: `imgclf.components` (each step's logic and its KFP face)
and `imgclf.pipelines` (the pipelines, local runs, clusters and the `imgclf` command).
"""
__version__ = "0.2.0"
