"""Options declared once: everything derived from the declarations agrees with them, bad values are
refused before work starts (by the CLI, by the step, by the pipeline's first task), and the tree keeps
its rooms apart (no step imports another)."""
from __future__ import annotations

import ast
import inspect
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgclf.components import steps as registry
from imgclf.components.kfp_glue.specs import FACES
from imgclf.components.lib.options import Option, ParameterError, validate
from imgclf.pipelines import PIPELINES, steps_of
from imgclf.pipelines.definitions.declare import parameters
from tests.conftest import REPO

STEP_PACKAGES = tuple(sorted(
    set(FACES)
    | {ref.function.split(".")[2] for ref in registry.STEPS.values()}
    | {p.parent.name for name in ("task.py", "component.py", "step.py") for p in (REPO / "components").glob(f"*/{name}")}))
"""Every step package, from the declarations (the KFP faces, the steps table) and the folders holding a
step's files, so a new one falls under the no-cross-step-imports rule without being listed here."""
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN"}


def _steps(pipeline: str) -> tuple[str, ...]:
    return steps_of(pipeline)


def _all_options() -> list[tuple[str, Option]]:
    return [(name, o) for name in registry.STEPS if registry.options(name) for o in registry.options(name).declared()]


def _bad_values(o: Option, rng: random.Random) -> list:
    """Values the declaration must refuse: wrong types, non-finite numbers, outside the range or choices."""
    bad = []
    if o.type is float:
        bad += [math.nan, math.inf, -math.inf, "0.1", True]
    if o.type is int:
        bad += [1.5, "3", True, None]
    if o.type is bool:
        bad += [1, "true", None]
    if o.type is str:
        bad += [3, None]
    if o.choices:
        bad += [o.choices[0] + "x", o.choices[0].upper() + "_", ""]
    if o.min is not None:
        below = o.min - (0 if o.min_exclusive else (1 if o.type is int else 1e-9 * max(1, abs(o.min))))
        bad += [o.type(below)] + [o.type(o.min - rng.uniform(1, 1e6)) for _ in range(3)]
    if o.max is not None:
        above = o.max + (1 if o.type is int else 1e-9 * max(1, abs(o.max)))
        bad += [o.type(above)] + [o.type(o.max + rng.uniform(1, 1e6)) for _ in range(3)]
    return bad


def _good_values(o: Option) -> list:
    good = [] if o.required else [o.default]
    good += list(o.choices)
    if o.min is not None and not o.min_exclusive:
        good.append(o.type(o.min))
    if o.max is not None:
        good.append(o.type(o.max))
    return good


@pytest.mark.unit
def test_every_declared_option_refuses_generated_bad_values_naming_itself():
    rng = random.Random(7)
    checked = 0
    for step, o in _all_options():
        for value in _bad_values(o, rng):
            with pytest.raises(ParameterError, match=rf"parameter {o.name}=.*\(allowed: "):
                o.validate(value)
            checked += 1
        for value in _good_values(o):
            assert o.validate(value) == value, (step, o.name, value)
    assert checked > 300


@pytest.mark.unit
def test_every_option_has_help_and_a_kfp_type():
    for step, o in _all_options():
        assert o.help and not o.help.endswith("."), (step, o.name)
        assert o.type in KFP_TYPES and o.path in ("", "read", "write")
        if not o.required:
            assert o.validate(o.default) == o.default, (step, o.name)  # every default is itself allowed


@pytest.mark.unit
def test_shared_options_are_one_declaration():
    """seed (preprocess and train), registry and model_name (the release steps) and max_pixels are each
    declared once: the union of a pipeline's steps never sees two different declarations of a name."""
    for pipeline in PIPELINES:
        names = [o.name for o in parameters(_steps(pipeline))]
        assert len(names) == len(set(names))
    owners = {}
    for _step, o in _all_options():
        if o.pipeline:
            owners.setdefault(o.name, set()).add(o)
    assert {n for n, decls in owners.items() if len(decls) > 1} == set()


