"""Every choice list the `imgclf` command offers is derived from the one declaration it mirrors, so a
target, network or backend added there reaches the command line without a second edit."""
from __future__ import annotations

import argparse

import pytest

from imgclf.components.deploy.options import TARGETS as DEPLOY_TARGETS
from imgclf.pipelines.cli.main import build_parser
from imgclf.pipelines.definitions.platform import TARGETS
from imgclf.pipelines.local.docker_runner import NETWORKS
from imgclf.pipelines.remote.backends import BACKENDS, Backend

pytestmark = pytest.mark.unit


def _choices(parser: argparse.ArgumentParser, *path: str) -> dict[str, tuple]:
    """The choices of every option (and positional) of the sub-command at `path`."""
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {a.dest: tuple(a.choices) for a in parser._actions
            if a.choices is not None and not isinstance(a, argparse._SubParsersAction)}


def test_deploy_targets_are_the_deploy_steps_less_none():
    assert _choices(build_parser(), "deploy")["target"] == tuple(t for t in DEPLOY_TARGETS if t != "none")
    assert "none" in DEPLOY_TARGETS   # the step's default: deploy nothing


def test_run_networks_are_the_docker_runners():
    assert _choices(build_parser(), "run")["network"] == NETWORKS


def test_compile_targets_and_every_backend_choice_are_the_platform_targets():
    parser = build_parser()
    assert _choices(parser, "compile")["target"] == TARGETS
    assert tuple(BACKENDS) == TARGETS
    for path in (("submit",), ("schedule", "create"), ("schedule", "list"), ("schedule", "delete"),
                 ("runs", "list"), ("runs", "get"), ("runs", "logs"), ("runs", "cancel")):
        assert _choices(parser, *path)["backend"] == TARGETS, path


def test_each_backend_implements_the_whole_interface():
    for name, cls in BACKENDS.items():
        assert issubclass(cls, Backend) and cls.name == name
        assert not cls.__abstractmethods__, f"{name} leaves {sorted(cls.__abstractmethods__)} unimplemented"
