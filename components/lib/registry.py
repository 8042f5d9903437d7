"""The model registry: published versions laid out as TF Serving reads them, a champion pointer, and the
serving config that pins the champion.

```
<registry>/<model-name>/
    champion.json                      {"version": N, ...}: the model scheduled retraining must beat
    models.config                      TF Serving ModelServerConfig pinning version N (base_path /mnt/models)
    1/  saved_model.pb variables/ ...  a TF Serving version folder (integer names, increasing)
        assets.extra/record.json       metrics, data fingerprint, parameters, source run, time and the
                                       list of the version's files with their sizes: written LAST
        assets.extra/model_card.md
        assets.extra/keras/model.keras the Keras model, so a later run can warm-start from it
        assets.extra/tf_serving_warmup_requests, saved_model_cli.txt, imgclf.json (from export)
    2/ ...
    claims/1, claims/2                 version numbers taken (create-only writes; not a TF Serving folder)
```
Everything of a version lives in its folder (TF Serving tolerates extra files under `assets.extra/`
only), so one copy publishes it.

What servers must follow, and why: **the serving config, never "the highest folder"**. Serve the model
folder (mounted or downloaded at `/mnt/models`) with `--model_config_file=/mnt/models/models.config`.
Object stores have no rename: a version is copied object by object into `<N>/`, so a publish killed
mid-copy leaves an `<N>/` holding some files, and one killed after the copy but before the pointer moved
leaves a complete `<N>/` that is not the champion. TF Serving's default policy (serve the highest
integer folder; KServe's predictor does the same with the whole folder) would load either. The config
pins one version, `model_version_policy { specific { versions: N } }`, and is written only after the
pointer names N, so every version a server following it loads is complete and the champion (or, for a
moment during a publish, the previous champion). Locally a version is renamed into place, so the highest
folder is always complete, but it can still be a version whose pointer never moved: local servers follow
the config too. The config names the model by its registry name (the name clients call).

A publish, in order:
1. the version number is claimed with a create-only write (`claims/<N>`), so concurrent publishers never
   share one;
2. the version is assembled locally (files from `extra_files` included), its record written last;
3. the folder is copied in: locally assembled under a hidden `.<N>.partial-<id>` and renamed into place
   (atomic); on a bucket uploaded under `<N>.partial-<id>/` (a non-integer name: no server reads it),
   then copied server-side into `<N>/` with `saved_model.pb` second to last and the record last;
4. `champion.json` moves to N by compare-and-swap (never back to an older version);
5. `models.config` is rewritten to pin the version `champion.json` names (replaced whole: one object
   write, or a rename locally; compare-and-swap, so it never moves back either).
A version exists only once its record does: readers (the champion lookup, the gate, `versions()`)
ignore integer folders without one.

What a killed publish leaves, and the repair: staging (`<N>.partial-*`), an integer folder without a
record (copy interrupted), a complete version newer than the champion (killed before the pointer
moved), a `models.config` that does not pin the champion (killed before it was written). Each publish
first repairs what it finds, and `imgclf registry check [--repair] REGISTRY/NAME` reports (and with
`--repair` fixes) the same: leftovers are removed, the complete version is made the champion (roll
forward: only gate-passed models are published) and the config is rewritten. Leftovers of a publish
that may still be running are left alone: locally the writer's lock tells; on a bucket, those whose
claim is younger than the grace period (`IMGCLF_REGISTRY_GRACE_SECONDS`, default one hour; `--grace`).

A damaged `champion.json` (not JSON, no version, a version that is not complete) is never overwritten
automatically: every reader and publish stop with a RegistryError naming the file and the newest
complete version, and `imgclf registry check --repair --champion N` points it at a version chosen by
a person (the versions it passed over are not rolled forward later; the next publish moves on).
Concurrent publishers of one model name are safe where the store honours preconditions
(real S3, MinIO, GCS); the GCS emulator the tests use ignores them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from imgclf.components.contracts import MODEL_FILE, TRAIN_FILE
from imgclf.components.lib import storage
from imgclf.components.lib.options import Options, option

SCHEMA_VERSION = 2  # 2: the input spec under "input", the network under "architecture"
CHAMPION_FILE = "champion.json"
SERVING_CONFIG = "models.config"
SERVING_BASE_PATH = "/mnt/models"  # where KServe's storage initializer (and our docker line) puts the model folder
CLAIMS = "claims"
SAVED_MODEL = "saved_model.pb"
EXTRA_DIR = "assets.extra"
RECORD = "assets.extra/record.json"
MODEL_CARD = "assets.extra/model_card.md"
KERAS_DIR = "assets.extra/keras"
FILES = "files"  # the record's list of the version's other files and their sizes
GRACE_ENV = "IMGCLF_REGISTRY_GRACE_SECONDS"
DEFAULT_GRACE_S = 3600.0
_STAGING = re.compile(r"\.?(\d+)\.partial-[0-9a-z]+")


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
    """Versions with a record, oldest first (a record is written last: the copy finished)."""
    storage.forget_listings(model_uri(registry, model_name))
    return [v for v in _integer_folders(registry, model_name)
            if storage.exists(storage.join(version_uri(registry, model_name, v), RECORD))]


def read_record(registry: str, model_name: str, version: int) -> dict:
    return json.loads(storage.read_text(storage.join(version_uri(registry, model_name, version), RECORD)))


def read_version_file(registry: str, model_name: str, version: int, rel: str) -> bytes:
    """The bytes of one file of a published version (`rel` relative to its folder, e.g.
    "assets.extra/seen_images.txt.gz"); FileNotFoundError if it has none."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise RegistryError(f"{rel!r}: give a path relative to the version folder")
    return storage.read_bytes(storage.join(version_uri(registry, model_name, version), p.as_posix()))


