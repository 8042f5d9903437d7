"""TF Serving's REST predict API, reproduced on a loaded SavedModel: JSON body in, JSON answer out.

A client of TF Serving sends images as `{"instances": [{"b64": "..."}]}` (or names the input:
`{"instances": [{"image_bytes": {"b64": "..."}}]}`, or the columnar `{"inputs": ...}` form); TF Serving
turns every `{"b64": ...}` object into raw bytes, stacks the instances into one tensor per input and
calls the signature. Doing the same here lets export and the tests prove that what we publish answers
a REST body correctly without running a TF Serving binary.

`python -m imgclf.components.export.serving_rest SAVED_MODEL < body.json` prints the answer TF Serving would give.
"""
from __future__ import annotations

import base64
import json
import sys
from typing import Any


def _decode(value: Any) -> Any:
    """{"b64": ...} objects become bytes, recursively, as TF Serving's JSON parser does."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def request_inputs(body: dict, input_names: list[str]) -> dict[str, list]:
    """Per input name, the list of (decoded) values of a row (`instances`) or columnar (`inputs`) body."""
    if ("instances" in body) == ("inputs" in body):
        raise ValueError('a predict request needs exactly one of "instances" (row format) or "inputs" (columnar)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError('"instances" must be a non-empty list')
        named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
        if named:
            missing = [n for n in input_names if any(n not in i for i in instances)]
            if missing:
                raise ValueError(f"instances lack input(s) {missing}; the signature takes {input_names}")
            return {n: [_decode(i[n]) for i in instances] for n in input_names}
        if len(input_names) != 1:
            raise ValueError(f"unnamed instances need a signature with one input; this one takes {input_names}")
        return {input_names[0]: [_decode(i) for i in instances]}
    inputs = body["inputs"]
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        return {n: _decode(inputs[n]) for n in input_names}
    if len(input_names) != 1:
        raise ValueError(f"unnamed inputs need a signature with one input; this one takes {input_names}")
    return {input_names[0]: _decode(inputs)}


def _jsonable(name: str, value: Any) -> Any:
    """Tensor values as TF Serving writes them: strings as text, or base64 when the name ends in _bytes."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_jsonable(name, v) for v in value] if value.ndim else _jsonable(name, value.item())
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()} if name.endswith("_bytes") else value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def predict(signatures, body: dict) -> dict:
    """Answer a REST predict body with a loaded SavedModel's signatures, shaped as TF Serving shapes it."""
    import tensorflow as tf

    name = body.get("signature_name", "serving_default")
    if name not in signatures:
        raise ValueError(f"no signature {name!r}; the SavedModel has {sorted(signatures)}")
    fn = signatures[name]
    specs = fn.structured_input_signature[1]
    values = request_inputs(body, sorted(specs))
    out = fn(**{n: tf.constant(v, dtype=specs[n].dtype) for n, v in values.items()})
    arrays = {k: v.numpy() for k, v in out.items()}
    if "instances" in body:
        n = len(next(iter(values.values())))
        rows = [{k: _jsonable(k, a[i]) for k, a in arrays.items()} for i in range(n)]
        if len(arrays) == 1:
            rows = [next(iter(r.values())) for r in rows]
        return {"predictions": rows}
    return {"outputs": {k: _jsonable(k, a) for k, a in arrays.items()}}


def b64_body(blobs: list[bytes], input_name: str = "") -> dict:
    """The body a REST client sends for these encoded images (named instances when `input_name` is set)."""
    items = [{"b64": base64.b64encode(b).decode()} for b in blobs]
    return {"instances": [{input_name: i} for i in items] if input_name else items}


def main(argv: list[str]) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(argv[0])  # keep the object alive: its signatures use its variables
    print(json.dumps(predict(loaded.signatures, json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main(sys.argv[1:])
