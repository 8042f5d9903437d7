"""The model registry: published versions laid out as TF Serving reads them, plus a champion pointer.

```
<registry>/<model-name>/
    champion.json                      {"version": N, ...}: the model scheduled retraining must beat
    1/  saved_model.pb variables/ ...  a TF Serving version folder (integer names, increasing)
        assets.extra/record.json       metrics, data fingerprint, parameters, source run, time: written LAST
        assets.extra/model_card.md
        assets.extra/keras/model.keras the Keras model, so a later run can warm-start from it
        assets.extra/tf_serving_warmup_requests, saved_model_cli.txt, imgclf.json (from export)
    2/ ...
    claims/1, claims/2                 version numbers taken (create-only writes; not a TF Serving folder)
```
Point TF Serving's `--model_base_path` at `<registry>/<model-name>`. Everything of a version lives in
its folder (TF Serving tolerates extra files under `assets.extra/` only), so one copy publishes it.

What "visible" means, and why a reader never sees a half-written version:
- A version exists only once its `assets.extra/record.json` exists. Readers (the champion lookup, the
  gate, `versions()`) ignore integer folders without a record.
- Local registry: the version is assembled under a hidden non-integer name and renamed into place.
- Object stores have no rename: files are uploaded under `<N>.partial-<id>` (TF Serving ignores
  non-integer names), then copied server-side to `<N>/` with `saved_model.pb` second to last (TF Serving
  cannot load a version without it) and the record last. A publish killed during that copy can leave
  an incomplete `<N>/` without a record: readers ignore it, and the next publish takes a higher number.
- The champion pointer is one small object replaced whole (rename locally, one conditional PUT on a
  bucket), written after the version is complete, and never moved back to an older version. Only
  gate-passing models are published, so the highest version, which TF Serving serves by default, is
  the champion.
Concurrent publishers of one model name are safe: a version number is claimed with a create-only
write (`claims/<N>`) and the champion pointer moves only forward, by compare-and-swap (see
`claim_version` and `advance_champion`). Where a store ignores those preconditions (the GCS emulator
the tests use does), two publishers can still collide: real S3, MinIO and GCS honour them.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from components.contracts import MODEL_FILE, TRAIN_FILE
from components.lib import storage
from components.lib.options import Options, option

SCHEMA_VERSION = 2  # 2: the input spec under "input", the network under "architecture"
CHAMPION_FILE = "champion.json"
CLAIMS = "claims"
RECORD = "assets.extra/record.json"
MODEL_CARD = "assets.extra/model_card.md"
KERAS_DIR = "assets.extra/keras"


class RegistryError(ValueError):
    """The registry location or model name cannot be used; the message says which and why."""


def model_name_problem(name: str) -> str:
    """Why `name` cannot be a model's folder in the registry ("" if it can)."""
    if not name or "/" in name or name.startswith(".") or name.isdigit():
        return "use a plain folder name (no '/', no leading dot, not a number)"
    return ""


@dataclass(frozen=True, kw_only=True)
class RegistryTarget(Options):
    """Where a model's versions live: the options every step that reads or writes the registry shares
    (champion lookup, gate, publish, deploy), declared once."""
    registry: str = option("", "model registry: local folder, gs:// or s3:// prefix; empty: gate on the "
                               "thresholds only and publish nothing", path="write")
    model_name: str = option("imgclf", "the model's folder in the registry", check=model_name_problem)


def model_uri(registry: str, model_name: str) -> str:
    if problem := model_name_problem(model_name):
        raise RegistryError(f"model name {model_name!r}: {problem}")
    return storage.join(registry, model_name)


def version_uri(registry: str, model_name: str, version: int) -> str:
    return storage.join(model_uri(registry, model_name), str(version))


def _integer_folders(registry: str, model_name: str) -> list[int]:
    return sorted(int(n) for n in storage.list_names(model_uri(registry, model_name)) if n.isdigit())


def versions(registry: str, model_name: str) -> list[int]:
    """Complete versions (those with a record), oldest first."""
    return [v for v in _integer_folders(registry, model_name)
            if storage.exists(storage.join(version_uri(registry, model_name, v), RECORD))]


def read_record(registry: str, model_name: str, version: int) -> dict:
    return json.loads(storage.read_text(storage.join(version_uri(registry, model_name, version), RECORD)))


def _champion_version(model_location: str) -> int | None:
    """The version the champion pointer under `<registry>/<name>` names; None without a pointer."""
    pointer = storage.join(model_location, CHAMPION_FILE)
    if not storage.exists(pointer):
        return None
    return int(json.loads(storage.read_text(pointer))["version"])


