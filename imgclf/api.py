"""The Python face of `imgclf run` and `imgclf predict`, for notebooks: `imgclf.run(data=..., epochs=...)`
and `imgclf.predict(model, images)`.

Nothing here is a second list of options: `run` takes the training pipeline's parameters by their declared
names, with their declared defaults (its signature is built from the declarations, so `help(imgclf.run)`
and a notebook's completion show them), and hands them to the same function `imgclf run` calls
(`run_checked` in pipelines/local/run.py), which refuses an unknown name or a bad value with the CLI's
message before any work starts. `predict` takes `imgclf predict`'s options the same way.

Importing this module reads the declarations and the training pipeline's step list (which imports kfp,
not TensorFlow); TensorFlow is imported when a run or a prediction starts. `import imgclf` itself
imports none of it: `imgclf.run` and `imgclf.predict` load this module on first use.
"""
from __future__ import annotations

import contextlib
import html
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

from imgclf.components.lib.options import Option, validate
from imgclf.components.predict.options import PredictOptions
from imgclf.pipelines import steps_of


def training_options() -> list[Option]:
    """The training pipeline's parameters as declared, in the pipeline signature's order: what `imgclf run`
    makes its flags from (the one ordering, components/kfp_glue/specs.py)."""
    from imgclf.components.kfp_glue.specs import parameters

    return parameters(steps_of("training"))


