"""What ingest can read, turned into one stream of labelled items.

- a folder or bucket prefix (local, gs://, s3://, minio://) in either Keras layout: one subfolder per
  class, or pre-split train/ validation|val/ test/ folders holding class subfolders;
- a `.zip` archive by URL (http/https), path or bucket URI, e.g. the classic cats_and_dogs_filtered.zip:
  downloaded with progress and a size limit, extracted into the dataset artifact itself, refusing
  entries that would escape it, links, and zip bombs;
- a CSV or Parquet table of `path_or_uri,label[,split]` (Keras' flow_from_dataframe users), with
  relative paths resolved against a base URI (default: the table's own folder).

OS and notebook litter (`is_ignored`: dot-files and dot-folders such as `.ipynb_checkpoints/`, `__MACOSX/`,
`Thumbs.db`, `desktop.ini`) in a folder, bucket or zip is not data: it is left out before a byte is read
and only counted.
"""
from __future__ import annotations

import csv
import io
import os
import posixpath
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgclf.components.contracts import DatasetError
from imgclf.components.ingest.options import DEFAULT_MAX_DOWNLOAD
from imgclf.components.lib import storage
from imgclf.components.lib.litter import describe_ignored, is_ignored
from imgclf.components.lib.progress import Progress

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}
PATH_COLUMNS = ("path", "path_or_uri", "uri", "filename", "file", "image", "location")
LABEL_COLUMNS = ("label", "class", "category")
# What a table row may point at (storage.py's stores, plus plain web URLs).
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = (".csv", *PARQUET_SUFFIXES)
"""A source whose name ends so is a table of image paths and labels, not a folder or archive (also read
by `imgclf run --cache` and the Docker runner, which must see a table as ingest does)."""
TABLE_SCHEMES = ("s3", "s3a", "minio", "gs", "gcs", "file", "http", "https")

MAX_EXPANSION_RATIO = 200
MAX_ENTRIES = 2_000_000

@dataclass(frozen=True)
class Item:
    """One file to check. `location` is what the manifest records: a URI, an absolute path, or a
    path relative to the dataset artifact (files extracted from an archive live inside it)."""
    entry: storage.Entry
    location: str
    label: str
    split: str
    problem: str = ""


@dataclass
class Source:
    """What a source holds: `items` to check, and the files `is_ignored` left out (kind -> files),
    which are neither checked nor quarantined but counted, so the report can say what was passed over."""
    kind: str
    layout: str
    items: list[Item]
    ignored: dict[str, int] = field(default_factory=dict)


def resolve(source: str, output_dir: Path, base_uri: str = "",
            max_download_bytes: int = DEFAULT_MAX_DOWNLOAD, allow_outside_paths: bool = False) -> Source:
    lower = source.lower().split("?", 1)[0]
    if lower.endswith(".zip"):
        root = output_dir / "files"
        extract_zip(_fetch_archive(source, output_dir, max_download_bytes), root, max_download_bytes, source=source)
        entries, ignored = _listing(str(root))
        # Everything beside the wrapping folder is litter (see _unwrap): counted above, listed no further.
        inside = _unwrap(root).relative_to(root).as_posix()
        prefix = "" if inside == "." else inside + "/"
        entries = [replace(e, rel=e.rel[len(prefix):]) for e in entries if e.rel.startswith(prefix)]
        items = list(_folder_items(str(root), entries, ignored, relative_to=output_dir))
        return Source("zip", _layout_of(items), items, dict(ignored))
    if lower.endswith(TABLE_SUFFIXES):
        items = list(table_items(source, base_uri, allow_outside_paths))
        return Source("table", "pre-split" if any(i.split for i in items) else "table", items)
    if storage.is_http(source):
        raise DatasetError(f"{storage.redact(source)}: an http(s) source must name a .zip archive or a CSV/Parquet "
                           "table (a web server lists no folders); put a folder in a bucket, or list its files in a table")
    entries, ignored = _listing(source)
    items = list(_folder_items(source, entries, ignored))
    return Source("folder", _layout_of(items), items, dict(ignored))


