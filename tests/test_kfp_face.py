"""The KFP faces are checked-in files (each step's component.py, each pipeline's *_face.py) generated
from components/kfp_glue/specs.py: they must be what the generator writes now, one per component, the
source KFP ships must be those files' functions, and nothing may go back to generating code at import
time (linecache + exec), which left the interfaces in no file anyone could read or diff."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from imgclf.components import steps as step_table
from imgclf.components.kfp_glue import generate
from imgclf.components.kfp_glue.specs import FACES, PIPELINES, SPECS

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]


def _components():
    """(package, spec, the component, the task body) for every declared component."""
    by_name = {s.name: s for s in SPECS}
    for package, names in FACES.items():
        face = importlib.import_module(f"imgclf.components.{package}.component")
        task = importlib.import_module(f"imgclf.components.{package}.task")
        for name in names:
            yield package, by_name[name], getattr(face, name), getattr(task, name)


def test_the_checked_in_faces_are_what_the_generator_writes():
    assert generate.stale(REPO) == []
    assert generate.main(["--check"]) == 0


def test_a_face_edited_by_hand_or_missing_is_named_by_the_check(tmp_path, capsys):
    for path, text in generate.files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "components/train/component.py"
    edited.write_text(edited.read_text().replace("    return _body(**_given)\n", "    return _body(**_given)  # edited\n", 1))
    (tmp_path / "pipelines/definitions/prediction_face.py").unlink()
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "components/train/component.py is stale" in err
    assert "pipelines/definitions/prediction_face.py is stale" in err
    assert "components/ingest/component.py" not in err
    assert generate.main(["--root", str(tmp_path)]) == 0  # rewrites both
    assert generate.stale(tmp_path) == []


def test_every_step_and_spec_has_its_face_and_its_body():
    declared = [s.name for s in SPECS]
    assert sorted(declared) == sorted(n for names in FACES.values() for n in names)  # each in one file, once
    # The pipelines run preprocess as plan -> shard tasks -> merge (each a step of its own); the
    # single-task form is the container entry's and `imgclf step`'s. Ingest likewise, its merge being
    # the component named `ingest` (so the task holding the dataset keeps the step's name).
    assert set(step_table.STEPS) - set(declared) == {"preprocess", "lr_find"}  # lr_find: a diagnostic
    for spec in SPECS:
        assert set(spec.options) <= set(step_table.STEPS), spec.name
    for _package, spec, component, body in _components():
        assert component.name == spec.name.replace("_", "-"), spec.name
        # The task body takes every argument the face forwards (`**locals()`).
        face_params = inspect.signature(component.python_func).parameters
        inspect.signature(body).bind(**dict.fromkeys(face_params))


def test_a_named_tuple_output_is_filled_by_name_whatever_order_the_body_returns(monkeypatch):
    # KFP's executor fills a NamedTuple's outputs by position (`func_output[i]` against the annotation's
    # fields): the face must order them as declared, whatever order the task body's dict has.
    faced = [(package, spec, component) for package, spec, component, _ in _components() if spec.outputs]
    assert {spec.name for _, spec, _ in faced} >= {"champion", "gate"}
    for package, spec, component in faced:
        _name, fields = spec.outputs
        fn = component.python_func
        assert inspect.signature(fn).return_annotation._fields == fields, spec.name
        values = {f: f"<{f}>" for f in reversed(fields)}
        monkeypatch.setattr(importlib.import_module(f"imgclf.components.{package}.task"), spec.name,
                            lambda _values=values, **_: dict(_values))
        out = fn(**dict.fromkeys(inspect.signature(fn).parameters))
        assert tuple(out) == tuple(f"<{f}>" for f in fields), spec.name
        assert {f: getattr(out, f) for f in fields} == values
    # A body that leaves an output out fails the task instead of shifting the others.
    package, spec, component = faced[0]
    monkeypatch.setattr(importlib.import_module(f"imgclf.components.{package}.task"), spec.name,
                        lambda **_: {spec.outputs[1][0]: "x"})
    with pytest.raises(TypeError):
        component.python_func(**dict.fromkeys(inspect.signature(component.python_func).parameters))


def test_kfp_ships_the_checked_in_function_itself():
    for package, spec, component, _ in _components():
        fn = component.python_func
        assert Path(inspect.getsourcefile(fn)) == REPO / "components" / package / "component.py"
        shipped = component.component_spec.implementation.container.command[-1]
        source = inspect.getsource(fn)
        assert source[source.index("def "):] in shipped, spec.name
        assert f"from imgclf.components.{package}.task import {spec.name} as _body" in shipped


def test_each_pipeline_function_is_its_steps_parameters_and_hands_the_graph_every_value():
    from imgclf.pipelines.definitions.declare import parameters

    for p in PIPELINES:
        face = importlib.import_module(f"imgclf.pipelines.definitions.{p.name}_face")
        fn = face.face(lambda values: values)
        params = inspect.signature(fn).parameters
        declared = parameters(p.steps)
        assert list(params) == [o.name for o in declared]
        required = {o.name: f"<{o.name}>" for o in declared if o.required}
        assert fn(**required) == {o.name: required.get(o.name, o.default) for o in declared}
        check = inspect.signature(face.validate.python_func).parameters
        assert list(check) == ["pipeline_steps", *params]


def _code_generation(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name == "linecache" for a in node.names):
            found.append("import linecache")
        elif isinstance(node, ast.ImportFrom) and node.module == "linecache":
            found.append("from linecache import")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("exec", "eval", "compile")):
            found.append(f"{node.func.id}()")
    return found


def test_no_module_generates_code_at_import_time(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import linecache\nexec(compile('x = 1', '<generated>', 'exec'))\n")
    assert _code_generation(probe) == ["import linecache", "exec()", "compile()"]
    for folder in ("components", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            assert _code_generation(path) == [], path.relative_to(REPO)
