"""imgclf.run / imgclf.predict (imgclf/api.py): the notebook face of `imgclf run` and `imgclf predict`.

The unit tests hold the API to the CLI: the same values reach the same run function, the same refusals
come before any work, and `import imgclf` stays light. The slow test executes docs/notebook.md's
cells as written, so the documented walk-through is known to work and to show what it says."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import imgclf
from imgclf import api
from imgclf.components.lib.options import ParameterError
from imgclf.pipelines.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "fashion-mnist-sample"
NOTEBOOK = ROOT / "docs" / "notebook.md"


class _Stop(Exception):
    """Raised by a stand-in for the run: the values reached it, and nothing ran."""


@pytest.fixture
def no_work(monkeypatch):
    """Make any start of work visible: the zygote's start and the local run record and stop."""
    from imgclf.pipelines.local import preloaded_tasks, run

    started = []
    monkeypatch.setattr(preloaded_tasks, "start_early", lambda: started.append("zygote"))

    def run_local(*a, **k):
        started.append("run_local")
        raise _Stop
    monkeypatch.setattr(run, "run_local", run_local)
    return started


@pytest.mark.unit
def test_import_imgclf_imports_neither_tensorflow_nor_kfp():
    code = ("import sys, imgclf; heavy = [m for m in ('tensorflow', 'keras', 'kfp') if m in sys.modules]; "
            "assert callable(imgclf.run) and callable(imgclf.predict); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    # Accessing imgclf.run loads the API (which may import kfp for the step list): only `import imgclf`
    # itself must stay light, so check the modules as they were before that access.
    code_light = "import sys, imgclf; print([m for m in ('tensorflow', 'keras', 'kfp') if m in sys.modules])"
    light = subprocess.run([sys.executable, "-c", code_light], capture_output=True, text=True, cwd=ROOT, check=True)
    assert light.stdout.strip() == "[]"
    assert "tensorflow" not in out.stdout and "keras" not in out.stdout  # the API itself loads no TensorFlow


@pytest.mark.unit
def test_the_api_hands_run_checked_what_the_cli_hands_it(monkeypatch, no_work):
    """Same parameter values (declared defaults filled in), same settings: one code path after parsing."""
    seen = []

    def capture(values, **settings):
        seen.append((values, settings))
        raise _Stop
    from imgclf.pipelines.local import run as local_run

    monkeypatch.setattr(local_run, "run_checked", capture)
    with pytest.raises(_Stop):
        cli.main(["run", "--data", str(SAMPLE), "--epochs", "2", "--image-size", "28"])
    with pytest.raises(_Stop):
        imgclf.run(str(SAMPLE), epochs=2, image_size=28, quiet=False)
    (cli_values, cli_settings), (api_values, api_settings) = seen
    assert api_values == cli_values
    assert api_settings == cli_settings


@pytest.mark.unit
def test_the_api_defaults_are_the_cli_parsers_for_every_option():
    from imgclf.pipelines.definitions.declare import parameters
    from imgclf.pipelines.definitions.training import STEPS

    declared = parameters(STEPS)
    args = vars(cli.build_parser().parse_args(["run", "--data", "x"]))
    sig = inspect.signature(imgclf.run).parameters
    assert [o.name for o in declared if o.required] == ["data"]  # run's one positional parameter
    assert {o.name for o in declared} <= set(sig)
    for o in declared:
        if not o.required:
            assert sig[o.name].default == args[o.name], o.name
    # The run's own settings too; quiet is the one deliberate difference (a notebook cell would fill
    # with kfp.local's executor dumps).
    for name in ("pipeline_root", "runner", "network", "cache"):
        assert sig[name].default == args[name], name
    assert not sig["sweep"].default and not args["sweep"]
    assert sig["quiet"].default is True and args["quiet"] is False

    pred_args = vars(cli.build_parser().parse_args(["predict", "--model", "m", "x.png"]))
    pred_sig = inspect.signature(imgclf.predict).parameters
    from imgclf.components.predict.options import PredictOptions

    for o in PredictOptions.declared():
        if not o.required:
            assert pred_sig[o.name].default == pred_args[o.name], o.name


@pytest.mark.unit
@pytest.mark.parametrize("flag, text, name, value", [
    ("--epochs", "0", "epochs", 0),
    ("--color-mode", "cmyk", "color_mode", "cmyk"),
    ("--val-fraction", "1.5", "val_fraction", 1.5),
])
def test_a_bad_value_is_refused_before_work_with_the_clis_message(tmp_path, capsys, no_work, flag, text, name, value):
    with pytest.raises(ParameterError) as refused:
        imgclf.run(str(SAMPLE), pipeline_root=tmp_path / "runs", **{name: value})
    with pytest.raises(SystemExit):
        cli.main(["run", "--data", str(SAMPLE), flag, text, "--pipeline-root", str(tmp_path / "runs")])
    assert str(refused.value) in capsys.readouterr().err
    assert no_work == [] and not (tmp_path / "runs").exists()


@pytest.mark.unit
def test_unknown_options_missing_data_and_bad_settings_are_refused_before_work(tmp_path, capsys, no_work):
    from imgclf.pipelines import check_parameters

    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) epoch; accepted: .*epochs") as unknown:
        imgclf.run(str(SAMPLE), epoch=2)
    with pytest.raises(ParameterError) as direct:
        check_parameters({"data": str(SAMPLE), "epoch": 2})
    assert str(unknown.value) == str(direct.value)
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(ParameterError, match="no such file or folder") as refused:
        imgclf.run(missing)
    assert cli.main(["run", "--data", missing]) == 1  # the CLI goes through the same check
    assert f"imgclf: error: {refused.value}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="runner 'kubernetes'"):
        imgclf.run(str(SAMPLE), runner="kubernetes")
    with pytest.raises(ParameterError, match="sweep file"):
        imgclf.run(str(SAMPLE), sweep=tmp_path / "missing.yaml")
    with pytest.raises(ParameterError, match=r"parameter top_k=0: too small"):
        imgclf.predict(str(tmp_path), [str(SAMPLE)], top_k=0)
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) topk"):
        imgclf.predict(str(tmp_path), [str(SAMPLE)], topk=2)
    assert [s for s in no_work if s != "zygote"] == []  # the CLI starts its zygote first; nothing ran


