"""TF Serving on its own: a `models.config` and the exact `docker run` line that serves the registry's
model folder (TF Serving's version layout: a base path holding integer version folders), always pinned
to one version.

Why pinned, never TF Serving's default policy (serve the highest folder): on a bucket a version is
copied object by object, so while a publish runs (or after one was killed) the highest folder can be
incomplete, or complete but not the champion. The registry keeps its own `models.config` pinning the
champion, rewritten by publish only after the champion moved (components/lib/registry.py), and:
- the champion of a local or S3 registry, served under the model's name: the model folder is mounted at
  /mnt/models and TF Serving reads /mnt/models/models.config, re-read every 30 s, so the server follows
  each publish by itself. TF Serving lost s3:// with TensorFlow's S3 filesystem: an S3 registry's folder
  is synced to local disk first, its config read before the sync and moved into place after it, so it
  never pins a version not yet synced;
- a named version, or another served name: a config in the output folder pins that version;
- gs://: TF Serving reads the bucket itself, through a config in the output folder whose base path is
  the gs:// model folder, pinned to the version (deploy again after the next publish).
"""
from __future__ import annotations

import os
import shlex

from imgclf.components.deploy.options import DeployOptions
from imgclf.components.lib import registry, storage

CONFIG = registry.SERVING_CONFIG
MOUNT = registry.SERVING_BASE_PATH  # where the model folder is mounted, as KServe's storage initializer puts it
IMAGE = "tensorflow/serving"
REST_PORT, GRPC_PORT = 8501, 8500
POLL_S = 30  # how often a server following the registry re-reads its models.config


models_config = registry.models_config  # the registry writes the same file for servers that follow it


def docker_line(mounts: list[tuple[str, str]], config_file: str, env: tuple[str, ...] = (), poll_s: int = 0) -> str:
    parts = ["docker", "run", "--rm", "-p", f"{GRPC_PORT}:{GRPC_PORT}", "-p", f"{REST_PORT}:{REST_PORT}"]
    for host, inside in mounts:
        parts += ["-v", f"{host}:{inside}:ro"]
    for name in env:  # passed on by name: the value stays out of the command line
        parts += ["-e", name]
    parts += [IMAGE, f"--model_config_file={config_file}"]
    if poll_s:
        parts.append(f"--model_config_file_poll_wait_seconds={poll_s}")
    return shlex.join(parts)


def serve_saved_model_line(saved_model_dir: str, name: str = "imgclf") -> str:
    """One SavedModel folder as version 1 (TF Serving needs a base path with integer version folders)."""
    return shlex.join(["docker", "run", "--rm", "-p", f"{REST_PORT}:{REST_PORT}", "-v",
                       f"{os.path.abspath(saved_model_dir)}:/models/{name}/1:ro", "-e", f"MODEL_NAME={name}", IMAGE])


def configure(opts: DeployOptions, version: int, follow: bool, output_dir: str) -> tuple[str, list[str]]:
    """Write models.config into `output_dir`: (its path, the lines that serve it). `follow`: `version` is
    the champion, so a server that can read the registry's own models.config follows later publishes."""
    model = storage.join(opts.registry, opts.model_name)
    os.makedirs(output_dir, exist_ok=True)
    config_path = os.path.abspath(os.path.join(output_dir, CONFIG))
    inside_config = "/config/models.config"
    served = f"REST http://localhost:{REST_PORT}/v1/models/{opts.name}:predict, gRPC localhost:{GRPC_PORT}"
    if model.startswith("gs://"):
        _write(config_path, models_config(opts.name, model, version))
        return config_path, [
            "# gs:// is read by TF Serving itself; mount the key file GOOGLE_APPLICATION_CREDENTIALS names "
            "(-v KEY:KEY:ro), or run where workload identity applies",
            docker_line([(config_path, inside_config)], inside_config, ("GOOGLE_APPLICATION_CREDENTIALS",)),
            f"# serves {opts.name} version {version}, pinned"
            + (" (the champion; deploy again after the next publish)" if follow else "") + f": {served}"]
    local = storage.local_path(model) if storage.is_local(model) else os.path.abspath(opts.name)
    before = []
    if not storage.is_local(model):
        # The config is read first and moved into place last: every version it pins was complete before
        # it was written, so the sync that follows has copied that version when the server sees the pin.
        nxt = shlex.quote(os.path.join(local, f".{CONFIG}.next"))
        before = [f"aws s3 cp {shlex.quote(model + '/' + CONFIG)} {nxt} && aws s3 sync {shlex.quote(model)} "
                  f"{shlex.quote(local)} --exclude {CONFIG} --exclude '*.partial-*' && mv {nxt} "
                  f"{shlex.quote(os.path.join(local, CONFIG))}   # TF Serving reads no s3:// itself; rerun after "
                  "each publish"]
    mount = (os.path.abspath(local), MOUNT)
    if follow and opts.name == opts.model_name:
        # A copy, for the record: the server reads the registry's own.
        _write(config_path, registry.serving_config(opts.model_name, version))
        line = docker_line([mount], f"{MOUNT}/{CONFIG}", poll_s=POLL_S)
        note = (f"# serves {opts.name} version {version}, the champion, as the registry's {CONFIG} pins it; re-read "
                f"every {POLL_S} s, so the server follows each publish: {served}")
    else:
        _write(config_path, models_config(opts.name, MOUNT, version))
        line = docker_line([(config_path, inside_config), mount], inside_config)
        why = ("a named version" if not follow else
               f"served as {opts.name}, not under the registry's name {opts.model_name}: deploy again after the "
               "next publish")
        note = f"# serves {opts.name} version {version}, pinned ({why}): {served}"
    return config_path, [*before, line, note]


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
