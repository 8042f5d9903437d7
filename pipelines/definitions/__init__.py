"""The pipelines themselves: `declare` (a pipeline's signature from its steps' options), `training`,
`prediction` and `sweep` (a sweep file compiled into a ParallelFor of trials)."""
