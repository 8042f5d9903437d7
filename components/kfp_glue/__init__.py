"""The KFP glue: `specs` (every component's and pipeline face's declaration), `generate`
(writes each step's component.py and each pipeline's *_face.py from them), `wrappers` (every component
by name, for the pipelines) and `validate` (what a pipeline's validate task does). Nothing is imported
here: a task process imports only a step's task.py (or `validate`), under KFP's runtime, where
`kfp.dsl` has no decorators."""