def champion(registry: str, model_name: str) -> dict | None:
    """The champion's record (with `uri`), or None before the first publish."""
    version = _champion_version(model_uri(registry, model_name))
    if version is None:
        return None
    record = read_record(registry, model_name, version)
    return {**record, "uri": version_uri(registry, model_name, version)}


def resolve(location: str) -> str:
    """`REGISTRY/NAME` (a folder with a champion pointer) -> the champion version's folder; else unchanged."""
    version = _champion_version(location)
    return location if version is None else storage.join(location, str(version))


def _claims(registry: str, model_name: str) -> list[int]:
    return sorted(int(n) for n in storage.list_names(storage.join(model_uri(registry, model_name), CLAIMS))
                  if n.isdigit())


def next_version(registry: str, model_name: str) -> int:
    """One above every integer folder and every claimed number, complete or not: an interrupted or a
    concurrent publish's number is never reused."""
    return max([*_integer_folders(registry, model_name), *_claims(registry, model_name)], default=0) + 1


def claim_version(registry: str, model_name: str, run: str = "", attempts: int = 100) -> int:
    """The next version number, claimed with a create-only write (`claims/<N>`: S3 If-None-Match, GCS
    if_generation_match=0, O_EXCL locally), so two publishers can never both take N: the loser takes
    the next number. `claims/` is not an integer folder: TF Serving ignores it."""
    version = next_version(registry, model_name)
    for _ in range(attempts):
        uri = storage.join(model_uri(registry, model_name), CLAIMS, str(version))
        try:
            storage.write_if(uri, json.dumps({"run": run, "at": datetime.now(timezone.utc).isoformat()}).encode(),
                             None)
            return version
        except storage.PreconditionFailed:
            version = max(version + 1, next_version(registry, model_name))
    raise RegistryError(f"{model_uri(registry, model_name)}: no version number could be claimed in {attempts} tries")


def advance_champion(registry: str, model_name: str, version: int, pointer: dict, attempts: int = 100) -> bool:
    """Point champion.json at `version` unless it already names a newer one: compare-and-swap on the
    pointer (If-Match / if_generation_match / a lock locally), so a slower publisher never moves it back.
    Returns whether the pointer now names `version`."""
    uri = storage.join(model_uri(registry, model_name), CHAMPION_FILE)
    for _ in range(attempts):
        current = storage.read_versioned(uri)
        if current is not None and int(json.loads(current[0])["version"]) >= version:
            return int(json.loads(current[0])["version"]) == version
        try:
            storage.write_if(uri, json.dumps(pointer, indent=1).encode(), None if current is None else current[1])
            return True
        except storage.PreconditionFailed:
            continue
    raise RegistryError(f"{uri}: the champion pointer kept changing; {attempts} tries")


def publish(saved_model_dir: str, model_dir: str, registry: str, model_name: str, record: dict,
            card: Callable[[dict], str]) -> int:
    """Publish a checked SavedModel as the next version and make it the champion; returns the version.

    `card` renders the model card from the final record (version number and time included).
    """
    if not (Path(saved_model_dir) / "saved_model.pb").exists():
        raise FileNotFoundError(f"{saved_model_dir}: no saved_model.pb; pass the export step's output")
    bad = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise RegistryError(f"refusing to publish {model_name}: non-finite metrics {bad}")
    version = claim_version(registry, model_name, record.get("source_run", ""))
    dest = version_uri(registry, model_name, version)
    record = {"schema_version": SCHEMA_VERSION, "model_name": model_name, "version": version,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
    with tempfile.TemporaryDirectory(prefix="imgclf-publish-") as tmp:
        staged = Path(tmp) / str(version)
        shutil.copytree(saved_model_dir, staged)
        (staged / KERAS_DIR).mkdir(parents=True)
        for name in (MODEL_FILE, TRAIN_FILE):
            shutil.copyfile(Path(model_dir) / name, staged / KERAS_DIR / name)
        (staged / MODEL_CARD).write_text(card(record), encoding="utf-8")
        (staged / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        storage.publish_dir(str(staged), dest, last=("saved_model.pb", RECORD))
    pointer = {"version": version, "updated": record["created"], "source_run": record.get("source_run", "")}
    if advance_champion(registry, model_name, version, pointer):
        print(f"publish: {model_name} version {version} at {dest} is now the champion", flush=True)
    else:
        print(f"publish: {model_name} version {version} at {dest}; a newer version published meanwhile stays "
              "the champion", flush=True)
    return version
