"""Pipeline parameters from the command line (`name=value`), type-checked against the compiled
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
    from components.lib.options import parse_text

    try:
        return parse_text({"integer": int, "number": float, "boolean": bool}.get(kind, str), text)
    except ValueError:
        expected = {"boolean": "true or false", "integer": "an integer", "number": "a number"}.get(kind, kind)
        raise ValueError(f"parameter {name}={text!r}: expected {expected}") from None


def parse(pipeline_file: str, pairs: list[str]) -> dict:
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
    if missing:
        raise ValueError(f"missing required parameter(s): {', '.join(missing)} (pass {missing[0]}=...)")
    return values
