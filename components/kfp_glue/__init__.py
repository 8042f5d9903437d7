"""The KFP glue, in one place: `wrappers` (the components, declared and generated), `generate` (their
source text from the step declarations) and `bodies` (what each does in its task). Nothing is imported
here: a task process imports only `bodies`, under KFP's runtime, where `kfp.dsl` has no decorators."""
