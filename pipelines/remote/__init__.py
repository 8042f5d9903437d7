"""Clusters: `compiling` (a pipeline compiled for KFP or Vertex with images, resources, secrets),
`platform` (what is applied per backend), `backends` (one interface over KFP and Vertex AI), `params`
and `cron`."""
