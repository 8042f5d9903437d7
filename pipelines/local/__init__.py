"""Running a pipeline on this machine with kfp.local: `run` (the run and its summary), `kfp_seams` (every
place we lean on kfp.local's private functions), `preloaded_tasks`, `docker_runner`, `cache`, and
`sample_data` (the embedded sample's Fashion-MNIST folders)."""
