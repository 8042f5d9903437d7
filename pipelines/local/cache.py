"""`imgclf run --cache`: reuse a task's outputs from an earlier local run when its inputs are unchanged.

kfp.local 2.17 has a cache of its own, but it keys a task on its input artifacts' URIs, and every
run writes its artifacts under a new run folder: nothing after the first task could ever hit. This
cache keys a task on what its inputs *contain*:
- its component, image, command and environment, and every parameter value;
- each input artifact's files (names, sizes and bytes, hashed);
- each parameter that names a local file or folder (the data folder): its listing with each file's
  size, modification time, change time and inode number (`_stat_key`), so a changed, added or removed
  image re-runs ingest and all that follows;
- for a local CSV/Parquet table source, the same for every local image its rows point to (resolved as
  ingest resolves them), so an image replaced behind an unchanged table re-runs ingest too.
A task is never served from the cache when caching is off for it in the pipeline (the champion
lookup, the gate and publish read or change the registry) or when a parameter names a remote URI
(s3://, gs://, https://), or a table source has a row that does: what a bucket holds now is not known
without listing it, which is ingest's work. A hit copies the stored outputs into this run's folder,
so every run folder is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from imgclf.components.lib import storage
from imgclf.pipelines import kfp_seams

CACHE_DIR = ".imgclf-cache"
ORIGIN = ".imgclf-origin"


def _stat_key(st: os.stat_result) -> str:
    """What identifies a version of a user file without reading it: size, modification time, and the
    change time and inode number. The modification time alone is not enough: `cp -p`, `rsync -a` and
    `tar x` put the old one back on a new file, and a coarse-clock filesystem repeats it. The change time
    cannot be set by user tools and moves on every write, rename or chmod; a file replaced by another
    has another inode. Their cost is only a needless miss (after a chmod, or on a filesystem whose inode
    numbers are not stable). Hashing the bytes instead would read the whole data folder on every run;
    memoised by stat, it would need this same key to know when to hash again."""
    return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"


def _digest_tree(path: Path, h, contents: bool) -> None:
    """Every file under `path`, in a fixed order: bytes (artifacts) or `_stat_key` (user data)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        name = f.relative_to(path) if f != path else f.name
        if contents:
            h.update(f"{name}\0{st.st_size}\0".encode())
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(f"{name}\0{_stat_key(st)}\0".encode())


def _truthy(value) -> bool:
    """A bool parameter as kfp.local hands it over (a bool, or its text), read with the options' words."""
    from imgclf.components.lib.options import TRUE

    return value is True or str(value).strip().lower() in TRUE


def table_rows(data: str, base_uri: str = "", allow_outside_paths=False) -> tuple[list[str], bool] | None:
    """(local files, whether a row names a remote URI) of a local CSV/Parquet table source, resolved as
    ingest resolves them (components/ingest/sources.py: relative paths against `base_uri` or the table's
    folder); rows that ingest quarantines without reading (empty, outside the table's folder) are left
    out. None when `data` is not a local table file."""
    from imgclf.components.ingest import sources

    if not data or not storage.is_local(data) or not data.lower().endswith(sources.TABLE_SUFFIXES) \
            or not os.path.isfile(storage.local_path(data)):
        return None
    from imgclf.components.contracts import DatasetError

    try:
        items = list(sources.table_items(data, base_uri or "", _truthy(allow_outside_paths)))
    except DatasetError:
        # ingest reports the unreadable table; the key holds the table file's `_stat_key` (task_key
        # digests every parameter naming a local file), so mending the table re-runs ingest.
        return [], False
    files, remote = [], False
    for item in items:
        if item.problem:
            continue
        if storage.is_local(item.location):
            files.append(os.path.abspath(storage.local_path(item.location)))
        else:
            remote = True
    return files, remote


def _digest_files(files: list[str], h) -> None:
    """Each user file's path and `_stat_key`, as `_digest_tree` does for a folder."""
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            h.update(f"{name}\0missing\0".encode())
            continue
        h.update(f"{name}\0{_stat_key(st)}\0".encode())


def task_key(component_name: str, container, arguments: dict) -> str | None:
    """The content key of one task invocation, or None when it must run (a remote URI among its inputs)."""
    from kfp import dsl

    h = hashlib.sha256()
    h.update(json.dumps([component_name, container.image, list(container.command), list(container.args),
                         sorted((e.name, e.value) for e in container.env)]).encode())
    for name in sorted(arguments):
        value = arguments[name]
        h.update(f"\0{name}\0".encode())
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dsl.Artifact):
                h.update(json.dumps(item.metadata, sort_keys=True, default=str).encode())
                _digest_tree(Path(item.path), h, contents=True)
                continue
            if isinstance(item, str) and "://" in item:
                return None
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
            if isinstance(item, str) and item and os.path.exists(item):
                _digest_tree(Path(item).resolve(), h, contents=False)
            rows = table_rows(item, arguments.get("data_base_uri") or "", arguments.get("allow_outside_paths")) \
                if isinstance(item, str) else None
            if rows is not None:
                files, remote = rows
                if remote:
                    return None
                _digest_files(files, h)
    return h.hexdigest()


def local_cache(pipeline_root: str, hits: list[str]):
    """Serve unchanged tasks from `<pipeline_root>/.imgclf-cache`; the names of those served go to `hits`.

    Installed in kfp.local's per-task executor (kfp_seams.task_executions), which every task passes through."""
    store = Path(pipeline_root) / CACHE_DIR

    def make(original):
        def execute(**task):  # execute_single_task's keyword arguments, as kfp.local passes them
            def run():
                return original(**task)

            task_name, task_spec = task["task_name"], task["task_spec"]
            component_name = task_spec.component_ref.name
            component = task["components"][component_name]
            executor = task["executors"].get(component.executor_label)
            if not task_spec.caching_options.enable_cache or executor is None or not executor.HasField("container"):
                return run()
            arguments = kfp_seams.task_arguments(task_spec, task["io_store"])
            key = task_key(component_name, executor.container, arguments)
            if key is None:
                return run()
            task_root = kfp_seams.task_root(task["pipeline_root"], task["pipeline_resource_name"], component_name)
            entry = store / key
            if (entry / ORIGIN).is_file():
                restore(entry, Path(task_root))
                print(f"{task_name}: unchanged inputs, outputs reused from the cache ({key[:12]})", flush=True)
                hits.append(task_name)
                return kfp_seams.task_outputs(component, arguments, task_root)
            outputs, task_status = run()
            if kfp_seams.succeeded(task_status):
                save(Path(task_root), entry)
            return outputs, task_status
        return execute

    return kfp_seams.task_executions(make)


def save(task_root: Path, entry: Path) -> None:
    """A finished task's folder into the cache: copied under a temporary name, then renamed, so a
    half-written entry is never found."""
    staging = entry.with_name(f"{entry.name}.partial-{uuid.uuid4().hex[:8]}")
    shutil.copytree(task_root, staging)
    (staging / ORIGIN).write_text(str(task_root), encoding="utf-8")
    try:
        staging.rename(entry)
    except OSError:  # another run stored the same entry first: same content
        shutil.rmtree(staging, ignore_errors=True)


def restore(entry: Path, task_root: Path) -> None:
    """The stored outputs into this run's task folder, with the artifact URIs kfp recorded rewritten."""
    origin = (entry / ORIGIN).read_text(encoding="utf-8")
    shutil.copytree(entry, task_root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ORIGIN))
    output = task_root / "executor_output.json"
    if output.is_file():
        output.write_text(output.read_text(encoding="utf-8").replace(origin, str(task_root)), encoding="utf-8")