@pytest.mark.unit
def test_a_result_shows_the_clis_summary_and_html_with_figures_and_links(tmp_path, monkeypatch):
    """A run folder as run_local leaves it (reports copied to its top, evaluate's metrics.json)."""
    from imgclf.components.contracts import Evaluation
    from imgclf.pipelines.local.run import LocalRun

    run_dir = tmp_path / "runs" / "imgclf-run"
    (run_dir / "evaluate" / "predictions").mkdir(parents=True)
    Evaluation(["a", "b"], {"accuracy": 0.8125, "macro_f1": 0.8, "test_images": 160}, [], [[1, 0], [0, 1]],
               {"accuracy": {"value": 0.8125, "low": 0.745, "high": 0.865},
                "macro_f1": {"value": 0.8, "low": 0.73, "high": 0.86}}).save(run_dir / "evaluate" / "predictions")
    files = {n: run_dir / n for n in ("ingest_report.html", "report.html", "gate.md", "learning_curves.html")}
    for f in files.values():
        f.write_text("x")
    local = LocalRun(pipeline_root=str(tmp_path / "runs"), ingest_report=str(files["ingest_report.html"]),
                     outcome={"decision": "no-registry", "reasons": ["accuracy 0.8125 >= 0 <b>"]},
                     report=str(files["report.html"]), gate_report=str(files["gate.md"]),
                     curves=str(files["learning_curves.html"]), accuracy=0.8125,
                     step_seconds={"ingest": 1.25, "train": 10.5}, seconds=20.0)
    monkeypatch.chdir(tmp_path)
    result = api.RunResult(local)
    assert str(result) == repr(result) == local.summary()
    assert (result.accuracy, result.accuracy_interval, result.macro_f1, result.macro_f1_interval) == \
        (0.8125, (0.745, 0.865), 0.8, (0.73, 0.86))
    page = result._repr_html_()
    for text in ("0.8125 (95 % CI 0.7450–0.8650)", "0.8000 (95 % CI 0.7300–0.8600)", "no-registry",
                 "&lt;b&gt;", "train 10.5 s", ">160<"):
        assert text in page, text
    links = _links(page)
    assert {Path(p).name for p in links} == set(files)
    assert all(Path(p).is_file() for p in links)
    assert all(not p.startswith("/") for p in _hrefs(page))  # under the working folder: relative links


