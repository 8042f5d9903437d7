"""Pipeline parameters from a params file and the command line (`name=value`), type-checked against the compiled
pipeline's declared inputs before anything is sent to a backend."""
from __future__ import annotations

import yaml

TYPES = {"STRING": "string", "NUMBER_INTEGER": "integer", "NUMBER_DOUBLE": "number", "BOOLEAN": "boolean"}


def declared(pipeline_file: str) -> dict[str, dict]:
    """{name: {"type": ..., "required": bool, "default": ...}} from a compiled pipeline YAML."""
    with open(pipeline_file, encoding="utf-8") as f:
        spec = next(yaml.safe_load_all(f))
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: {"type": TYPES.get(p["parameterType"], p["parameterType"]),
                   "required": not p.get("isOptional", False) and "defaultValue" not in p,
                   "default": p.get("defaultValue")} for name, p in params.items()}


def _coerce(name: str, kind: str, text: str):
    from imgclf.components.lib.options import parse_text

    try:
        return parse_text({"integer": int, "number": float, "boolean": bool}.get(kind, str), text)
    except ValueError:
        expected = {"boolean": "true or false", "integer": "an integer", "number": "a number"}.get(kind, kind)
        raise ValueError(f"parameter {name}={text!r}: expected {expected}") from None


def parse(pipeline_file: str, pairs: list[str], required: bool = True) -> dict:
    spec = declared(pipeline_file)
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"parameters are name=value, got {pair!r}")
        if name not in spec:
            raise ValueError(f"unknown parameter {name!r}; this pipeline takes: {', '.join(sorted(spec))}")
        values[name] = _coerce(name, spec[name]["type"], text)
    missing = [n for n, p in spec.items() if p["required"] and n not in values]
    if missing and required:
        raise ValueError(f"missing required parameter(s): {', '.join(missing)} (pass {missing[0]}=...)")
    return values


def load_file(path: str) -> dict:
    """`name: value` pairs from a YAML or JSON file: one flat mapping, as `name=value` would give."""
    import json
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except FileNotFoundError:
        raise ValueError(f"--params-file {path}: no such file") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"--params-file {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--params-file {path}: expected a mapping of parameter names to values, "
                         f"got {type(data).__name__}")
    for name, value in data.items():
        if not isinstance(name, str) or isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"--params-file {path}: {name!r}: each parameter is a name with a plain value "
                             "(text, number, true/false)")
    return data


def _check_typed(name: str, kind: str, value):
    """A params-file value as the pipeline declares it: quoted text is parsed like `name=value`."""
    if isinstance(value, str) and kind != "string":
        return _coerce(name, kind, value)
    ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "boolean": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str)}.get(kind, lambda v: True)
    if not ok(value):
        raise ValueError(f"parameter {name}={value!r} in the params file: expected {kind}")
    return float(value) if kind == "number" else value


def merged(pipeline_file: str, file_values: dict, pairs: list[str]) -> dict:
    """The params file's values, then `name=value` pairs on top (the command line wins), checked
    against the compiled pipeline's inputs."""
    spec = declared(pipeline_file)
    unknown = sorted(set(file_values) - set(spec))
    if unknown:
        raise ValueError(f"unknown parameter(s) in the params file: {', '.join(unknown)}; "
                         f"this pipeline takes: {', '.join(sorted(spec))}")
    values = {n: _check_typed(n, spec[n]["type"], v) for n, v in file_values.items()}
    given = parse(pipeline_file, pairs, required=False)
    values.update(given)
    missing = [n for n, p in spec.items() if p["required"] and n not in values]
    if missing:
        raise ValueError(f"missing required parameter(s): {', '.join(missing)} (pass {missing[0]}=...)")
    return values