def _layout_of(items: list[Item]) -> str:
    return "pre-split" if any(i.split for i in items) else "class-per-subfolder"


def _listing(root: str) -> tuple[list[storage.Entry], Counter]:
    """Every file under `root` (a folder or bucket prefix), less the litter `is_ignored` names, which
    is counted by kind. Nothing here reads a file."""
    entries, ignored = [], Counter()
    for e in storage.walk_files(root):
        if kind := is_ignored(e.rel):
            ignored[kind] += 1
        else:
            entries.append(e)
    return entries, ignored


def _folder_items(root: str, entries: list[storage.Entry], ignored: Counter,
                  relative_to: Path | None = None) -> Iterator[Item]:
    """Items of a folder's listing in either Keras layout (litter already left out, so a `.DS_Store` or
    `__MACOSX/` beside train/ and validation/ does not hide the pre-split layout)."""
    if not entries:
        raise DatasetError(f"{root}: no files found" + (
            f", only OS or notebook litter, which is not data: {describe_ignored(ignored)} ignored" if ignored else ""))
    top = {e.rel.split("/")[0].lower() for e in entries if "/" in e.rel}
    pre_split = bool(top) and top <= set(SPLIT_ALIASES) and "train" in {SPLIT_ALIASES[t] for t in top}
    for e in entries:
        parts = e.rel.split("/")
        location = os.path.relpath(e.uri, relative_to) if relative_to else e.uri
        if pre_split:
            ok = len(parts) >= 3
            label, split = (parts[1], SPLIT_ALIASES[parts[0].lower()]) if ok else ("", "")
        else:
            ok = len(parts) >= 2
            label, split = (parts[0] if ok else ""), ""
        yield Item(e, location, label, split, "" if ok else "not inside a class folder")


def _outside(path: str, root: str) -> bool:
    """Whether a local path leaves `root` (links resolved): a table must not reach /etc/passwd."""
    try:
        real, top = os.path.realpath(path), os.path.realpath(root)
    except (ValueError, OSError):
        return False  # an unusable path: the read reports it
    return real != top and not real.startswith(top.rstrip(os.sep) + os.sep)


def table_items(table_uri: str, base_uri: str, allow_outside_paths: bool = False) -> Iterator[Item]:
    """A CSV/Parquet table's rows as Items, paths resolved against `base_uri` or the table's folder; a row
    ingest cannot use carries its `problem`. Public: `imgclf run --cache` and the Docker runner must
    resolve a table's rows exactly as ingest does.

    A row whose URL carries user-info (`https://user:password@host/...`) refuses the whole table before
    any file is read: the row would be copied into the manifest, and from there into logs and metadata.
    (The table's own URI and data_base_uri are parameters, refused by their validation; a read of one
    that bypassed it is refused by storage.filesystem.)"""
    rows = _read_table(table_uri)
    if not rows:
        raise DatasetError(f"{table_uri}: the table has no rows")
    cols = {c.lower().strip(): c for c in rows[0]}
    path_col = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
    label_col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
    split_col = cols.get("split")
    if not path_col or not label_col:
        raise DatasetError(f"{table_uri}: needs a header with a path column ({', '.join(PATH_COLUMNS)}) and a "
                           f"label column ({', '.join(LABEL_COLUMNS)}); found {list(rows[0])}")
    base = base_uri or (table_uri.rsplit("/", 1)[0] if "/" in table_uri else ".")
    _refuse_userinfo_rows(table_uri, [str(row[path_col] or "").strip() for row in rows])
    if storage.is_local(base):
        # Locations must resolve the same in every later step and container, whatever its working folder.
        base = os.path.abspath(storage.local_path(base))
    for n, row in enumerate(rows, start=2):
        raw = str(row[path_col] or "").strip()
        label = str(row[label_col] or "").strip()
        split = str(row[split_col] or "").strip().lower() if split_col else ""
        uri = raw if ("://" in raw or os.path.isabs(raw)) else storage.join(base, raw)
        problem = ""
        if not raw:
            problem = f"row {n}: empty path"
        elif not label:
            problem = f"row {n}: empty label"
        elif split and split not in SPLIT_ALIASES:
            problem = f"row {n}: unknown split {split!r}"
        elif "://" in raw and raw.split("://", 1)[0].lower() not in TABLE_SCHEMES:
            problem = f"row {n}: unsupported URI scheme {raw.split('://', 1)[0]!r} (use {', '.join(TABLE_SCHEMES)})"
        elif storage.is_local(uri) and storage.is_local(base) and not allow_outside_paths and _outside(uri, base):
            problem = f"row {n}: outside the table's folder {base} (allow_outside_paths lets it)"
        yield Item(storage.Entry(raw, uri, 0), uri, label, SPLIT_ALIASES.get(split, ""), problem)


