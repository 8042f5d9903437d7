"""Clusters: `compiling` (a pipeline compiled for KFP or Vertex with images, resources, secrets),
`backends` (one interface over KFP and Vertex AI), `params` and `cron`."""