class _Hrefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.found.append(dict(attrs)["href"])


def _hrefs(page: str) -> list[str]:
    parser = _Hrefs()
    parser.feed(page)
    return parser.found


def _links(page: str) -> list[str]:
    """The files the page links to, as paths (relative links resolve against the working folder)."""
    out = []
    for href in _hrefs(page):
        url = urlparse(href)
        out.append(unquote(url.path) if url.scheme == "file" else str(Path.cwd() / unquote(href)))
    return out


def notebook_cells(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.mark.slow
def test_the_notebook_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/notebook.md's cells, in order, in one namespace, in a folder laid out like the repository
    (its sample linked in): a real two-epoch run, its display, and predictions on sample images."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion-mnist-sample").symlink_to(SAMPLE, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    cells = notebook_cells(NOTEBOOK.read_text(encoding="utf-8"))
    assert len(cells) >= 4
    namespace: dict = {}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"{NOTEBOOK.name}, cell {i + 1}", "exec"), namespace)
    shown = capsys.readouterr().out

    result, rows, images = namespace["result"], namespace["rows"], namespace["images"]
    assert isinstance(result, api.RunResult)
    assert Path(result.run_dir).is_relative_to(tmp_path / "runs")
    assert "parameter epochs=0: too small" in shown  # the refusal cell
    metrics = json.loads((Path(result.run_dir) / "evaluate" / "predictions" / "metrics.json").read_text())
    assert isinstance(result.accuracy, float) and 0 <= result.accuracy <= 1
    assert result.accuracy == metrics["metrics"]["accuracy"]
    assert result.macro_f1 == metrics["metrics"]["macro_f1"]
    low, high = result.accuracy_interval
    assert low <= result.accuracy <= high
    # The report says the same figure.
    assert f"<td>accuracy</td><td>{result.accuracy:.4f}</td>" in Path(result.report).read_text(encoding="utf-8")
    assert str(result) == result.local.summary() and f"test accuracy : {result.accuracy:.4f}" in str(result)
    assert f"test accuracy {result.accuracy:.4f}" in shown  # the figures cell
    assert f"predict: {len(images)} images classified, 0 failed\n" in shown  # not the temporary file's name

    page = result._repr_html_()
    assert f"{result.accuracy:.4f} (95 % CI {low:.4f}–{high:.4f})" in page
    assert f"{result.macro_f1:.4f}" in page and result.decision in page
    linked = _links(page)
    assert {Path(p).name for p in linked} >= {"report.html", "gate.md", "ingest_report.html",
                                              "learning_curves.html", "saved_model"}
    assert all(Path(p).exists() for p in linked)

    classes = {d.name for d in SAMPLE.iterdir() if d.is_dir()}
    assert len(rows) == len(images) >= 3
    assert [r["file"] for r in rows] == [str(p) for p in images]
    for r in rows:
        assert "error" not in r and r["class"] in classes
        assert len(r["top_k"]) == 2 and r["top_k"][0] == [r["class"], pytest.approx(r["probability"])]
        assert set(r["probabilities"]) == classes
    assert all(f">{os.fspath(p)}<" in rows._repr_html_() for p in images)
