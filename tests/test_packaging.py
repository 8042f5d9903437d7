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


# --- The image build context: .dockerignore must let in everything the Dockerfiles COPY ---------------

def _ignore_regex(pattern: str):
    """The subset of .dockerignore patterns ours uses, as a regex over a slash-separated path: `*` (within
    one folder), `?`, `**` (any folders, none included) and a trailing `/`."""
    import re

    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(path: str, ignore_text: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern that matches it or one of its parent
    folders decides, `!` letting it back in (Docker's rule)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line[1:] if negate else line)
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def _copy_sources(dockerfile: Path) -> list[str]:
    """Every build-context path a Dockerfile's COPY lines name (not `COPY --from=` another stage)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _left_out(sources: list[str], ignore_text: str) -> list[str]:
    """The sources the build would not find (a folder whose files are all left out still comes, empty:
    containers/certs/ holds only its README until someone adds a certificate)."""
    return [source for source in sources if _ignored(source, ignore_text)]


def test_the_build_context_holds_everything_the_dockerfiles_copy():
    ignore = (REPO / ".dockerignore").read_text()
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        sources = _copy_sources(REPO / "containers" / dockerfile)
        assert {"imgclf", "components", "pipelines", "pyproject.toml"} <= set(sources), dockerfile
        assert _left_out(sources, ignore) == [], f"add these to .dockerignore as !PATH ({dockerfile})"
    # What it keeps out stays out.
    assert _ignored("tests/test_api.py", ignore) and _ignored("components/__pycache__/x.pyc", ignore)
    assert _ignored("containers/certs/README.md", ignore) and not _ignored("containers/certs/ca.crt", ignore)


def test_the_build_context_check_reports_a_copied_path_left_out():
    ignore = "*\n!pyproject.toml\n!components/\n**/__pycache__\n"
    assert _left_out(["pyproject.toml", "components", "imgclf", "README.md"], ignore) == ["imgclf", "README.md"]
    assert _ignored("components/__pycache__", ignore) and not _ignored("components/steps.py", ignore)


# --- The version outside Python: the image tags (containers/docker-env.sh) ----------------------------

def _docker_env(script: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run docker-env.sh with docker, dockerd, sudo and apt-get replaced by stubs that log their calls."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for tool in ("docker", "dockerd", "sudo", "apt-get", "mmdebstrap"):
        (stubs / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> "{tmp_path}/calls"\nexit 1\n')
        (stubs / tool).chmod(0o755)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "IMGCLF_CACHE": str(tmp_path / "cache")})


def test_docker_env_tags_images_with_the_declared_version(tmp_path):
    from imgclf.components import __version__

    out = _docker_env(REPO / "containers" / "docker-env.sh", tmp_path, "version")
    assert (out.returncode, out.stdout.strip()) == (0, __version__), out.stderr
    assert not (tmp_path / "calls").exists(), "`version` must not touch Docker"


def test_docker_env_reads_the_version_file_and_refuses_without_one(tmp_path):
    import shutil

    (tmp_path / "containers").mkdir()
    (tmp_path / "components").mkdir()
    script = Path(shutil.copy(REPO / "containers" / "docker-env.sh", tmp_path / "containers"))
    init = tmp_path / "components" / "__init__.py"
    init.write_text('import os\n\n__version__ = "9.8.7"\n')
    assert _docker_env(script, tmp_path, "version").stdout.strip() == "9.8.7"
    init.write_text("import os\n")
    out = _docker_env(script, tmp_path, "version")
    assert out.returncode != 0 and out.stdout == "" and "__version__" in out.stderr


# --- A checkout with no install (benchmarks/gpu_training.py on a GPU machine) -------------------------

def test_a_checkout_without_an_install_resolves_imgclf_components():
    """`make bench-gpu` runs from a bare checkout: its Python has neither our venv nor the editable install
    (whose finder a .pth in site-packages installs; -S skips site, so it is not used here). `import imgclf`
    must work before imgclf.components can be found, which the benchmark then maps onto components/."""
    code = ("import importlib.util as u, sys\n"
            "assert not any('site-packages' in p for p in sys.path), sys.path\n"
            "import benchmarks.gpu_training, imgclf\n"
            "print(u.find_spec('imgclf.components.train.models').origin)\n"
            "print(imgclf.__version__)\n"
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    from imgclf.components import __version__

    assert out.stdout.split("\n")[:3] == [str(REPO / "components" / "train" / "models.py"), __version__,
                                          "False False"], out.stdout