def _listing(uri: str) -> dict[str, int]:
    """Every file under `uri` (relative path -> size), fresh from the store; {} if there is none.
    Locally, files renamed or removed meanwhile (a concurrent publish moving its version into place)
    are passed over rather than ending the listing."""
    if storage.is_local(uri):
        root, out = storage.local_path(uri), {}
        for folder, _, names in os.walk(root):  # os.walk passes over folders that vanish meanwhile
            for name in names:
                path = os.path.join(folder, name)
                try:
                    out[os.path.relpath(path, root).replace(os.sep, "/")] = os.stat(path).st_size
                except OSError:
                    pass
        return out
    storage.forget_listings(uri)
    try:
        return {e.rel: e.size for e in storage.walk_files(uri) if not e.skip_reason}
    except FileNotFoundError:
        return {}


def _version_problem(loc: str, version: int, files: dict[str, int] | None = None) -> str:
    """Why version `version` under the model folder `loc` is not complete ("" if it is): its record
    exists and every file the record lists is there with its size (records before the list: the
    record and saved_model.pb)."""
    vuri = storage.join(loc, str(version))
    files = _listing(vuri) if files is None else files
    if not files:
        return "no such version folder"
    if RECORD not in files:
        return f"no {RECORD}: its publish did not finish copying"
    if SAVED_MODEL not in files:
        return f"no {SAVED_MODEL}"
    try:
        record = json.loads(storage.read_text(storage.join(vuri, RECORD)))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        return f"its record is not readable JSON ({_one_line(e)})"
    listed = record.get(FILES) if isinstance(record, dict) else None
    if not isinstance(record, dict):
        return "its record is not a JSON object"
    if isinstance(listed, dict):
        missing = sorted(r for r in listed if r not in files)
        if missing:
            more = ", ..." if len(missing) > 3 else ""
            return f"{len(missing)} of its files missing ({', '.join(missing[:3])}{more})"
        wrong = sorted(r for r, size in listed.items() if files[r] != size)
        if wrong:
            return f"{len(wrong)} of its files differ in size from its record ({', '.join(wrong[:3])})"
    return ""


def version_problem(registry: str, model_name: str, version: int) -> str:
    """Why a published version cannot be served ("" if it is complete): deploy refuses such a version."""
    return _version_problem(model_uri(registry, model_name), version)


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


def _kind(doc) -> str:
    if doc is None:
        return "null"
    return {bool: "a boolean", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(doc), type(doc).__name__)


