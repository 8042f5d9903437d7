"""The pipelines themselves: `declare` (a pipeline's signature from its steps' options), `training`,
`prediction`, `sweep` (a sweep file compiled into a ParallelFor of trials) and `platform` (what each
backend's tasks get at compile time: images, resources, secrets, GPUs; the definitions apply it, so it
sits here, below the clusters' code that compiles and submits them)."""
