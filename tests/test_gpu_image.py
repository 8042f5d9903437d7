"""The GPU image's recipe, read without Docker (tests/test_containers.py builds the image and runs it).

What must hold for `make images` to give the train task a working CUDA image: the same local base as
the CPU image (no CUDA base image to pull), TensorFlow's version declared once (requirements.py derives
`tensorflow[and-cuda]` from the `tensorflow-cpu` pin), the CUDA wheels pinned inside TensorFlow's own
ranges, and the build-time check wired in before the package, so a broken CUDA layer fails the build.
"""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"


def _requirements(*args: str, pyproject: Path = REPO / "pyproject.toml") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONTAINERS / "requirements.py"), str(pyproject), *args],
                          capture_output=True, text=True, timeout=60)


def _pins(text: str) -> dict[str, str]:
    return {re.sub(r"[-_.]+", "-", name).lower(): version
            for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, flags=re.M)}


def test_both_images_build_on_the_same_base():
    cpu, gpu = ((CONTAINERS / name).read_text() for name in ("Dockerfile", "Dockerfile.gpu"))
    bases = [re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M) for text in (cpu, gpu)]
    assert bases[0] == bases[1] and len(bases[0]) == 1
    for text in (cpu, gpu):
        assert re.findall(r"^FROM (.+)$", text, flags=re.M) == ["${BASE_IMAGE}"]
    assert "nvidia/cuda" not in gpu and "tensorflow/tensorflow" not in gpu


def test_the_gpu_build_swaps_tensorflow_cpu_for_the_cuda_wheels_and_checks_them_before_the_package():
    text = (CONTAINERS / "Dockerfile.gpu").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    run_lines = [line for line in re.split(r"\n(?=[A-Z]+ )", code) if line.startswith(("RUN ", "COPY "))]
    install = next(i for i, line in enumerate(run_lines) if "requirements.py" in line and line.startswith("RUN"))
    assert "--cuda" in run_lines[install] and "-c /tmp/imgclf/constraints.txt" in run_lines[install]
    check = next(i for i, line in enumerate(run_lines) if line.startswith("RUN") and "imgclf-cuda-check" in line)
    package = next(i for i, line in enumerate(run_lines) if line.startswith("COPY components"))
    assert install < check < package  # checked before the source comes in: code edits do not re-run it
    assert "COPY containers/cuda_check.py /usr/local/bin/imgclf-cuda-check" in text
    assert re.search(r"^ENV [^\n]*(?:\\\n[^\n]*)*TF_FORCE_GPU_ALLOW_GROWTH=true", text, flags=re.M)


def test_requirements_cuda_derives_the_gpu_tensorflow_and_jax_from_the_cpu_pins():
    cpu, gpu = _requirements(), _requirements("--cuda")
    assert cpu.returncode == gpu.returncode == 0, cpu.stderr + gpu.stderr
    cpu_lines, gpu_lines = cpu.stdout.splitlines(), gpu.stdout.splitlines()
    version, jax = metadata.version("tensorflow-cpu"), metadata.version("jax")
    changed = [(a, b) for a, b in zip(cpu_lines, gpu_lines, strict=True) if a != b]
    assert changed == [(f"tensorflow-cpu=={version}", f"tensorflow[and-cuda]=={version}"),
                       (f"jax[cpu]=={jax}", f"jax[cuda12]=={jax}")]
    assert not any(line.lower().startswith(("tensorflow-cpu", "tensorflow_cpu")) for line in gpu_lines)


def test_requirements_cuda_swaps_a_runtime_jax_for_its_cuda_build(tmp_path):
    """Multi-worker training runs Keras on JAX: once JAX is a runtime requirement, the GPU image gets its
    CUDA build at the same version (its wheels are pinned beside TensorFlow's in constraints.txt)."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\nname = 'x'\ndependencies = ['tensorflow-cpu==2.21.0', 'jax[cpu]==0.10.2', "
                         "'keras==3.15.1']\n")
    assert _requirements("--cuda", pyproject=pyproject).stdout.split() == [
        "tensorflow[and-cuda]==2.21.0", "jax[cuda12]==0.10.2", "keras==3.15.1"]
    assert _requirements(pyproject=pyproject).stdout.split() == ["tensorflow-cpu==2.21.0", "jax[cpu]==0.10.2",
                                                                 "keras==3.15.1"]
    pins = _pins((CONTAINERS / "constraints.txt").read_text())
    assert pins["jax-cuda12-plugin"] == pins["jax-cuda12-pjrt"] == metadata.version("jax")


def test_requirements_cuda_refuses_a_pyproject_without_one_exact_tensorflow_cpu_pin(tmp_path):
    for deps in ('["keras==3.15.1"]', '["tensorflow-cpu>=2.21"]', '["tensorflow-cpu==2.21.0", "tensorflow-cpu==2.20.0"]'):
        pyproject = tmp_path / "pyproject.toml"
        pyproject.write_text(f"[project]\nname = 'x'\ndependencies = {deps}\n")
        refused = _requirements("--cuda", pyproject=pyproject)
        assert refused.returncode != 0 and "tensorflow-cpu==VERSION" in refused.stderr, deps
        assert _requirements(pyproject=pyproject).returncode == 0  # the CPU image needs no such pin


def test_every_cuda_wheel_is_pinned_within_tensorflows_own_range():
    """The and-cuda extra of the tensorflow-cpu installed here is the same release's (pyproject pins one
    version for both distributions): every wheel it names needs a pin in constraints.txt inside its range,
    or the GPU image would take whatever PyPI has that day."""
    pins = _pins((CONTAINERS / "constraints.txt").read_text())
    wanted = [Requirement(r) for r in metadata.requires("tensorflow-cpu") or [] if 'extra == "and-cuda"' in r]
    assert len(wanted) >= 10  # cudart, cublas, cudnn, cufft, curand, cusolver, cusparse, nccl, ...
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"containers/constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside TensorFlow's {req.specifier}"


def test_the_cuda_check_refuses_an_environment_with_tensorflow_cpu():
    """Here .venv holds tensorflow-cpu: the image's check must refuse it (before importing TensorFlow),
    as it would refuse a GPU image into which a dependency pulled tensorflow-cpu beside tensorflow."""
    done = subprocess.run([sys.executable, str(CONTAINERS / "cuda_check.py")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "expected the one TensorFlow distribution 'tensorflow'" in done.stderr
    assert "tensorflow" in done.stderr.split("found", 1)[1] and "cpu" in done.stderr.split("found", 1)[1]
