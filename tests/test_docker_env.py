"""The environment `imgclf run --docker` gives each task container: what the steps read reaches them, and
nothing else of the host's IMGCLF_ settings does (a container's environment shows in `docker inspect`, and
IMGCLF_KFP_TOKEN is a bearer token for the KFP API)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgclf.pipelines.local import docker_runner

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
# The image names: read at compile time to name each task's image, never by a running task.
NOT_READ_IN_TASKS = {"IMGCLF_IMAGE", "IMGCLF_GPU_IMAGE"}
# Set for a task by whoever launches it, never taken from the runner's shell: the compiled pipeline's
# multi-worker settings, and each worker's place in its cluster (components/train/distributed.py).
SET_BY_LAUNCHERS = {"IMGCLF_TRAIN_CLUSTER", "IMGCLF_WORKER_HOSTS", "IMGCLF_WORKER_INDEX"}


def _clean_env(monkeypatch) -> None:
    import os

    # Whatever the runner could pass, from its own declaration: earlier tests (the store fixtures) leave
    # STORAGE_EMULATOR_HOST and friends set in this process.
    for name in list(os.environ):
        if name.startswith(("IMGCLF_", *docker_runner.STORE_ENV_PREFIXES)) or name in docker_runner.STORE_ENV_NAMES:
            monkeypatch.delenv(name)


def test_the_kfp_token_stays_on_the_host_and_the_store_settings_pass(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("IMGCLF_KFP_TOKEN", "bearer-secret")
    monkeypatch.setenv("IMGCLF_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/host/only/ca.pem")

    env = docker_runner.store_environment()

    assert "bearer-secret" not in env.values()
    assert env == {"IMGCLF_S3_ENDPOINT_URL": "http://minio:9000", "IMGCLF_STORAGE_RETRIES": "2",
                   "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}


def test_every_imgclf_setting_the_steps_read_reaches_the_task(monkeypatch):
    """Each IMGCLF_ name written under components/ (the code tasks run) passes: a step setting added
    without listing it in docker_runner's STORE_ENV_* fails here instead of being dropped silently."""
    read = {name for path in (REPO / "components").rglob("*.py")
            for name in re.findall(r"\bIMGCLF_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())} - NOT_READ_IN_TASKS \
        - SET_BY_LAUNCHERS
    assert {"IMGCLF_S3_ENDPOINT_URL", "IMGCLF_STORAGE_RETRIES", "IMGCLF_REGISTRY_GRACE_SECONDS"} <= read
    _clean_env(monkeypatch)
    for name in read:
        monkeypatch.setenv(name, "1")
    assert set(docker_runner.store_environment()) == read
    for name in SET_BY_LAUNCHERS:
        monkeypatch.setenv(name, "1")
    assert set(docker_runner.store_environment()) == read  # never passed from the shell


def test_http_credentials_reach_the_task_as_a_mounted_netrc_and_the_token_variable(monkeypatch, tmp_path):
    """A netrc file (NETRC, else ~/.netrc) is mounted read-only and named by NETRC inside (the task's
    user has another home folder); IMGCLF_HTTP_* pass like the store settings; no netrc, no mount."""
    _clean_env(monkeypatch)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert docker_runner.task_environment() == ({}, [])
    (tmp_path / ".netrc").write_text("machine example.org login u password p\n")
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", "t")
    env, files = docker_runner.task_environment()
    assert env == {"IMGCLF_HTTP_TOKEN": "t", "NETRC": str(tmp_path / ".netrc")} and files == [env["NETRC"]]
    other = tmp_path / "creds" / "netrc"
    other.parent.mkdir()
    other.write_text("machine example.org login u password p\n")
    monkeypatch.setenv("NETRC", str(other))
    assert docker_runner.task_environment()[1] == [str(other)]