def _refuse_userinfo_rows(table_uri: str, paths: list[str]) -> None:
    """Refuse the table if any row's URL carries user-info, naming the rows and the first URL redacted."""
    bad = [(n, p) for n, p in enumerate(paths, start=2) if "@" in p and storage.userinfo_problem(p)]
    if not bad:
        return
    n, first = bad[0]
    others = [str(m) for m, _ in bad[1:6]] + (["..."] if len(bad) > 6 else [])
    more = f" (and {len(bad) - 1} more: rows {', '.join(others)})" if others else ""
    raise DatasetError(f"{table_uri}: row {n}{more}: {storage.userinfo_problem(first)}. The table is refused "
                       "before any file is read")


def _decode_text(uri: str, data: bytes) -> str:
    """UTF-8 (with or without a BOM), or UTF-16 with its BOM, as spreadsheet "Unicode text" exports write."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{uri}: not valid UTF-16 text ({e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{uri}: not UTF-8 text ({e}); save the table as CSV UTF-8 (or UTF-16 with a BOM)") \
            from None


def _read_table(uri: str) -> list[dict]:
    data = storage.read_bytes(uri)
    if uri.lower().endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DatasetError(f"{uri}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    text = _decode_text(uri, data)
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DatasetError(f"{uri}: not a readable CSV table ({e})") from None


def _download(source: str, dest: Path, max_bytes: int) -> None:
    """One HTTP(S) download attempt, classified as every HTTP read is (`storage.http_status_error`): a 404
    or other 4xx is the user's (DatasetError); 401/403 is the store refusing us (StorageError, saying how
    to give credentials); a dropped connection, a short body, a time-out or a 5xx is the network's
    (ConnectionError: storage retries it)."""
    import http.client
    import urllib.error

    try:
        _stream(source, dest, max_bytes)
    except urllib.error.HTTPError as e:
        error = storage.http_status_error(source, e.code, str(e.reason))
        if isinstance(error, (FileNotFoundError, storage.HTTPStatusError)):
            raise DatasetError(storage.redact(f"{source}: HTTP {e.code} {e.reason}")) from None
        raise error from None
    except urllib.error.URLError as e:
        raise ConnectionError(storage.redact(str(e.reason))) from None
    except http.client.HTTPException as e:
        raise ConnectionError(storage.redact(f"{type(e).__name__}: {e}")) from None


def _stream(source: str, dest: Path, max_bytes: int) -> None:
    with storage.open_url(source) as resp, open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0)
        if total > max_bytes:
            raise DatasetError(f"{storage.redact(source)}: {total:,} bytes is over the download limit of "
                               f"{max_bytes:,}")
        progress = Progress("download", total or 0, unit="bytes", every_s=2)
        while chunk := resp.read(1 << 20):
            if progress.done + len(chunk) > max_bytes:
                raise DatasetError(f"{storage.redact(source)}: more than the download limit of {max_bytes:,} bytes")
            f.write(chunk)
            progress.update(len(chunk))
        if total and progress.done < total:
            raise ConnectionError(f"the connection dropped after {progress.done:,} of {total:,} bytes")
        progress.total = progress.done
        progress.close()


def _fetch_archive(source: str, output_dir: Path, max_bytes: int) -> Path:
    """Bring the archive to local scratch beside (not inside) the artifact, with progress. A dropped
    transfer is retried like every store operation; HTTP errors name the URL; nothing partial stays. A URL
    carrying user-info is refused before anything is fetched, by the store layer (open_url, filesystem)."""
    dest = output_dir.parent / f".{output_dir.name}.download.zip"
    try:
        if storage.is_http(source):
            storage.with_retries(source, "download", lambda: _download(source, dest, max_bytes))
        else:
            storage.download_file(source, str(dest))
            if dest.stat().st_size > max_bytes:
                raise DatasetError(f"{storage.redact(source)}: over the download limit of {max_bytes:,} bytes")
        return dest
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def extract_zip(archive: Path, dest: Path, max_bytes: int, max_ratio: int = MAX_EXPANSION_RATIO,
                source: str = "") -> None:
    """Extract after checking every entry first: the whole archive is refused if any entry is absolute,
    climbs out with '..', is a link, or the archive (any entry, or all of them together) expands absurdly
    (a zip bomb), before a byte is written. Errors name `source` (the URL or path the user gave)."""
    source = source or str(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise DatasetError(f"{source}: {len(infos):,} entries (limit {MAX_ENTRIES:,}); refusing the archive")
            total = 0
            for info in infos:
                name = info.filename
                norm = posixpath.normpath(name.replace("\\", "/"))
                if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
                    raise DatasetError(f"archive entry {name!r} has an absolute path; refusing the archive")
                if norm == ".." or norm.startswith("../"):
                    raise DatasetError(f"archive entry {name!r} points outside the extraction folder; "
                                       "refusing the archive")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DatasetError(f"archive entry {name!r} is a symbolic link; refusing the archive")
                total += info.file_size
                if info.file_size > 1 << 20 and info.file_size > max_ratio * max(info.compress_size, 1):
                    raise DatasetError(f"archive entry {name!r} expands {info.file_size // max(info.compress_size, 1)}x "
                                       f"(limit {max_ratio}x); refusing a possible zip bomb")
            if total > max_bytes:
                raise DatasetError(f"{source}: expands to {total:,} bytes, over the limit of {max_bytes:,}")
            packed = archive.stat().st_size
            if total > 1 << 20 and total > max_ratio * max(packed, 1):
                raise DatasetError(f"{source}: expands {total // max(packed, 1)}x as a whole ({total:,} bytes from "
                                   f"{packed:,}; limit {max_ratio}x); refusing a possible zip bomb")
            # Litter (__MACOSX/, .DS_Store) is extracted like any entry, after the same checks: the listing
            # then ignores and counts it as it does in a folder or bucket.
            for info in infos:
                if info.is_dir():
                    continue
                target = dest / posixpath.normpath(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as out:
                        written = 0
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > info.file_size:  # a lying header: stop before the disk fills
                                raise DatasetError(f"{source}: entry {info.filename!r} is larger than it declares")
                            out.write(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                    raise DatasetError(f"{source}: entry {info.filename!r} is damaged ({type(e).__name__}: {e})") \
                        from None
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{source}: not a valid zip archive ({e})") from None
    finally:
        archive.unlink(missing_ok=True)


def _unwrap(root: Path) -> Path:
    """cats_and_dogs_filtered.zip holds one top folder around the layout: look inside it. Litter at any
    level (a macOS zip's `__MACOSX/` and `.DS_Store` beside that folder) is not a second folder."""
    while True:
        children = [c for c in root.iterdir() if not is_ignored(c.name)]
        if len(children) == 1 and children[0].is_dir() and children[0].name.lower() not in SPLIT_ALIASES:
            grand = [g for g in children[0].iterdir() if g.is_dir() and not is_ignored(g.name)]
            if grand:
                root = children[0]
                continue
        return root
