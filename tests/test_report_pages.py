"""The HTML pages a reviewer opens (ingest report, learning curves, evaluation report), rendered as a person
sees them: headless Chromium (Debian's `chromium`) loads each page, and a script in the page reports every
image's decoded size and every resource fetched. No page may fetch anything (one self-contained file for
the KFP UI) and every image must decode to a non-empty picture. Also checks what the pages say."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import TEN, make_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
in_chromium = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="Debian package chromium not installed "
                                                                         "(make system-packages installs it)")]

PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  const fetched = performance.getEntriesByType("resource").map(r => r.name);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({imgs, fetched});
  document.body.appendChild(out);
});
</script>"""


def render(page, tmp_path) -> dict:
    """Load a copy of the page with the probe appended; what the probe saw once the page had loaded."""
    probed = tmp_path / f"probed-{page.name}.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium: {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess
    from imgclf.components.train.step import train

    tmp = tmp_path_factory.mktemp("pages")
    src = make_folder(tmp / "src", TEN, 14, jpeg_every=3)
    (src / "Bag" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ingest(str(src), str(tmp / "ds"), report_html=str(tmp / "ingest.html"))
    preprocess(str(tmp / "ds"), str(tmp / "pp"), image_size=28, color_mode="grayscale", val_fraction=0.15,
               test_fraction=0.25, seed=1)
    train(str(tmp / "pp"), str(tmp / "m"), epochs=3, batch_size=16, width=8, depth=2, seed=1,
          curves_html=str(tmp / "curves.html"))
    evaluate(str(tmp / "pp"), str(tmp / "m"), str(tmp / "pred"), report_html=str(tmp / "report.html"))
    return {name: tmp / f"{name}.html" for name in ("ingest", "curves", "report")}, src


@pytest.mark.parametrize("name, images", [("ingest", 2), ("curves", 1), ("report", 6)])
@in_chromium[0]
@in_chromium[1]
def test_page_renders_self_contained_with_every_image_drawn(pages, name, images, tmp_path):
    seen = render(pages[0][name], tmp_path)
    assert seen["fetched"] == [], f"{name} fetched outside resources: {seen['fetched']}"
    assert len(seen["imgs"]) >= images
    for complete, width, height in seen["imgs"]:
        assert complete and width > 50 and height > 50, seen["imgs"]


@in_chromium[0]
@in_chromium[1]
def test_the_probe_sees_an_outside_resource_and_a_broken_image(tmp_path):
    """The check above can fail: a page that fetches from a server, or whose image does not decode, is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<img src="data:image/png;base64,bm90IGEgcG5n"></body></html>')
    seen = render(page, tmp_path)
    assert seen["fetched"] == ["http://127.0.0.1:9/x.png"]
    assert all(width == 0 for _, width, _ in seen["imgs"]) and len(seen["imgs"]) == 2


@pytest.mark.slow
def test_pages_say_what_a_reviewer_needs(pages):
    paths, src = pages
    report = paths["report"].read_text(encoding="utf-8")
    for heading in ("Run", "Per class (weakest F1 first)", "Top confusions", "Misclassified: each class",
                    "What the network looked at (Grad-CAM)", "Most confident errors", "Right answers"):
        assert heading in report, heading
    assert f"<td>{src}</td>" in report  # the data source, from ingest through preprocess
    assert "keras 3." in report and "training parameters" in report
    assert not re.search(r"\d\.\d{5,}<", report)  # no 18.3400-style numbers
    ingest = paths["ingest"].read_text(encoding="utf-8")
    assert f"{src}/Bag/broken.jpg" not in ingest and "Bag/broken.jpg" in ingest  # relative to the source
    curves = paths["curves"].read_text(encoding="utf-8")
    assert "best_epoch" in curves and not re.search(r"\d\.\d{5,}<", curves)


def test_confusion_matrix_stays_readable_at_100_classes():
    """At 100 classes the two matrices stack (each gets the page's width), the figure stops growing and the
    class names stay at a legible size; the top-confusions table names the largest cells."""
    import numpy as np

    from imgclf.components.lib import reports

    rng = np.random.RandomState(0)
    cm = rng.poisson(0.2, (100, 100))
    cm[np.arange(100), np.arange(100)] = 20
    cm[7, 3] = 9
    classes = [f"class_{i:03d}" for i in range(100)]
    fig = reports.confusion_matrix(cm, classes)
    width, height = fig.get_size_inches()
    ticks = fig.axes[0].get_yticklabels()
    assert width <= 18 and height > width and len(ticks) == 100 and min(t.get_fontsize() for t in ticks) >= 6
    table = reports.top_confusions(cm, classes)
    first = table.split("<tbody><tr>")[1]
    assert first.startswith(f"<td>class_007</td><td>class_003</td><td>9</td><td>{9 / cm[7].sum():.1%}</td>")


@pytest.mark.unit
def test_misclassified_grid_covers_every_classs_worst_errors_most_confident_first():
    """Errors stream in class order with one class holding most of them (as Coat did): the grid still shows
    each class's most confident errors, ordered by confidence, and memory stays at classes x k images."""
    import numpy as np

    from imgclf.components.evaluate.step import MAX_GRID, Examples

    rng = np.random.RandomState(3)
    n = 10
    ex = Examples(n)
    seen = {}
    for i in range(2000):
        true = 0 if i < 1500 else int(rng.randint(n))  # class 0 first and most
        probs = rng.dirichlet(np.ones(n))
        ex.add(np.full((2, 2, 1), i % 256, "uint8"), true, probs)
        pred = int(probs.argmax())
        if pred != true:
            seen.setdefault(true, []).append(float(probs[pred]))
    errors = ex.worst_errors()
    confidences = [e[0] for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert {e[3] for e in errors} == set(seen)  # every class with an error appears
    for c, probs in seen.items():  # ... with its most confident ones
        shown = sorted((e[0] for e in errors if e[3] == c), reverse=True)
        assert shown == sorted(probs, reverse=True)[:len(shown)] and len(shown) == min(len(probs), ex.wrong_k)
    assert len(errors) <= max(MAX_GRID, n) + n
