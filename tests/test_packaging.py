"""The install puts one name into site-packages, `imgclf`: components/ and pipelines/ are mapped onto
imgclf.components and imgclf.pipelines (pyproject.toml), so they never collide with other projects'
folders of those generic names."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_installed_under_imgclf():
    setuptools = _project()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {"imgclf"} | {"imgclf." + ".".join(p.parent.relative_to(REPO).parts)
                            for root in ("components", "pipelines") for p in (REPO / root).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "pyproject.toml lists packages that no folder holds"
    assert setuptools["package-dir"] == {"imgclf": "imgclf", "imgclf.components": "components",
                                         "imgclf.pipelines": "pipelines"}
    assert _project()["project"]["scripts"]["imgclf"].startswith("imgclf.")


def test_outside_the_checkout_only_imgclf_is_importable(tmp_path):
    """From another folder (as in a user's notebook or the container) the installed names are what count."""
    code = ("import importlib.util as u, imgclf.components.steps, imgclf.pipelines.cli.main\n"
            "print(u.find_spec('components'), u.find_spec('pipelines'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert out.stdout.split() == ["None", "None"], out.stdout + out.stderr


def test_no_module_imports_the_bare_folder_names():
    import ast

    bad = []
    for root in ("imgclf", "components", "pipelines", "benchmarks", "tests"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                bad += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("components", "pipelines")]
    assert bad == []


def test_the_version_is_declared_once_and_followed():
    import re
    from importlib import metadata

    import imgclf
    from imgclf.components import __version__

    assert "version" in _project()["project"]["dynamic"]
    assert metadata.version("imgclf") == imgclf.__version__ == __version__
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "containers" / dockerfile).read_text()
        assert re.findall(r"^ARG VERSION=(\S+)$", text, flags=re.M) == [__version__], dockerfile
