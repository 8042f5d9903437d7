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
- The champion pointer is one small object replaced whole (rename locally, one PUT on a bucket), written
  after the version is complete. Only gate-passing models are published, so the highest version, which
  TF Serving serves by default, is the champion.
One publisher per model name at a time (schedules run with max_concurrency 1).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from components.contracts import MODEL_FILE, TRAIN_FILE
from components.lib import storage

SCHEMA_VERSION = 2  # 2: the input spec under "input", the network under "architecture"
CHAMPION_FILE = "champion.json"
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


def next_version(registry: str, model_name: str) -> int:
    """One above every integer folder, complete or not: an interrupted publish's number is never reused."""
    return max(_integer_folders(registry, model_name), default=0) + 1


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
    version = next_version(registry, model_name)
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
    storage.write_text(storage.join(model_uri(registry, model_name), CHAMPION_FILE), json.dumps(
        {"version": version, "updated": record["created"], "source_run": record.get("source_run", "")}, indent=1))
    print(f"publish: {model_name} version {version} at {dest} is now the champion", flush=True)
    return version