@pytest.mark.parametrize("target", ["kfp", "vertex"])
@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_compiled_pipeline_describes_every_parameter_with_its_declared_type_and_default(pipeline, target,
                                                                                     tmp_path):
    from imgclf.pipelines.cli.main import main

    out = tmp_path / "p.yaml"
    assert main(["compile", "--allow-local-image", "--pipeline", pipeline, "--target", target, "-o", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    compiled = spec["root"]["inputDefinitions"]["parameters"]
    declared = {o.name: o for o in parameters(_steps(pipeline))}
    assert set(compiled) == set(declared)
    for name, o in declared.items():
        p = compiled[name]
        assert p["parameterType"] == KFP_TYPES[o.type], name
        assert o.help.split(":")[0] in p["description"], name
        if o.choices:
            assert all(str(c) in p["description"] for c in o.choices), name
        if o.required:
            assert "defaultValue" not in p, name
        else:
            assert p["defaultValue"] == o.default or float(p["defaultValue"]) == o.default, name


@pytest.mark.unit
def test_every_component_input_matches_its_step_declaration():
    """The generated KFP components take exactly each step's options, with the declared types and defaults."""
    from kfp.dsl import structures

    from imgclf.components.kfp_glue import specs, wrappers

    for spec in specs.SPECS:
        if not spec.options:
            continue
        inputs: dict[str, structures.InputSpec] = getattr(wrappers, spec.name).component_spec.inputs
        for o in spec.declared():
            i = inputs[o.name]
            assert i.type == {str: "String", int: "Integer", float: "Float", bool: "Boolean"}[o.type], o.name
            assert (i.default is None) if o.required else i.default == o.default, o.name
            assert i.description and o.help.split(":")[0] in i.description, o.name


@pytest.mark.unit
def test_step_signatures_come_from_the_declarations():
    for name in registry.STEPS:
        cls = registry.options(name)
        if cls is None:
            continue
        sig = inspect.signature(registry.function(name))
        for o in cls.declared():
            if name == "predict" and o.name in ("images", "output_format"):
                continue  # the batch component's own inputs (BatchPredictOptions)
            p = sig.parameters[o.name]
            assert p.annotation is o.type and (p.default is inspect.Parameter.empty) == o.required, (name, o.name)
            if not o.required:
                assert p.default == o.default


@pytest.mark.unit
def test_a_step_refuses_bad_options_before_reading_anything(tmp_path):
    from imgclf.components.preprocess.step import preprocess
    from imgclf.components.train.step import train

    with pytest.raises(ParameterError, match="batch_size=0"):
        train(str(tmp_path / "missing"), str(tmp_path / "m"), batch_size=0)
    with pytest.raises(ParameterError, match="learning_rate=nan"):
        train(str(tmp_path / "missing"), str(tmp_path / "m"), learning_rate=float("nan"))
    with pytest.raises(ParameterError, match="image_size=100000"):
        preprocess(str(tmp_path / "missing"), str(tmp_path / "pp"), image_size=100_000)
    with pytest.raises(ParameterError, match="val_fraction=0.5 and test_fraction=0.5"):
        preprocess(str(tmp_path / "missing"), str(tmp_path / "pp"), val_fraction=0.5, test_fraction=0.5)
    assert not (tmp_path / "m").exists() and not (tmp_path / "pp").exists()


@pytest.mark.unit
def test_validate_refuses_unknown_names_and_missing_local_paths(tmp_path):
    groups = registry.pipeline_options(list(_steps("training")))
    with pytest.raises(ParameterError, match="unknown parameter.*batchsize"):
        validate({"data": str(tmp_path), "batchsize": 3}, *groups)
    with pytest.raises(ParameterError, match="data=.*no such file"):
        validate({"data": str(tmp_path / "nope")}, *groups, check_paths=True)
    with pytest.raises(ParameterError, match="weights=.*no such file"):
        validate({"data": str(tmp_path), "weights": str(tmp_path / "w.h5")}, *groups, check_paths=True)
    assert validate({"data": str(tmp_path), "weights": "imagenet", "registry": str(tmp_path / "new")}, *groups,
                    check_paths=True)


@pytest.mark.parametrize("flag, value, allowed", [
    ("--batch-size", "0", "an integer >= 1"),
    ("--lr-schedule", "cosin", "one of cosine, constant, plateau"),
    ("--learning-rate", "nan", "a finite number > 0"),
    ("--image-size", "100000", "an integer >= 8 and <= 1_024"),
])
def test_imgclf_run_refuses_a_bad_parameter_before_any_task(flag, value, allowed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(REPO / "data"), flag, value,
                           "--pipeline-root", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"parameter {flag[2:].replace('-', '_')}=" in proc.stderr and allowed in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.unit
def test_submit_refuses_a_bad_parameter_before_anything_is_sent(tmp_path, capsys):
    from imgclf.pipelines.cli.main import main

    # No server listens on the host: a refusal here can only come from the check before sending.
    assert main(["submit", "--backend", "kfp", "--host", "http://127.0.0.1:9", "--allow-local-image", "data=gs://b/imgs",
                 "compare_metric=f1"]) == 1
    err = capsys.readouterr().err
    assert "parameter compare_metric='f1'" in err and "one of accuracy, macro_f1" in err


def test_the_validate_task_stops_a_run_whose_parameters_bypassed_the_cli(tmp_path):
    """As when a parameter is typed into the KFP UI: the pipeline's first task refuses it, nothing else runs."""
    from imgclf.pipelines.definitions.training import training_pipeline
    from imgclf.pipelines.local.run import PipelineFailed, run_pipeline

    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(training_pipeline, {"data": str(REPO / "data" / "fashion-mnist-sample"), "lr_schedule": "cosin"},
                     str(tmp_path / "runs"))
    assert failed.value.step == "validate"
    assert not list((tmp_path / "runs").rglob("ingest"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.unit
def test_no_step_imports_another_step_and_libraries_import_no_step():
    components = REPO / "components"
    assert {"ingest", "release", "sweep", "deploy"} <= set(STEP_PACKAGES)
    assert not {"lib", "kfp_glue"} & set(STEP_PACKAGES)
    for package in (*STEP_PACKAGES, "lib"):
        for path in (components / package).rglob("*.py"):
            others = [p for p in STEP_PACKAGES if p != package]
            bad = sorted(m for m in _imports(path) if any(m == f"imgclf.components.{o}" or m.startswith(f"imgclf.components.{o}.")
                                                          for o in others))
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in (components / "lib").rglob("*.py"):
        assert not any(m.startswith("imgclf.components.kfp_glue") for m in _imports(path)), path
    assert not any(m.startswith("imgclf.pipelines") for p in components.rglob("*.py") for m in _imports(p))


@pytest.mark.unit
def test_the_generated_reference_pages_are_current_and_the_architecture_lists_every_file():
    from imgclf.pipelines import docs

    assert docs.main(["--check"]) == 0, "run `make docs`"
    page = (REPO / "docs" / "architecture.md").read_text()
    listing = page[page.index("## Every file"):]
    files = [p for d in ("components", "pipelines", "benchmarks") for p in (REPO / d).rglob("*.py")
             if p.name != "__init__.py" and "__pycache__" not in p.parts]
    assert len(files) > 50, "the file walk found too few files to mean anything"
    missing = [str(p.relative_to(REPO)) for p in files if f"`{p.relative_to(REPO)}`" not in listing]
    assert not missing, f"docs/architecture.md's 'Every file' does not list {missing}"
    listed = re.findall(r"^\| `((?:components|pipelines|benchmarks)/[^`]+\.py)` \|", listing, re.M)
    gone = [name for name in listed if not (REPO / name).exists()]
    assert not gone, f"docs/architecture.md's 'Every file' lists files that no longer exist: {gone}"


@pytest.mark.unit
def test_a_stale_generated_block_is_found_and_rewritten(tmp_path, monkeypatch):
    """`--check` must be able to fail: a page whose table was edited by hand is reported stale, and
    the rewrite restores exactly what the generator makes."""
    from imgclf.pipelines import docs

    page = tmp_path / "parameters.md"
    current = docs.PARAMETERS.read_text()
    page.write_text(current.replace("| `seed` |", "| `seed (edited)` |", 1))
    monkeypatch.setattr(docs, "blocks", lambda: {page: {f"parameters:{p}": (lambda p=p: docs.table(p))
                                                        for p in ("training", "predict")}})
    monkeypatch.setattr(docs, "REPO", tmp_path)
    assert docs.main(["--check"]) == 1
    assert docs.main([]) == 0
    assert page.read_text() == current


@pytest.mark.unit
def test_docker_runner_mounts_every_declared_path_parameter():
    from imgclf.pipelines.local.docker_runner import path_parameters

    paths = {o.name: o.path for o in path_parameters()}
    assert paths == {o.name: o.path for o in parameters(_steps("training")) if o.path}
    assert {"data": "read", "data_base_uri": "read", "weights": "read", "registry": "write", "export_to": "write",
            "tensorboard_uri": "write"}.items() <= paths.items()


@pytest.mark.unit
def test_a_steps_usage_names_the_command_it_was_called_by(capsys):
    from imgclf.components import __main__ as entry
    from imgclf.pipelines.cli.main import main as imgclf

    for run, usage in ((lambda a: imgclf(["step", *a]), "usage: imgclf step ingest"),
                       (entry.main, f"usage: {entry.PROG} ingest")):
        with pytest.raises(SystemExit) as done:
            run(["ingest", "-h"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(usage)
    with pytest.raises(SystemExit):
        imgclf(["step", "no-such-step"])
    err = capsys.readouterr().err
    assert err.startswith("usage: imgclf step") and "imgclf.components" not in err
