"""The documentation holds together: README.md stays a short front door, every relative link in it and
in docs/ reaches a file, mkdocs.yml's nav and the pages under docs/ are the same set, the performance
page is what its results JSON makes, and the site builds in mkdocs' strict mode."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 300
# [text](target) outside code; the target up to a space, a closing parenthesis or a title
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, code blocks and code spans left out."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", t)]


def nav_pages(nav) -> list[str]:
    found = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def test_readme_is_a_short_front_door():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"


def test_the_link_finder_sees_links_and_skips_code():
    text = "see [a](a.md) and [b](../b.md#x), not `[c](c.md)`, [web](https://x.org) or [top](#top)\n```\n[d](d.md)\n```\n"
    assert relative_links(text) == ["a.md", "../b.md#x"]


@pytest.mark.parametrize("doc", [REPO / "README.md", *pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file(doc: Path):
    broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t.split("#", 1)[0]).resolve().exists()]
    assert not broken, f"{doc.relative_to(REPO)} links to files that do not exist: {broken}"


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is in the nav twice"
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert not set(listed) - on_disk, f"mkdocs.yml's nav names pages that do not exist: {sorted(set(listed) - on_disk)}"
    assert not on_disk - set(listed), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - set(listed))}"


def test_the_performance_page_is_what_its_results_make():
    from benchmarks import summary

    assert summary.main(["--check"]) == 0, "run python -m benchmarks.summary --page"
    data = summary.json.loads(summary.LATEST.read_text())
    page = summary.PAGE.read_text()
    for name in data["order"]:
        assert data["results"][name]["markdown"].strip() in page


def test_a_changed_result_changes_the_performance_page():
    from benchmarks import summary

    data = summary.json.loads(summary.LATEST.read_text())
    name = data["order"][0]
    data["results"][name]["markdown"] += "\n\n| a new row |"
    assert summary.render_page(data) != summary.PAGE.read_text()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (make docs-site installs it)")
def test_the_site_builds_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