def _parse_pointer(data: bytes) -> tuple[int | None, dict, str]:
    """(version, pointer, problem): problem is "" when `data` is a usable champion record."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, {}, f"not UTF-8 text: {_one_line(e)}"
    except json.JSONDecodeError as e:
        return None, {}, f"not JSON: {_one_line(e)}"
    if not isinstance(doc, dict):
        return None, {}, f"not a JSON object but {_kind(doc)}"
    if "version" not in doc:
        return None, doc, 'no "version" in it'
    v = doc["version"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return None, doc, f'"version" is {json.dumps(v)}, not a version number'
    return v, doc, ""


def _numbered(names) -> list[int]:
    return sorted({int(n) for n in names if n.isdigit()})


def _newest_complete(loc: str) -> int | None:
    for v in reversed(_numbered(storage.list_names(loc))):
        if not _version_problem(loc, v):
            return v
    return None


def _damaged(loc: str, why: str) -> RegistryError:
    """The error every reader and writer raises for a damaged pointer: what is wrong, that it is kept,
    and the command that repairs it."""
    newest = _newest_complete(loc)
    how = (f"The newest complete version is {newest}: run 'imgclf registry check --repair --champion {newest} "
           f"{loc}' to point the champion at it, or restore the file." if newest else
           f"No complete version is left: restore the file, or remove it to start {loc} over.")
    return RegistryError(f"{storage.join(loc, CHAMPION_FILE)}: the champion record is damaged ({_one_line(why)}); "
                         f"it is never overwritten automatically. {how}")


def _read_pointer(loc: str) -> tuple[int | None, dict]:
    """(version, pointer) the champion record under the model folder `loc` names; (None, {}) without one.
    Raises RegistryError if it is damaged: unreadable, or naming a version that is not complete."""
    uri = storage.join(loc, CHAMPION_FILE)
    storage.forget_listings(loc)
    if not storage.exists(uri):
        return None, {}
    version, doc, problem = _parse_pointer(storage.read_bytes(uri))
    if not problem and (incomplete := _version_problem(loc, version)):
        problem = f"it names version {version}, which is not complete: {incomplete}"
    if problem:
        raise _damaged(loc, problem)
    return version, doc


def champion(registry: str, model_name: str) -> dict | None:
    """The champion's record (with `uri`), or None before the first publish; RegistryError if the
    champion record is damaged."""
    version, _ = _read_pointer(model_uri(registry, model_name))
    if version is None:
        return None
    record = read_record(registry, model_name, version)
    return {**record, "uri": version_uri(registry, model_name, version)}


def resolve(location: str) -> str:
    """`REGISTRY/NAME` (a folder with a champion pointer) -> the champion version's folder; else unchanged."""
    version, _ = _read_pointer(location.rstrip("/"))
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
    the next number. `claims/` is not an integer folder: TF Serving ignores it. The claim's time tells
    a repair how long ago the publish of N started."""
    version = next_version(registry, model_name)
    for _ in range(attempts):
        uri = storage.join(model_uri(registry, model_name), CLAIMS, str(version))
        try:
            storage.write_if(uri, json.dumps({"run": run, "at": datetime.now(UTC).isoformat()}).encode(),
                             None)
            return version
        except storage.PreconditionFailed:
            version = max(version + 1, next_version(registry, model_name))
    raise RegistryError(f"{model_uri(registry, model_name)}: no version number could be claimed in {attempts} tries")


def _read_versioned(uri: str) -> tuple[bytes, str] | None:
    return storage.with_retries(uri, "read", lambda: storage.read_versioned(uri))


def advance_champion(registry: str, model_name: str, version: int, pointer: dict, attempts: int = 100) -> bool:
    """Point champion.json at `version` unless it already names a newer one: compare-and-swap on the
    pointer (If-Match / if_generation_match / a lock locally), so a slower publisher never moves it back.
    A damaged pointer (unreadable, or naming a version that is not complete) is never replaced
    (RegistryError): a person decides what it should say. Returns whether the pointer now names `version`."""
    loc = model_uri(registry, model_name)
    uri = storage.join(loc, CHAMPION_FILE)
    for _ in range(attempts):
        current = _read_versioned(uri)
        if current is not None:
            named, _, problem = _parse_pointer(current[0])
            if not problem and (incomplete := _version_problem(loc, named)):
                problem = f"it names version {named}, which is not complete: {incomplete}"
            if problem:
                raise _damaged(loc, problem)
            if named >= version:
                return named == version
        try:
            storage.write_if(uri, json.dumps(pointer, indent=1).encode(), None if current is None else current[1])
            return True
        except storage.PreconditionFailed:
            continue
    raise RegistryError(f"{uri}: the champion pointer kept changing; {attempts} tries")


# --- the serving config ---------------------------------------------------------------------------------

def models_config(name: str, base_path: str, version: int | None) -> str:
    """The text-format ModelServerConfig TF Serving's --model_config_file reads: one model, pinned to
    `version` (None: TF Serving's default policy). Here, not in deploy, because publish writes it."""
    policy = ("" if version is None else
              f"    model_version_policy {{\n      specific {{\n        versions: {version}\n      }}\n    }}\n")
    return ("model_config_list {\n  config {\n"
            f"    name: \"{name}\"\n    base_path: \"{base_path}\"\n    model_platform: \"tensorflow\"\n"
            f"{policy}  }}\n}}\n")


def serving_config(model_name: str, version: int) -> str:
    """The `models.config` pinning `version`: what a server following the registry loads."""
    return models_config(model_name, SERVING_BASE_PATH, version)


def _pinned(model_name: str, data: bytes | None) -> int | None:
    """The version a models.config pins, if it is exactly the one publish writes; else None."""
    m = re.search(rb"versions: (\d+)\n", data or b"")
    if m and data == serving_config(model_name, int(m.group(1))).encode():
        return int(m.group(1))
    return None


def serving_config_version(registry: str, model_name: str) -> int | None:
    """The version `<registry>/<name>/models.config` pins; None when it is missing or not publish's."""
    return serving_config_version_at(model_uri(registry, model_name), model_name)


def _sync_serving_config(loc: str, model_name: str, attempts: int = 100) -> int | None:
    """Make models.config pin the version champion.json names; returns it (None before a first publish).

    The config is read before the pointer and replaced by compare-and-swap on what was read: a write
    that succeeds was decided on a pointer read after the config's last change, and the pointer only
    moves forward, so a slow writer can never pin an older champion over a newer one. A damaged
    pointer, or one naming a version that is not complete, is never pinned (RegistryError)."""
    uri = storage.join(loc, SERVING_CONFIG)
    pointer_uri = storage.join(loc, CHAMPION_FILE)
    for _ in range(attempts):
        current = _read_versioned(uri)
        got = _read_versioned(pointer_uri)
        if got is None:
            return None
        version, _, problem = _parse_pointer(got[0])
        if problem:
            raise _damaged(loc, problem)
        if current is not None and _pinned(model_name, current[0]) == version:
            return version
        if incomplete := _version_problem(loc, version):
            raise _damaged(loc, f"it names version {version}, which is not complete: {incomplete}")
        try:
            storage.write_if(uri, serving_config(model_name, version).encode(), None if current is None else current[1])
        except storage.PreconditionFailed:
            pass
    raise RegistryError(f"{uri}: the serving config kept changing; {attempts} tries")


# --- check and repair -----------------------------------------------------------------------------------

@dataclass
class Finding:
    what: str
    action: str = ""  # what --repair does about it; "" when it will not (the reason is in `left`)
    left: str = ""
    fix: Callable[[], object] | None = None
    """Does the repair; returning False means it found the thing in use after all and left it."""
    done: bool = False


@dataclass
class Check:
    """What `check` found under one model folder, and what it repaired."""
    location: str
    model_name: str
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    champion: int | None = None
    config_pins: int | None = None
    damaged: str = ""  # the RegistryError message for a damaged champion record

    @property
    def clean(self) -> bool:
        """Nothing wrong is left: with repair, everything found was fixed."""
        return all(f.done for f in self.findings) if self.repair else not self.findings

    def lines(self) -> list[str]:
        out = []
        for f in self.findings:
            if f.done:
                out.append(f"repaired: {f.what}: {f.action}")
            elif self.repair or not f.action:
                out.append(f"left: {f.what}" + (f": {f.left}" if f.left else ""))
            else:
                out.append(f"found: {f.what}; --repair: {f.action}")
        out += [f"note: {n}" for n in self.notes]
        if self.clean:
            out.append(f"ok: {self.location}: champion {self.champion or 'none yet'}, {SERVING_CONFIG} pins "
                       f"{self.config_pins or 'nothing'}" + (" (after the repairs above)" if self.findings else ""))
        return out


def grace_seconds(value: float | None = None) -> float:
    """How old a claim must be before its staging or copy counts as abandoned (a publish that may still
    be running is never touched): `value`, else IMGCLF_REGISTRY_GRACE_SECONDS, else one hour."""
    if value is None:
        text = os.environ.get(GRACE_ENV, "")
        try:
            value = float(text) if text else DEFAULT_GRACE_S
        except ValueError:
            raise RegistryError(f"{GRACE_ENV}={text!r}: expected seconds") from None
    if not value >= 0:
        raise RegistryError(f"grace {value!r}: expected seconds >= 0")
    return value


def _claim_age(loc: str, version: int, now: datetime) -> float | None:
    """Seconds since version `version` was claimed; None without a readable claim (no publish of ours)."""
    try:
        at = json.loads(storage.read_text(storage.join(loc, CLAIMS, str(version))))["at"]
        return (now - datetime.fromisoformat(at)).total_seconds()
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def check(registry: str, model_name: str, repair: bool = False, set_champion: int | None = None,
          grace_s: float | None = None) -> Check:
    """What a killed publish (or a damaged record) left under `<registry>/<name>`; with `repair`, fix it.

    Found and repaired: staging (`<N>.partial-*`, local `.<N>.partial-*` and other partial writes),
    integer folders without a record (removed), a complete version newer than the champion whose
    publish stopped before moving the pointer (made the champion), a models.config that does not pin
    the champion (rewritten). Left, with the reason: leftovers of a publish that may still be running,
    versions whose files no longer match their record, a damaged champion record (unless
    `set_champion` names the complete version to point it at). Without `repair` nothing is changed."""
    if set_champion is not None and set_champion < 1:
        raise RegistryError(f"--champion {set_champion}: expected a version number")
    return _check(model_uri(registry, model_name), model_name, repair, set_champion, grace_seconds(grace_s),
                  thorough=True)


def _check(loc: str, model_name: str, repair: bool, set_champion: int | None, grace_s: float,
           thorough: bool) -> Check:
    out = Check(loc, model_name, repair)
    # The pointer first, then the names, then the files: what the pointer names was complete before it
    # was written, and a version renamed into place meanwhile shows up with its files (under
    # concurrent publishers, a listing taken before the pointer was read could miss its version).
    pointer_uri = storage.join(loc, CHAMPION_FILE)
    got = _read_versioned(pointer_uri)
    tops: dict[str, dict[str, int]] = {name: {} for name in storage.list_names(loc)}
    files = _listing(loc)
    for rel, size in files.items():
        top, _, rest = rel.partition("/")
        tops.setdefault(top, {})[rest] = size
    numbered = {int(t): fs for t, fs in tops.items() if t.isdigit()}
    now = datetime.now(UTC)

    def abandoned(version: int) -> tuple[bool, str]:
        age = _claim_age(loc, version, now)
        if age is None or age >= grace_s:
            return True, ""
        return False, (f"claimed {age:.0f} s ago, a publish may still be running: left alone until the claim is "
                       f"{grace_s:.0f} s old (--grace, {GRACE_ENV})")

    def remover(uri: str) -> Callable[[], None]:
        return lambda: storage.remove(uri, recursive=True)

    # Partial writes a killed process left. Locally each writer holds a lock on its partial while it
    # writes: an unlocked one is abandoned, a locked one is being written now.
    if storage.is_local(loc):
        for folder in (loc, storage.join(loc, CLAIMS)):
            gone, live = storage.stale_partials(storage.local_path(folder))
            out.findings += [Finding(f"{p}: left by a write that was killed", "removed",
                                     fix=lambda p=p: storage.remove_abandoned(p)) for p in gone]
            out.notes += [f"{p}: being written now by a running process: left alone" for p in live]
    for top, _fs in sorted(tops.items()):
        m = _STAGING.fullmatch(top)
        if not m or top.startswith("."):
            continue
        v = int(m.group(1))
        uri = storage.join(loc, top)
        copied = RECORD in numbered.get(v, {})
        gone, why = (True, "") if copied else abandoned(v)
        what = f"{uri}/: staging of version {v} left by a publish that did not finish"
        out.findings.append(Finding(what, "removed", fix=remover(uri)) if gone else Finding(what, left=why))
    for v, fs in sorted(numbered.items()):
        if RECORD in fs:
            continue
        uri = storage.join(loc, str(v))
        what = (f"{uri}/: version folder without a record ({len(fs)} files, {SAVED_MODEL} "
                f"{'present' if SAVED_MODEL in fs else 'absent'}): its publish stopped while copying")
        gone, why = abandoned(v)
        out.findings.append(Finding(what, "removed", fix=remover(uri)) if gone else Finding(what, left=why))

    # The champion record.
    champ, doc, problem = _parse_pointer(got[0]) if got else (None, {}, "")
    if champ is not None and (incomplete := _version_problem(loc, champ, _sub(files, champ))):
        problem = f"it names version {champ}, which is not complete: {incomplete}"
    complete = [v for v, fs in numbered.items() if RECORD in fs]
    if set_champion is not None:
        if (why := _version_problem(loc, set_champion, _sub(files, set_champion))):
            raise RegistryError(f"--champion {set_champion}: version {set_champion} is not complete ({why}); "
                                f"versions with a record: {sorted(complete) or 'none'}")
    if problem and set_champion is None:
        out.damaged = _one_line(_damaged(loc, problem))
        out.findings.append(Finding(out.damaged))
        out.config_pins = serving_config_version_at(loc, model_name)
        return _apply(out)
    if set_champion is not None and (problem or got is None or champ != set_champion):
        # `passed_over`: the newest version folder now; a person chose the champion among those, so they are
        # never rolled forward over it (later publishes are).
        pointer = json.dumps({"version": set_champion, "updated": now.isoformat(timespec="seconds"),
                              "source_run": "imgclf registry check --repair --champion",
                              "passed_over": max(numbered, default=0)}, indent=1).encode()

        def set_pointer(tag=None if got is None else got[1]):
            try:
                storage.write_if(pointer_uri, pointer, tag)
            except storage.PreconditionFailed:
                raise RegistryError(f"{pointer_uri} changed while it was being repaired; run the check again") from None

        what = f"{pointer_uri}: the champion record is damaged ({_one_line(problem)})" if problem else \
            f"{pointer_uri}: missing" if got is None else \
            f"{pointer_uri}: names version {champ}; --champion {set_champion} chooses another (a rollback by hand)"
        out.findings.append(Finding(what, f"pointed at version {set_champion}", fix=set_pointer))
        champ = set_champion
    elif set_champion is None:
        # Roll forward: a complete version newer than the champion is a publish killed between its copy
        # and its pointer move (only gate-passed models are published). Not past a pointer a person set
        # with --champion: the versions it passed over stay passed over.
        floor = max(champ or 0, doc.get("passed_over", 0) if isinstance(doc.get("passed_over"), int) else 0)
        for v in sorted(complete, reverse=True):
            if v <= floor:
                break
            if _version_problem(loc, v, _sub(files, v)):
                continue
            record = json.loads(storage.read_text(storage.join(loc, str(v), RECORD)))
            target = {"version": v, "updated": record.get("created", now.isoformat(timespec="seconds")),
                      "source_run": record.get("source_run", ""), "rolled_forward": True}
            out.findings.append(Finding(
                f"version {v} is complete but {pointer_uri} names {champ or 'no version'}: its publish stopped "
                "before moving the pointer", f"made version {v} the champion",
                fix=lambda v=v, target=target: _advance_at(loc, v, target)))
            champ = v
            break
    out.champion = champ
    if thorough:
        for v in sorted(complete):
            if v != champ and (why := _version_problem(loc, v, _sub(files, v))):
                out.findings.append(Finding(f"version {v} is damaged: {why}",
                                            left="restore its files or remove its folder"))
    # The serving config pins the champion.
    pinned = serving_config_version_at(loc, model_name)
    out.config_pins = pinned
    if champ is not None and pinned != champ:
        state = ("is missing" if not storage.exists(storage.join(loc, SERVING_CONFIG)) else
                 f"pins version {pinned}" if pinned is not None else "is not the one publish writes")
        out.findings.append(Finding(f"{storage.join(loc, SERVING_CONFIG)} {state}, not the champion {champ}",
                                    f"rewritten to pin version {champ}",
                                    fix=lambda: _sync_serving_config(loc, model_name)))
    return _apply(out)


def _apply(out: Check) -> Check:
    if out.repair:
        for f in out.findings:
            if f.fix is not None and not f.done:
                if f.fix() is False:
                    f.action, f.left = "", "a running process took it up meanwhile: left alone"
                else:
                    f.done = True
        if any(f.done for f in out.findings):
            out.config_pins = serving_config_version_at(out.location, out.model_name)
    return out


def serving_config_version_at(loc: str, model_name: str) -> int | None:
    """The version the models.config under the model folder `loc` pins (None: missing or not publish's)."""
    got = _read_versioned(storage.join(loc, SERVING_CONFIG))
    return _pinned(model_name, got[0] if got else None)


def _advance_at(loc: str, version: int, pointer: dict) -> None:
    registry, name = loc.rstrip("/").rsplit("/", 1)
    advance_champion(registry, name, version, pointer)


def _sub(files: dict[str, int], version: int) -> dict[str, int]:
    prefix = f"{version}/"
    return {rel[len(prefix):]: size for rel, size in files.items() if rel.startswith(prefix)}


# --- publish --------------------------------------------------------------------------------------------

def _extra_files(extra: dict[str, bytes] | None) -> dict[str, bytes]:
    out = {}
    for rel, data in (extra or {}).items():
        p = PurePosixPath(rel)
        if (not rel or p.is_absolute() or ".." in p.parts or len(p.parts) < 2 or p.parts[0] != EXTRA_DIR
                or p.as_posix() == RECORD):
            raise RegistryError(f"extra file {rel!r}: give a relative path under {EXTRA_DIR}/ (TF Serving tolerates "
                                f"extra files there only), other than {RECORD}")
        if not isinstance(data, (bytes, bytearray)):
            raise RegistryError(f"extra file {rel!r}: expected bytes, got {type(data).__name__}")
        out[p.as_posix()] = bytes(data)
    return out


def publish(saved_model_dir: str, model_dir: str, registry: str, model_name: str, record: dict,
            card: Callable[[dict], str], extra_files: dict[str, bytes] | None = None) -> int:
    """Publish a checked SavedModel as the next version and make it the champion; returns the version.

    `card` renders the model card from the final record (version number and time included).
    `extra_files` maps paths under `assets.extra/` to bytes written into the version before it is
    copied, so they are part of it before its record exists. First repairs what an earlier, killed
    publish left (see the module docstring); a damaged champion record stops it before anything is
    written.
    """
    if not (Path(saved_model_dir) / SAVED_MODEL).exists():
        raise FileNotFoundError(f"{saved_model_dir}: no saved_model.pb; pass the export step's output")
    bad = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise RegistryError(f"refusing to publish {model_name}: non-finite metrics {bad}")
    extras = _extra_files(extra_files)
    loc = model_uri(registry, model_name)
    found = _check(loc, model_name, False, None, grace_seconds(), thorough=False)
    if found.damaged:  # refused before anything is written: the record is never replaced silently
        raise RegistryError(found.damaged)
    if found.findings:
        for line in _apply(dataclasses.replace(found, repair=True)).lines():
            print(f"publish: {line}", flush=True)
    version = claim_version(registry, model_name, record.get("source_run", ""))
    dest = version_uri(registry, model_name, version)
    record = {"schema_version": SCHEMA_VERSION, "model_name": model_name, "version": version,
              "created": datetime.now(UTC).isoformat(timespec="seconds"), **record}
    with tempfile.TemporaryDirectory(prefix="imgclf-publish-") as tmp:
        staged = Path(tmp) / str(version)
        shutil.copytree(saved_model_dir, staged)
        (staged / KERAS_DIR).mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, TRAIN_FILE):
            shutil.copyfile(Path(model_dir) / name, staged / KERAS_DIR / name)
        for rel, data in extras.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        (staged / MODEL_CARD).write_text(card(record), encoding="utf-8")
        (staged / RECORD).unlink(missing_ok=True)
        record[FILES] = {p.relative_to(staged).as_posix(): p.stat().st_size
                         for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        storage.publish_dir(str(staged), dest, last=(SAVED_MODEL, RECORD))
    # Only a version whose every file is there becomes the champion: a repair that judged this publish
    # abandoned (older than the grace period) may have removed part of it meanwhile.
    if problem := _version_problem(loc, version):
        raise RegistryError(f"{dest}: the version is not complete after its copy ({problem}); the champion stays. "
                            f"Was it removed by a repair while this publish ran? Run 'imgclf registry check "
                            f"--repair {loc}' and publish again")
    pointer = {"version": version, "updated": record["created"], "source_run": record.get("source_run", "")}
    moved = advance_champion(registry, model_name, version, pointer)
    pinned = _sync_serving_config(loc, model_name)
    if moved:
        print(f"publish: {model_name} version {version} at {dest} is now the champion; {SERVING_CONFIG} pins "
              f"version {pinned}", flush=True)
    else:
        print(f"publish: {model_name} version {version} at {dest}; a newer version published meanwhile stays "
              f"the champion ({SERVING_CONFIG} pins version {pinned})", flush=True)
    return version
