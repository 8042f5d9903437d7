"""`imgclf run --cache`: reuse a task's outputs from an earlier local run when its inputs are unchanged.

kfp.local 2.17 has a cache of its own, but it keys a task on its input artifacts' URIs, and every
run writes its artifacts under a new run folder: nothing after the first task could ever hit. This
cache keys a task on what its inputs *contain*:
- its component, image, command and environment, and every parameter value;
- each input artifact's files (names, sizes and bytes, hashed);
- each parameter that names a local file or folder (the data folder): its listing with sizes and
  modification times, so a changed, added or removed image re-runs ingest and all that follows.
A task is never served from the cache when caching is off for it in the pipeline (the champion
lookup, the gate and publish read or change the registry) or when a parameter names a remote URI
(s3://, gs://, https://): what a bucket holds now is not known without listing it, which is ingest's
work. A hit copies the stored outputs into this run's folder, so every run folder is complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

CACHE_DIR = ".imgclf-cache"
ORIGIN = ".imgclf-origin"


def _digest_tree(path: Path, h, contents: bool) -> None:
    """Every file under `path`, in a fixed order: bytes (artifacts) or size and time (user data)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0".encode())
        if contents:
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(str(st.st_mtime_ns).encode())


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
    return h.hexdigest()


@contextlib.contextmanager
def local_cache(pipeline_root: str, hits: list[str]):
    """Serve unchanged tasks from `<pipeline_root>/.imgclf-cache`; the names of those served go to `hits`."""
    from kfp.local import executor_input_utils, executor_output_utils, status
    from kfp.local.orchestrator import task_executor

    original = task_executor.execute_single_task
    store = Path(pipeline_root) / CACHE_DIR

    def execute(task_name, task_spec, pipeline_resource_name, components, executors, io_store, pipeline_root,
                runner, unique_pipeline_id, fail_stack):
        def run():
            return original(task_name=task_name, task_spec=task_spec, pipeline_resource_name=pipeline_resource_name,
                            components=components, executors=executors, io_store=io_store,
                            pipeline_root=pipeline_root, runner=runner, unique_pipeline_id=unique_pipeline_id,
                            fail_stack=fail_stack)

        component_name = task_spec.component_ref.name
        component = components[component_name]
        executor = executors.get(component.executor_label)
        if not task_spec.caching_options.enable_cache or executor is None or not executor.HasField("container"):
            return run()
        arguments = task_executor.OrchestratorUtils.make_task_arguments(task_inputs_spec=task_spec.inputs,
                                                                        io_store=io_store)
        key = task_key(component_name, executor.container, arguments)
        if key is None:
            return run()
        task_root = executor_input_utils.construct_local_task_root(
            pipeline_root=pipeline_root, pipeline_resource_name=pipeline_resource_name,
            task_resource_name=executor_input_utils.get_local_task_resource_name(component_name))
        entry = store / key
        if (entry / ORIGIN).is_file():
            restore(entry, Path(task_root))
            executor_input = executor_input_utils.construct_executor_input(
                component_spec=component, arguments=arguments, task_root=task_root, block_input_artifact=False)
            print(f"{task_name}: unchanged inputs, outputs reused from the cache ({key[:12]})", flush=True)
            hits.append(task_name)
            return executor_output_utils.get_outputs_for_task(executor_input=executor_input,
                                                              component_spec=component), status.Status.SUCCESS
        outputs, task_status = run()
        if task_status == status.Status.SUCCESS:
            save(Path(task_root), entry)
        return outputs, task_status

    task_executor.execute_single_task = execute
    try:
        yield
    finally:
        task_executor.execute_single_task = original


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
