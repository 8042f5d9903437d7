"""The one place that turns URIs into bytes: local paths and any fsspec protocol (gs://, s3://, ...).

TensorFlow never sees a remote URI: steps read bytes through here and write TFRecords/SavedModels to
local scratch. Outputs are written to a temporary sibling and renamed into place, so a failed step never
leaves a half-written artifact that a later step could mistake for a good one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import fsspec


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def filesystem(uri: str):
    """(fs, path) for a URI; s3:// honours AWS_ENDPOINT_URL (MinIO) through fsspec's config."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


@dataclass(frozen=True)
class Entry:
    """A file found under a source root. `rel` uses '/' separators; `skip_reason` marks a file we
    must not read (e.g. a symlink leaving the root) but still report."""
    rel: str
    uri: str
    size: int
    skip_reason: str = ""


def walk_files(root: str) -> Iterator[Entry]:
    """Every file under `root`, sorted, so manifests are reproducible across runs and machines."""
    if is_local(root):
        yield from _walk_local(Path(local_path(root)))
        return
    fs, path = filesystem(root)
    if not fs.exists(path):
        raise FileNotFoundError(f"{root}: no such bucket or prefix")
    proto = root.split("://", 1)[0]
    base = path.rstrip("/")
    for full, info in sorted(fs.find(path, detail=True).items()):
        rel = full[len(base):].lstrip("/")
        yield Entry(rel, f"{proto}://{full}", int(info.get("size") or 0))


def _walk_local(root: Path) -> Iterator[Entry]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        # A symlinked folder is listed as a directory but never descended into (followlinks=False):
        # report it rather than drop it silently.
        for d in dirnames:
            if (here / d).is_symlink():
                p = here / d
                yield Entry(p.relative_to(root).as_posix(), str(p), 0, "symlinked folder not followed")
        for name in sorted(filenames):
            p = here / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(real_root) or not target.is_file():
                    yield Entry(rel, str(p), 0, "symlink pointing outside the source folder")
                    continue
            yield Entry(rel, str(p), p.stat().st_size)


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    return fs.cat_file(path)


@contextlib.contextmanager
def atomic_dir(final: str) -> Iterator[Path]:
    """Yield a fresh local folder that becomes `final` only if the block succeeds.

    KFP creates an output artifact's parent folder (sometimes the folder itself, empty); an empty
    existing folder is replaced, a non-empty one is an error rather than silently overwritten.
    """
    dest = Path(final)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            if dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
            else:
                raise FileExistsError(f"{dest}: output already exists and is not empty")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(final: str, text: str) -> None:
    dest = Path(final)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.partial-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish_dir(local_dir: str, dest_uri: str) -> str:
    """Copy a finished local folder to `dest_uri` (local or bucket).

    Files go to a temporary sibling prefix first and the folder is moved into place last, so a
    reader never sees a half-copied model; on object stores the final step is a server-side copy.
    """
    if is_local(dest_uri):
        dest = local_path(dest_uri)
        with atomic_dir(dest) as tmp:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
        return dest
    fs, path = filesystem(dest_uri)
    path = path.rstrip("/")
    if fs.exists(path) and fs.ls(path):
        raise FileExistsError(f"{dest_uri}: destination already exists and is not empty")
    staging = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        fs.put(local_dir.rstrip("/") + "/", staging, recursive=True)
        fs.mv(staging, path, recursive=True)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return dest_uri


def is_dir(uri: str) -> bool:
    if is_local(uri):
        return os.path.isdir(local_path(uri))
    fs, path = filesystem(uri)
    return fs.isdir(path)


def download_dir(uri: str, local_dir: str) -> None:
    """Stage a remote folder (e.g. a SavedModel in a bucket) to local disk for TensorFlow."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: not found")
    fs.get(path.rstrip("/") + "/", local_dir.rstrip("/") + "/", recursive=True)


def put_file(local_file: str, dest_uri: str) -> None:
    """Move a finished local file to `dest_uri`: a rename locally, an upload to a bucket."""
    if is_local(dest_uri):
        dest = Path(local_path(dest_uri))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local_file, dest)
        return
    fs, path = filesystem(dest_uri)
    fs.put_file(local_file, path)
