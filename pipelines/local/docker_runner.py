"""kfp.local's DockerRunner set up for our image: every task runs in the container KFP or Vertex would
run, on this machine's Docker engine.

Three things kfp 2.17.0 leaves to the caller, handled here:
- Local inputs and outputs named by pipeline parameters (every option declared with a path role: the
  data folder, `weights`, `registry`, `export_to`, `tensorboard_uri`, ...) are mounted at the same
  absolute path, read-only for inputs; kfp mounts only the pipeline root. A CSV/Parquet table source
  also has the folders its rows point into mounted, read-only (`row_folders`).
- Store settings and credentials reach the containers through the environment (never parameters):
  the variables components/lib/storage.py reads are passed on as they are set here.
- kfp runs containers with auto_remove, so a container that exits at once can be gone before its exit
  code is read, and kfp then reports success (kubeflow/pipelines#13332). `exit_codes_kept` swaps in
  the same container run without auto_remove, reading the code before removing the container.
"""
from __future__ import annotations

import os
from pathlib import Path

from imgclf.components.lib import storage
from imgclf.pipelines import kfp_seams
from imgclf.pipelines.local.cache import table_rows

# The variables a task reads: components/lib/storage.py's and the Google/AWS client libraries' under it
# (their credentials included: the task reads and writes the store), and the other IMGCLF_ settings the
# steps read. Named one by one rather than all of IMGCLF_*: the rest are the host's own, and a container's
# environment shows in `docker inspect` (IMGCLF_KFP_TOKEN is a bearer token for the KFP API). A test
# checks that every IMGCLF_ name the steps read is passed (tests/test_docker_env.py).
STORE_ENV_PREFIXES = ("IMGCLF_S3_", "IMGCLF_HTTP_", "AWS_", "GCSFS_")
STORE_ENV_NAMES = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
                   "IMGCLF_STORAGE_RETRIES", "IMGCLF_REGISTRY_GRACE_SECONDS", "IMGCLF_FIT_WATCH_SECONDS",
                   "IMGCLF_TASKS_IN_SERIES")
NETWORKS = ("auto", "none", "host", "bridge")


def task_environment() -> tuple[dict[str, str], list[str]]:
    """(a task's environment, the credential files to mount read-only at the same paths): the store
    settings, the Google key file they name, and a netrc file with HTTP credentials (NETRC, else
    ~/.netrc), which NETRC then names, since the container's user has another home folder."""
    env = store_environment()
    files = []
    credentials = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if credentials and Path(credentials).is_file():
        files.append(str(Path(credentials).resolve()))
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if netrc.is_file():
        files.append(str(netrc.resolve()))
        env["NETRC"] = str(netrc.resolve())
    return env, files


def store_environment() -> dict[str, str]:
    """The task variables set here (STORE_ENV_*); not AWS_CA_BUNDLE, a host path (the image has its own
    trust store), nor any other IMGCLF_ setting (the host's, credentials among them)."""
    return {k: v for k, v in os.environ.items()
            if (k.startswith(STORE_ENV_PREFIXES) or k in STORE_ENV_NAMES) and k != "AWS_CA_BUNDLE"}


def path_parameters(steps: tuple[str, ...] | None = None) -> list:
    """Every pipeline parameter declared with a path role (Option.path "read" or "write")."""
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.definitions.training import STEPS

    return [o for o in parameters(steps or STEPS) if o.path]


def _mount(path: str, read_only: bool):
    import docker

    return docker.types.Mount(target=path, source=path, type="bind", read_only=read_only)


def docker_runner(params: dict, image: str, network: str = "auto") -> tuple[object, dict]:
    """(DockerRunner, params with local paths made absolute) for running `params` in `image`.

    network "auto": no network at all when every input is local, else the host's (so an endpoint on
    127.0.0.1, such as a local MinIO, is reachable as it is from here). Containers run as the
    invoking user, so what they write under the pipeline root belongs to whoever ran the pipeline.
    """
    import docker
    from kfp import local

    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise RuntimeError(f"no Docker engine answers ({e}); start one with `containers/docker-env.sh up`") from None
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {image} is not on this Docker engine: build it with `make images` "
                           "(or point IMGCLF_IMAGE at an image it has)") from None
    finally:
        client.close()

    params, mounts, remote = dict(params), [], False
    for o in path_parameters():
        name, writes, value = o.name, o.path == "write", params.get(o.name) or ""
        if not value or value in o.keywords:
            continue
        if not storage.is_local(value):
            remote = True
            continue
        path = Path(storage.local_path(value)).resolve()
        if writes:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise FileNotFoundError(f"{value}: not found (parameter {name})")
        params[name] = str(path)
        mounts.append(_mount(str(path), read_only=not writes))
    rows = table_rows(params.get("data") or "", params.get("data_base_uri") or "", params.get("allow_outside_paths"))
    if rows is not None:
        files, remote_rows = rows
        remote = remote or remote_rows
        mounts.extend(_mount(folder, read_only=True)
                      for folder in row_folders(files, covered=[m["Source"] for m in mounts]))
    env, credential_files = task_environment()
    mounts.extend(_mount(f, read_only=True) for f in credential_files)
    if network == "auto":
        network = "host" if remote else "none"
    runner = local.DockerRunner(mounts=mounts, environment=env, network_mode=network,
                                user=f"{os.getuid()}:{os.getgid()}")
    return runner, params


def row_folders(files: list[str], covered: list[str] = ()) -> list[str]:
    """The folders a table's local rows lie in, each once: none inside another one listed or inside an
    already mounted folder (`covered`), none that does not exist (ingest reports those rows missing)."""
    taken = [Path(c).resolve() for c in covered if Path(c).is_dir()]
    folders = []
    for folder in sorted({os.path.dirname(f) for f in files}, key=lambda f: (len(Path(f).parts), f)):
        real = Path(folder).resolve()
        if real.is_dir() and not any(real.is_relative_to(t) for t in taken):
            folders.append(folder)
            taken.append(real)
    return folders


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp's run_docker_container (kfp 2.17.0) without auto_remove: stream the log, read the exit
    code, then remove the container."""
    run_args.pop("auto_remove", None)
    container = client.containers.run(image=kfp_seams.image_with_tag(image),
                                      command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


def exit_codes_kept():
    """While open, DockerRunner runs containers with `run_container` (kfp_seams.docker_runs)."""
    return kfp_seams.docker_runs(run_container)
