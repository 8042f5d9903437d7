"""Running a pipeline on this machine with kfp.local: `run` (the run and its summary), `preloaded_tasks`,
`docker_runner`, `cache`, and `sample_data` (the embedded sample's Fashion-MNIST folders). The kfp.local
internals they lean on are declared in pipelines/kfp_seams.py."""

RUNNERS = ("subprocess", "docker")
"""Where `imgclf run` / `imgclf.run` execute tasks: this virtualenv (kfp.local's SubprocessRunner) or our
image (DockerRunner). Declared here, light, for the CLI's choices."""