def _plain(value):
    """A path given as a `Path` is the text the options declare."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class RunResult:
    """A finished local run: the key figures and files as attributes, the CLI's summary as its text
    (`print(result)`), and a compact HTML summary with links to the reports as its Jupyter display."""

    def __init__(self, local):
        self.local = local
        """The `LocalRun` that `imgclf run` prints (pipelines/local/run.py)."""
        self.run_dir = str(Path(local.ingest_report).parent)
        """The run's folder under pipeline_root: one folder per task, the reports copied to its top."""
        predictions = Path(self.run_dir) / "evaluate" / "predictions"
        if predictions.is_dir():
            from imgclf.components.contracts import Evaluation

            evaluation = Evaluation.load(str(predictions))
            self.metrics, self.intervals = dict(evaluation.metrics), dict(evaluation.intervals)
        else:  # training skipped: nothing was evaluated
            self.metrics, self.intervals = {}, {}

    # The key figures.
    @property
    def decision(self) -> str:
        """"publish", "refuse", "no-registry" (passed the gate, nowhere to publish) or "skip"."""
        return self.local.decision

    @property
    def outcome(self) -> dict:
        """The gate's summary: decision, reasons, metrics (or the skip note)."""
        return self.local.outcome

    @property
    def reasons(self) -> list[str]:
        return list(self.outcome.get("reasons", []))

    @property
    def accuracy(self) -> float | None:
        """Test accuracy (None when training was skipped)."""
        return self.local.accuracy

    def _interval(self, metric: str) -> tuple[float, float] | None:
        ci = self.intervals.get(metric)
        return (ci["low"], ci["high"]) if ci else None

    @property
    def accuracy_interval(self) -> tuple[float, float] | None:
        """95 % confidence interval of the test accuracy (Wilson's score interval): (low, high)."""
        return self._interval("accuracy")

    @property
    def macro_f1(self) -> float | None:
        return self.metrics.get("macro_f1")

    @property
    def macro_f1_interval(self) -> tuple[float, float] | None:
        """95 % confidence interval of macro F1 (a percentile bootstrap over the test images): (low, high)."""
        return self._interval("macro_f1")

    @property
    def test_images(self) -> int | None:
        return self.metrics.get("test_images")

    # The files (absolute paths; "" when the run made none).
    saved_model = property(lambda self: self.local.saved_model, doc="the exported SavedModel folder")
    report = property(lambda self: self.local.report, doc="evaluate's HTML report (report.html)")
    gate_report = property(lambda self: self.local.gate_report, doc="the gate's decision (gate.md)")
    ingest_report = property(lambda self: self.local.ingest_report, doc="ingest's HTML report")
    curves = property(lambda self: self.local.curves, doc="the learning curves (learning_curves.html)")
    sweep_report = property(lambda self: self.local.sweep_report, doc="a sweep's trials (sweep.html)")
    compared = property(lambda self: self.local.compared, doc="the gate's champion/challenger CSV")
    tensorboard = property(lambda self: self.local.tensorboard, doc="TensorBoard's log folder")
    published = property(lambda self: self.local.published, doc="the version published, in words")
    pipeline_root = property(lambda self: self.local.pipeline_root)
    step_seconds = property(lambda self: dict(self.local.step_seconds), doc="seconds per task")
    seconds = property(lambda self: self.local.seconds, doc="the whole run's seconds")
    cached = property(lambda self: list(self.local.cached), doc="tasks served by the cache")

    def files(self) -> dict[str, str]:
        """The run's reports and outputs by what they are, those it made."""
        found = {"HTML report": self.report, "decision": self.gate_report, "ingest report": self.ingest_report,
                 "curves": self.curves, "sweep report": self.sweep_report, "compared": self.compared,
                 "SavedModel": self.saved_model, "TensorBoard": self.tensorboard}
        return {k: v for k, v in found.items() if v}

    def summary(self) -> str:
        """What `imgclf run` prints."""
        return self.local.summary()

    __str__ = __repr__ = summary

    def _repr_html_(self) -> str:
        def figure(value: float | None, ci: tuple[float, float] | None) -> str:
            if value is None:
                return "-"
            return f"{value:.4f}" + (f" (95 % CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else "")

        rows = [("outcome", self.decision + "".join(f"<br>{html.escape(r)}" for r in self.reasons)),
                ("test accuracy", figure(self.accuracy, self.accuracy_interval)),
                ("macro F1", figure(self.macro_f1, self.macro_f1_interval))]
        if self.test_images is not None:
            rows.append(("test images", str(self.test_images)))
        if self.published:
            rows.append(("published", html.escape(self.published)))
        rows += [(html.escape(name), f'<a href="{html.escape(_link(path))}" target="_blank">'
                                     f"{html.escape(Path(path).name)}</a>")
                 for name, path in self.files().items()]
        times = ", ".join(f"{html.escape(n)} {s:.1f} s" for n, s in self.step_seconds.items())
        rows.append(("step times", times + "".join(f", {html.escape(n)} cached" for n in self.cached)))
        body = "".join(f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>'
                       for k, v in rows)
        return (f"<div><strong>imgclf run finished in {self.seconds:.1f} s</strong>"
                f"<table>{body}</table><small>{html.escape(self.run_dir)}</small></div>")


def _link(path: str) -> str:
    """A link a notebook can follow: relative to the working folder (Jupyter serves the notebook's folder
    and resolves relative links against it) when the file is under it, else a file:// URI."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.as_uri()


def run(data, *, pipeline_root="runs", runner="subprocess", network="auto", quiet=True, cache=False, sweep=None,
        **options) -> RunResult:
    """Run the training pipeline locally, as `imgclf run` does, and return its `RunResult`.

    `options` are the pipeline's parameters by name (`epochs=2`, `image_size=28`, ...; see the
    signature), with the defaults `imgclf run` has; an unknown name or a bad value raises
    `ParameterError` (a ValueError) with the CLI's message before any work starts, and a failed step
    raises `PipelineFailed` naming it. `quiet` (unlike the CLI, on by default: a notebook cell would
    fill with kfp.local's dumps) shows only the steps' progress. `sweep` is a sweep file (YAML or JSON).
    """
    from imgclf.pipelines.local.run import run_checked

    given = {"data": data, **options}
    declared = training_options()
    paths = {o.name for o in declared if o.path}
    given = {k: _plain(v) if k in paths else v for k, v in given.items()}
    values = {**{o.name: o.default for o in declared if not o.required}, **given}
    local = run_checked(values, pipeline_root=os.fspath(pipeline_root), runner=runner, network=network,
                        quiet=quiet, cache=cache, sweep=os.fspath(sweep) if sweep else "")
    return RunResult(local)


class Predictions(list):
    """The rows `imgclf predict --output x.jsonl` writes, one dict per image in order: `file`, then
    `class`, `probability`, `top_k` ([class, probability] pairs, most probable first) and
    `probabilities` ({class: probability}), or `error` for an image that could not be classified.
    Shown in a notebook as a table."""

    def __init__(self, rows: list[dict], predicted: int = 0, failed: int = 0, class_counts: dict | None = None,
                 seconds: float = 0.0):
        super().__init__(rows)
        self.predicted, self.failed, self.seconds = predicted, failed, seconds
        self.class_counts = dict(class_counts or {})

    def _repr_html_(self, limit: int = 50) -> str:
        def cells(r: dict) -> str:
            if "error" in r:
                return f"<td>{html.escape(r['file'])}</td><td>ERROR</td><td></td><td>{html.escape(r['error'])}</td>"
            topk = ", ".join(f"{html.escape(c)} {p:.2f}" for c, p in r["top_k"])
            return (f"<td>{html.escape(r['file'])}</td><td>{html.escape(r['class'])}</td>"
                    f"<td>{r['probability']:.3f}</td><td>{topk}</td>")

        body = "".join(f"<tr>{cells(r)}</tr>" for r in self[:limit])
        more = f"<p>… {len(self) - limit} more rows</p>" if len(self) > limit else ""
        return (f"<div><strong>{self.predicted} classified, {self.failed} failed in {self.seconds:.1f} s</strong>"
                f"<table><tr><th>file</th><th>class</th><th>probability</th><th>top-k</th></tr>{body}</table>"
                f"{more}</div>")


def predict(model, images, **options) -> Predictions:
    """Classify images with an exported model, as `imgclf predict` does, and return the rows.

    `model`: a SavedModel folder (`result.saved_model`), a registry version folder, or REGISTRY/NAME for
    its champion. `images`: a file, folder or URI, or a list of them. `options` are `imgclf predict`'s
    (`top_k`, `batch_size`, `max_pixels`) with its defaults; an unknown name or bad value is refused
    with its message before the model is loaded.
    """
    from imgclf.components.predict.step import predict as predict_step

    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    values = validate({"model": _plain(model), **options}, PredictOptions)
    with tempfile.TemporaryDirectory(prefix="imgclf-predict-") as tmp:
        out = Path(tmp) / "predictions.jsonl"
        # The rows go through a temporary file (the CLI's JSON Lines, exactly), which the user never sees:
        # the step's closing line would name it.
        with contextlib.redirect_stdout(_Dropping(sys.stdout, f"; wrote {out}")):
            result = predict_step(inputs=[os.fspath(i) for i in inputs], output=str(out), **values)
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line]
    return Predictions(rows, result.predicted, result.failed, result.class_counts, result.seconds)


class _Dropping:
    """stdout, less one piece of text."""

    def __init__(self, stream, text: str):
        self.stream, self.text = stream, text

    def write(self, s: str) -> int:
        self.stream.write(s.replace(self.text, ""))
        return len(s)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _with_options(fn, options: list[Option], after: str = "options") -> None:
    """Give `fn` a signature whose `**options` is one keyword parameter per declared option, with its
    type and default: what `help()`, `inspect` and a notebook's completion show."""
    sig = inspect.signature(fn)
    kept = [p for p in sig.parameters.values() if p.name != after]
    taken = {p.name for p in kept}
    extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.type,
                               default=inspect.Parameter.empty if o.required else o.default)
             for o in options if o.name not in taken]
    fn.__signature__ = sig.replace(parameters=[*kept, *extra])


_with_options(run, training_options())
_with_options(predict, PredictOptions.declared())
