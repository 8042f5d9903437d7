"""TF Serving on its own: a `models.config` and the exact `docker run` line that serves the registry's
model folder (TF Serving's version layout: a base path holding integer version folders).

Deploying the champion keeps TF Serving's default policy (serve the highest version, which the registry
guarantees is the champion, and pick up the next publish by itself); deploying a named version pins it.
TF Serving reads local folders and gs:// itself; it lost s3:// with TensorFlow's S3 filesystem, so an
S3 registry's model folder is synced to a local folder first.
"""
from __future__ import annotations

import os
import shlex

from components.deploy.options import DeployOptions
from components.lib import storage

CONFIG = "models.config"
IMAGE = "tensorflow/serving"
REST_PORT, GRPC_PORT = 8501, 8500


def models_config(name: str, base_path: str, version: int | None) -> str:
    """The text-format ModelServerConfig TF Serving's --model_config_file reads."""
    policy = ("" if version is None else
              f"    model_version_policy {{\n      specific {{\n        versions: {version}\n      }}\n    }}\n")
    return ("model_config_list {\n  config {\n"
            f"    name: \"{name}\"\n    base_path: \"{base_path}\"\n    model_platform: \"tensorflow\"\n"
            f"{policy}  }}\n}}\n")


def docker_line(mounts: list[tuple[str, str]], config_file: str, env: tuple[str, ...] = ()) -> str:
    parts = ["docker", "run", "--rm", "-p", f"{GRPC_PORT}:{GRPC_PORT}", "-p", f"{REST_PORT}:{REST_PORT}"]
    for host, inside in mounts:
        parts += ["-v", f"{host}:{inside}:ro"]
    for name in env:  # passed on by name: the value stays out of the command line
        parts += ["-e", name]
    parts += [IMAGE, f"--model_config_file={config_file}"]
    return shlex.join(parts)


def serve_saved_model_line(saved_model_dir: str, name: str = "imgclf") -> str:
    """One SavedModel folder as version 1 (TF Serving needs a base path with integer version folders)."""
    return shlex.join(["docker", "run", "--rm", "-p", f"{REST_PORT}:{REST_PORT}", "-v",
                       f"{os.path.abspath(saved_model_dir)}:/models/{name}/1:ro", "-e", f"MODEL_NAME={name}", IMAGE])


def configure(opts: DeployOptions, version: int, pinned: bool, output_dir: str) -> tuple[str, list[str]]:
    """Write models.config into `output_dir`: (its path, the lines that serve it)."""
    model = storage.join(opts.registry, opts.model_name)
    os.makedirs(output_dir, exist_ok=True)
    config_path = os.path.abspath(os.path.join(output_dir, CONFIG))
    inside_config = "/config/models.config"
    mounts, env, before = [(config_path, inside_config)], (), []
    if model.startswith("gs://"):
        base_path = model
        env = ("GOOGLE_APPLICATION_CREDENTIALS",)
        before = ["# gs:// is read by TF Serving itself; mount the key file GOOGLE_APPLICATION_CREDENTIALS names "
                  "(-v KEY:KEY:ro), or run where workload identity applies"]
    else:
        local = storage.local_path(model) if storage.is_local(model) else os.path.abspath(opts.name)
        if not storage.is_local(model):
            before = [f"aws s3 sync {model} {local}   # TF Serving reads no s3:// itself"]
        base_path = f"/models/{opts.name}"
        mounts.append((os.path.abspath(local), base_path))
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(models_config(opts.name, base_path, version if pinned else None))
    serving = f"version {version}" if pinned else f"its highest version (now {version}, the champion)"
    lines = [*before, docker_line(mounts, inside_config, env),
             f"# serves {opts.name} {serving}: REST http://localhost:{REST_PORT}/v1/models/{opts.name}:predict, "
             f"gRPC localhost:{GRPC_PORT}"]
    return config_path, lines
