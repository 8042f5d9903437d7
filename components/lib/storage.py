"""The one place that turns URIs into bytes: local paths, gs:// (gcsfs), s3:// and minio:// (s3fs).

TensorFlow never sees a remote URI: steps read bytes through here and write TFRecords/SavedModels to
local scratch. Outputs are written to a temporary sibling and moved into place, so a failed step never
leaves a half-written artifact that a later step could mistake for a good one. The sibling
(`.<name>.partial-<id>`) is locked while it is written, so the next write of the same output can tell
what a killed (SIGKILL, OOM, evicted) attempt left from a live writer's, and removes only the former.

Configuration comes only from the environment (never from pipeline parameters), so credentials stay
out of compiled YAML and metadata:

| variable | meaning |
|---|---|
| `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ... | the standard AWS chain (s3fs/botocore) |
| `IMGCLF_S3_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) | S3-compatible endpoint, e.g. MinIO |
| `IMGCLF_S3_REGION` (or `AWS_REGION`, `AWS_DEFAULT_REGION`) | region, when the endpoint needs one |
| `IMGCLF_S3_ADDRESSING_STYLE` | `path` (default when an endpoint is set: MinIO), `virtual` or `auto` |
| `GOOGLE_APPLICATION_CREDENTIALS`, workload identity | the standard Google chain (gcsfs) |
| `STORAGE_EMULATOR_HOST` | a GCS emulator; anonymous access unless credentials are set |
| `IMGCLF_STORAGE_RETRIES` | attempts for transient errors (default 4, exponential backoff) |
| `NETRC` (default `~/.netrc`) | HTTP(S) basic auth: the netrc file's `machine` entry for the URL's host |
| `IMGCLF_HTTP_TOKEN` | HTTP(S) bearer token (`Authorization: Bearer ...`); on a cluster, a Kubernetes secret |
| `IMGCLF_HTTP_AUTH_HOSTS` | comma-separated `host[:port]` list the token is sent to (unset: no host; `*`: every host) |

A URI never carries credentials itself: user-info (`https://user:password@host/...`) is refused
(`userinfo_problem`), since parameters and table rows are kept in run metadata, manifests and logs,
and every message naming a URI goes through `redact`.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# KFP's in-cluster MinIO, used for minio:// URIs when no endpoint is configured.
KFP_MINIO_ENDPOINT = "http://minio-service.kubeflow:9000"
_TRANSIENT = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
              "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ClientOSError",
              "ResponseStreamingError", "IncompleteReadError", "ProtocolError", "TransferEncodingError",
              "ServerTimeoutError", "HttpError"}


# A request the client refuses to send because of the URI itself: that object's problem, not the store's.
_INVALID_REQUEST = {"ParamValidationError", "InvalidBucketName"}


class StorageError(OSError):
    """A store could not be used; the message names the URI and the cause."""


class HTTPStatusError(OSError):
    """An HTTP 4xx answer about one object (400, 405, ...: not 401/403, which are the store's, nor
    404/410, which are FileNotFoundError): that object's own failure, reported for it, never retried."""


def is_store_failure(e: BaseException, uri: str) -> bool:
    """A failure of the store itself (unreachable after the retries, access denied), not of one object:
    it must end the step naming the URI, never be quarantined as one bad file among many."""
    return isinstance(e, StorageError) or (isinstance(e, PermissionError) and not is_local(uri))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _env(*names: str) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), "")


def s3_options(minio: bool = False) -> dict:
    endpoint = _env("IMGCLF_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") or \
        (KFP_MINIO_ENDPOINT if minio else "")
    region = _env("IMGCLF_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    style = os.environ.get("IMGCLF_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
    client = {"endpoint_url": endpoint} if endpoint else {}
    if region:
        client["region_name"] = region
    return {"client_kwargs": client,
            "config_kwargs": {"s3": {"addressing_style": style}, "connect_timeout": 10, "read_timeout": 60,
                              "retries": {"max_attempts": 3, "mode": "standard"}}}


def _gcs_class():
    """gcsfs's plain file system when an emulator is configured, else the class gcsfs registers.

    gcsfs decides at import time, from GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT, whether "gcs" means its
    experimental class, which first asks a gRPC endpoint for the bucket's type: an emulator speaks no
    gRPC, so every first access would hang for a minute. Choosing here makes the choice independent of
    when and with which environment gcsfs happened to be imported."""
    import fsspec

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem
    return fsspec.get_filesystem_class("gcs")


def gcs_options() -> dict:
    if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return {"token": "anon"}
    return {}


@functools.cache
def _fs(protocol: str):
    import fsspec

    if protocol in ("s3", "s3a", "minio"):
        return fsspec.filesystem("s3", **s3_options(minio=protocol == "minio"))
    if protocol in ("gs", "gcs"):
        return _gcs_class()(**gcs_options())
    if protocol == "http":
        import aiohttp

        # A server may think for a while before it answers (a slow row is read), but a connection that
        # goes silent for a minute is dropped and retried, as the S3 client's read timeout does.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT, sock_read=HTTP_READ_TIMEOUT)
        return fsspec.filesystem("http", client_kwargs={"timeout": timeout})
    return fsspec.filesystem(protocol)


def filesystem(uri: str):
    """(fs, path-within-fs) for any URI we accept. HTTP(S) keeps the whole URL (fsspec's HTTP file
    system needs it); a URI carrying user-info is refused (see `userinfo_problem`)."""
    if is_local(uri):
        import fsspec

        return fsspec.filesystem("file"), local_path(uri)
    if problem := userinfo_problem(uri):
        raise ValueError(problem)
    protocol, rest = uri.split("://", 1)
    if protocol.lower() in HTTP_SCHEMES:
        return _fs("http"), uri
    return _fs(protocol.lower()), rest


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT or \
        any(type(c).__name__ in _TRANSIENT for c in (e.__cause__, e.__context__) if c is not None)


def _call(uri: str, what: str, fn: Callable[[], T]) -> T:
    """Run one store operation: retry transient faults with backoff, and turn every failure into an
    error that names the URI and the cause (a missing bucket, denied access, an unreachable endpoint)."""
    attempts = max(1, int(os.environ.get("IMGCLF_STORAGE_RETRIES", "4")))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError as e:
            raise FileNotFoundError(redact(f"{uri}: not found ({_cause(e)})")) from e
        except PermissionError as e:
            raise PermissionError(redact(f"{uri}: access denied ({_cause(e)}); check the credentials in the "
                                         "environment")) from e
        except Exception as e:  # noqa: BLE001 - classified below; nothing is swallowed
            if type(e).__name__ in _INVALID_REQUEST:  # this URI is malformed (a bucket name with a space)
                raise ValueError(redact(f"{uri}: {_cause(e)}")) from e
            if not _is_transient(e):
                if isinstance(e, (StorageError, HTTPStatusError, ValueError, IsADirectoryError,
                                  NotADirectoryError, FileExistsError)):
                    raise
                raise StorageError(redact(f"{uri}: {what} failed: {_cause(e)}")) from e
            if attempt == attempts:
                raise StorageError(redact(f"{uri}: {what} failed after {attempts} attempts: {_cause(e)} "
                                          "(is the endpoint up and reachable?)")) from e
            time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def with_retries(uri: str, what: str, fn: Callable[[], T]) -> T:
    """The store layer's one retry policy for I/O it does not do itself (a plain HTTP download):
    transient faults (ConnectionError, TimeoutError, ...) are retried with backoff, then reported
    naming `uri`; other errors pass through as they are."""
    return _call(uri, what, fn)


def _cause(e: BaseException) -> str:
    text = str(e).strip()
    if not text and e.__cause__ is not None:  # e.g. fsspec's bare FSTimeoutError raised from aiohttp's
        text = _cause(e.__cause__)
    text = text or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


# --- HTTP(S): credentials, status classification, redaction -------------------------------------------

HTTP_SCHEMES = ("http", "https")
HTTP_TOKEN_ENV = "IMGCLF_HTTP_TOKEN"
HTTP_AUTH_HOSTS_ENV = "IMGCLF_HTTP_AUTH_HOSTS"
HTTP_CONNECT_TIMEOUT = 30
HTTP_READ_TIMEOUT = 60
"""Seconds to connect, and of silence while waiting for or reading an answer, before an HTTP request
is dropped (and retried as a transient fault)."""
_RETRIED_STATUS = {408, 425, 429}
"""4xx answers that mean "not now" rather than "not this": retried like a 5xx."""
CREDENTIALS_HELP = (f"give HTTP credentials with a netrc file (~/.netrc, or the file NETRC names) or a bearer "
                    f"token in {HTTP_TOKEN_ENV} with {HTTP_AUTH_HOSTS_ENV} naming the host (a Kubernetes secret "
                    "on a cluster); see docs/how-to/storage.md")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URI_REST = re.compile(r"[^ \t\r\n\f\v\"<>`]*")  # a URI quoted in a message ends at a space or a quote


def is_http(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in HTTP_SCHEMES if "://" in uri else False


def _userinfo_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each URI user-info in `text`, its closing '@' included.

    RFC 3986: user-info is what precedes the last '@' of the authority (the part after `scheme://` up to
    the first '/', '?' or '#'), so a password holding '@' or ':' is covered whole. A password holding
    an unencoded '/', '?' or '#' ends the authority early, leaving something like `user:pa` whose
    "port" is not a number: the URI is then taken to run to the last '@' before it ends, so that
    password is covered too (at the price of a path's own '@' in such a malformed URI)."""
    spans, pos = [], 0
    for m in _SCHEME.finditer(text):
        if m.start() < pos:
            continue  # inside a user-info already found
        start = m.end()
        uri = _URI_REST.match(text, start).group()
        authority = re.split(r"[/?#]", uri, maxsplit=1)[0]
        if "@" in authority:
            at = authority.rindex("@")
        else:
            hostport = authority.rsplit("]", 1)[-1]  # an IPv6 literal holds ':' of its own
            malformed_port = ":" in hostport and not hostport.partition(":")[2].isdigit()
            if not (malformed_port and "@" in uri):
                continue
            at = uri.rindex("@")
        spans.append((start, start + at + 1))
        pos = start + at + 1
    return spans


def redact(text: str) -> str:
    """`text` (a URI, or a message naming URIs) with every URI's user-info replaced by `***`:
    `https://user:password@host/x` becomes `https://***@host/x`. The one redaction: every message that
    names a URI goes through it, so no error, log line or report can carry a password."""
    spans = _userinfo_spans(text)
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], "***@"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def userinfo_problem(uri: str) -> str:
    """Why `uri` is refused ("" if it is not): it carries user-info (`user:password@` or `user@`).

    Refused rather than used as basic auth: pipeline parameters and table rows are kept in run
    metadata, compiled specs, manifests and logs, so a password in a URL can never be kept secret.
    The message names the URL redacted and the supported alternatives."""
    if not _userinfo_spans(uri):
        return ""
    if is_http(uri):
        how = CREDENTIALS_HELP
    else:
        how = ("give the store's credentials the standard way, in the environment (the AWS chain for s3://, "
               "GOOGLE_APPLICATION_CREDENTIALS or workload identity for gs://); see docs/how-to/storage.md")
    return (f"{redact(uri)}: a user name or password in a URL is refused (it would be kept in run metadata, "
            f"manifests and logs); {how}")


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.hostname or "").lower(), port or default


def _token_hosts() -> list[str]:
    return [h.strip().lower() for h in os.environ.get(HTTP_AUTH_HOSTS_ENV, "").split(",") if h.strip()]


def _token_allowed(url: str) -> bool:
    """Whether IMGCLF_HTTP_TOKEN may be sent to `url`'s host: only to hosts IMGCLF_HTTP_AUTH_HOSTS lists
    (`host` any port, `host:port` that port, `*` every host). Unset, no host: a table may name any
    host, and a token sent to all of them would be handed to whoever runs one."""
    host, port = _host_port(url)
    for entry in _token_hosts():
        if entry == "*":
            return True
        want = urllib.parse.urlsplit("//" + entry)
        try:
            want_port = want.port
        except ValueError:
            continue
        if (want.hostname or "") == host and (want_port is None or want_port == port):
            return True
    return False


def _netrc_file() -> str:
    return os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")


@functools.lru_cache(maxsize=4)
def _parsed_netrc(path: str, mtime_ns: int, size: int):
    """Parsed once per version of the file (keyed by its time and size), not once per row read."""
    import netrc

    try:
        return netrc.netrc(path)
    except netrc.NetrcParseError as e:
        # Never e.msg: it quotes the offending token, which may be a password.
        raise StorageError(f"{path}: not a valid netrc file (line {e.lineno}); HTTP credentials cannot be "
                           "read from it") from None


def _netrc_login(host: str) -> tuple[str, str] | None:
    path = _netrc_file()
    try:
        st = os.stat(path)
    except OSError:
        if os.environ.get("NETRC"):
            raise StorageError(f"NETRC={path}: no such file; HTTP credentials cannot be read from it") from None
        return None
    found = _parsed_netrc(path, st.st_mtime_ns, st.st_size).authenticators(host)
    if not found or not (found[0] or found[2]):
        return None
    return found[0] or "", found[2] or ""


def _http_auth(url: str) -> tuple[dict[str, str], str]:
    """(headers, where they came from) for a request to `url`."""
    token = os.environ.get(HTTP_TOKEN_ENV, "").strip()  # a secret mounted from a file often ends in a newline
    if token and _token_allowed(url):
        if any(c in token for c in "\r\n\0"):
            raise StorageError(f"{HTTP_TOKEN_ENV} holds a line break or NUL; it cannot be sent as a header")
        return {"Authorization": f"Bearer {token}"}, HTTP_TOKEN_ENV
    host, _ = _host_port(url)
    if host and (login := _netrc_login(host)):
        basic = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
        return {"Authorization": f"Basic {basic}"}, f"the netrc file {_netrc_file()}"
    return {}, ""


def http_headers(url: str) -> dict[str, str]:
    """The headers that authenticate a request to `url`, the standard ways, for the zip download and
    table rows alike: a bearer token from IMGCLF_HTTP_TOKEN if IMGCLF_HTTP_AUTH_HOSTS lets it go to
    this host, else basic auth from the netrc file's entry for the host (`NETRC`, default
    `~/.netrc`; its `default` entry too, as curl reads it), else none. Only for `url`'s own host: a
    redirect elsewhere is sent none. The values are secrets: never logged, never put in a message."""
    return _http_auth(url)[0]


def http_status_error(uri: str, status: int, reason: str) -> BaseException:
    """The exception an HTTP error answer becomes, the same for every HTTP read:
    404/410: FileNotFoundError (that object is missing); 401/403: StorageError (the store refuses us: it
    ends the step, saying how to give credentials); 5xx, 408, 425, 429: ConnectionError (transient:
    retried, then a StorageError); any other 4xx: HTTPStatusError (that object's own failure)."""
    what = f"HTTP {status} {reason}".strip()
    if status in (404, 410):
        return FileNotFoundError(what)
    if status in (401, 403):
        _, source = _http_auth(uri)
        host, port = _host_port(uri)
        if source:
            sent = f"the credentials from {source} were refused"
        elif os.environ.get(HTTP_TOKEN_ENV, "").strip():
            sent = (f"no credentials were sent: {HTTP_TOKEN_ENV} is set, but {HTTP_AUTH_HOSTS_ENV} does not "
                    f"list {host}:{port}")
        else:
            sent = "no credentials were sent"
        return StorageError(redact(f"{uri}: {what}: {sent}; {CREDENTIALS_HELP}"))
    if status >= 500 or status in _RETRIED_STATUS:
        return ConnectionError(what)
    return HTTPStatusError(redact(f"{uri}: {what}"))


def _http(uri: str, fn: Callable[[], T]) -> T:
    """Run one fsspec HTTP operation, its error answers classified by `http_status_error` (fsspec
    raises a bare FileNotFoundError for a 404, aiohttp's ClientResponseError for the others)."""
    import aiohttp

    try:
        return fn()
    except FileNotFoundError:
        raise http_status_error(uri, 404, "Not Found") from None
    except aiohttp.ClientResponseError as e:
        raise http_status_error(uri, e.status, e.message or "") from None


@functools.cache
def _same_origin_auth():
    """urllib's redirect handler, keeping the Authorization header only on the same scheme, host and port
    (as aiohttp does for table rows): a redirect to another host is sent no credentials. Built on first
    use: urllib.request is slow to import, and most runs never download."""
    import urllib.request

    class SameOriginAuth(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and _origin(new.full_url) == _origin(req.full_url):
                for name, value in req.unredirected_hdrs.items():
                    if name.lower() == "authorization":
                        new.add_unredirected_header(name, value)
            return new

    return SameOriginAuth


def _origin(url: str) -> tuple[str, str, int | None]:
    return (urllib.parse.urlsplit(url).scheme.lower(), *_host_port(url))


def open_url(url: str, timeout: float = HTTP_READ_TIMEOUT):
    """urllib's response for a GET of `url` with `http_headers` (a plain download streamed to disk).
    The headers are unredirected, re-added only on a same-origin redirect; user-info is refused."""
    import urllib.request

    if problem := userinfo_problem(url):
        raise ValueError(problem)
    request = urllib.request.Request(url)
    for name, value in http_headers(url).items():
        request.add_unredirected_header(name, value)
    return urllib.request.build_opener(_same_origin_auth()).open(request, timeout=timeout)


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
        # Absolute locations: later steps run elsewhere (another process, another working directory).
        yield from _walk_local(Path(os.path.abspath(local_path(root))))
        return
    fs, path = filesystem(root)
    base = path.rstrip("/")
    proto = root.split("://", 1)[0]
    found = _call(root, "listing", lambda: fs.find(base, detail=True))
    if not found:
        # find() on a missing bucket may return nothing instead of raising: say which it is.
        _call(root, "listing", lambda: fs.ls(base.split("/", 1)[0]))
        raise FileNotFoundError(f"{root}: no objects under this prefix")
    for full, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = full[len(base):].lstrip("/")
        yield Entry(rel, f"{proto}://{full}", int(info.get("size") or 0))


def _walk_local(root: Path) -> Iterator[Entry]:
    """os.walk's order (each folder's files sorted, then its subfolders in sorted order), from
    `os.scandir` entries: their cached types and plain strings avoid a Path object and a stat per file,
    which dominate listing a large folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    real_root = root.resolve()

    def walk(folder: str, prefix: str) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            if not prefix:
                raise
            return  # as os.walk: a subfolder that cannot be listed is passed over
        folders, files = [], []
        for e in entries:
            try:
                is_folder = e.is_dir()
            except OSError:
                is_folder = False
            (folders if is_folder else files).append(e)
        folders.sort(key=lambda e: e.name)
        files.sort(key=lambda e: e.name)
        # A symlinked folder is listed but never descended into: report it rather than drop it silently.
        for d in folders:
            if d.is_symlink():
                yield Entry(prefix + d.name, d.path, 0, "symlinked folder not followed")
        for f in files:
            rel = prefix + f.name
            if f.is_symlink():
                target = Path(f.path).resolve()
                if not target.is_relative_to(real_root) or not target.is_file():
                    yield Entry(rel, f.path, 0, "symlink pointing outside the source folder")
                    continue
            yield Entry(rel, f.path, f.stat().st_size)
        for d in folders:
            if not d.is_symlink():
                yield from walk(d.path, prefix + d.name + "/")

    yield from walk(str(root), "")


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    if is_http(uri):
        return _call(uri, "read", lambda: _http(uri, lambda: fs.cat_file(path, headers=http_headers(uri))))
    return _call(uri, "read", lambda: fs.cat_file(path))


def exists(uri: str) -> bool:
    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri)
    if is_http(uri):
        return _call(uri, "lookup", lambda: _http(uri, lambda: fs.exists(path, headers=http_headers(uri))))
    return _call(uri, "lookup", lambda: fs.exists(path))


def is_dir(uri: str) -> bool:
    if is_local(uri):
        return os.path.isdir(local_path(uri))
    if is_http(uri):
        return False  # a URL names one file: HTTP has no listing to trust (an index page is not a folder)
    fs, path = filesystem(uri)
    return _call(uri, "lookup", lambda: fs.isdir(path))


def download_file(uri: str, local_file: str) -> None:
    if is_local(uri):
        shutil.copyfile(local_path(uri), local_file)
        return
    fs, path = filesystem(uri)
    if is_http(uri):
        _call(uri, "download", lambda: _http(uri, lambda: fs.get_file(path, local_file, headers=http_headers(uri))))
        return
    _call(uri, "download", lambda: fs.get_file(path, local_file))


def download_dir(uri: str, local_dir: str) -> None:
    """Stage a remote folder (e.g. a SavedModel in a bucket) to local disk for TensorFlow."""
    fs, path = filesystem(uri)
    if not _call(uri, "lookup", lambda: fs.exists(path)):
        raise FileNotFoundError(redact(f"{uri}: not found"))
    _call(uri, "download", lambda: fs.get(path.rstrip("/") + "/", local_dir.rstrip("/") + "/", recursive=True))


PARTIAL = ".partial-"
"""Marks a temporary sibling being written: `.<name>.partial-<id>` locally, `<name>.partial-<id>/` in a bucket."""


def _partial_name(name: str) -> str:
    return f".{name}{PARTIAL}{uuid.uuid4().hex[:8]}"


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive lock on an open file or folder without waiting: True if taken, False if another
    process holds it, None where the file system cannot lock it (then nothing is judged abandoned)."""
    import errno
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        return False if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None


def stale_partials(folder: str, name: str | None = None, remove: bool = False) -> tuple[list[str], list[str]]:
    """(abandoned, live): the `.<name>.partial-*` entries in a local `folder` (any name when `name` is None).

    Every writer here (atomic_dir, atomic_write_text, write_if) holds an exclusive lock on its partial
    file or folder from its creation until it is renamed into place, and the kernel drops the lock when
    the process dies, SIGKILL included. So an entry nobody holds locked is what a killed writer left;
    one that is locked is being written now and is left alone (a concurrent writer never loses its
    work). With `remove`, abandoned entries are deleted while the lock is held."""
    prefix = f".{name}{PARTIAL}" if name is not None else "."
    abandoned, live = [], []
    try:
        entries = sorted(e.path for e in os.scandir(folder) if e.name.startswith(prefix) and PARTIAL in e.name)
    except FileNotFoundError:
        return [], []
    for path in entries:
        verdict = _abandoned(path, remove)
        if verdict is not None:
            (abandoned if verdict else live).append(path)
    return abandoned, live


def remove_abandoned(path: str) -> bool:
    """Remove one local partial if no live writer holds it (checked and removed under its lock): a
    verdict reached earlier must not be acted on later, since a writer may have locked it since."""
    return bool(_abandoned(path, remove=True))


def _abandoned(path: str, remove: bool) -> bool | None:
    """True: nobody holds `path` (removed with `remove`); False: a live writer does; None: gone or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # renamed into place or removed meanwhile, or not ours to open: not judged
        return None
    try:
        if not _try_lock(fd):
            return False
        if remove:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return True
    finally:
        os.close(fd)


def _locked_partial(dest: Path, folder: bool) -> tuple[Path, int]:
    """A new `.<name>.partial-<id>` sibling of `dest` (a folder, or an empty file open for writing) and
    its descriptor, locked. Created, then locked, then checked to be still there: a cleaner that took
    the lock in between (and removed it) only makes us try another name."""
    for _ in range(100):
        tmp = dest.parent / _partial_name(dest.name)
        if folder:
            tmp.mkdir()
            try:
                fd = os.open(tmp, os.O_RDONLY)
            except FileNotFoundError:
                continue
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if _try_lock(fd) is False:
            os.close(fd)
            continue
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"{dest}: no temporary sibling could be created")


@contextlib.contextmanager
def atomic_dir(final: str) -> Iterator[Path]:
    """Yield a fresh local folder that becomes `final` only if the block succeeds.

    KFP creates an output artifact's parent folder (sometimes the folder itself, empty); an empty
    existing folder is replaced, a non-empty one is an error rather than silently overwritten.
    What a killed attempt left (`.<name>.partial-*`, unlocked since its process died) is removed first,
    so a retried step does not pile up dead copies of its output; a concurrent writer's is kept.
    """
    dest = Path(final)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stale_partials(str(dest.parent), dest.name, remove=True)
    tmp, fd = _locked_partial(dest, folder=True)
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
        os.close(fd)


def atomic_write_text(final: str, text: str) -> None:
    """Replace a local text file whole (written aside, then renamed); stale partials of it are removed first."""
    dest = Path(final)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stale_partials(str(dest.parent), dest.name, remove=True)
    tmp, fd = _locked_partial(dest, folder=False)
    try:
        with open(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(text)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)


def publish_dir(local_dir: str, dest_uri: str, last: tuple[str, ...] = ("saved_model.pb",)) -> str:
    """Copy a finished local folder to `dest_uri` (local or bucket), all or nothing.

    Locally the folder is renamed into place. Object stores have no rename: files are uploaded to a
    staging prefix, then copied server-side under `dest_uri` with the files named in `last` copied
    last (a SavedModel is only loadable once `saved_model.pb` exists); if anything fails, whatever
    reached `dest_uri` is removed again, and the staging prefix always is.
    """
    if is_local(dest_uri):
        dest = local_path(dest_uri)
        with atomic_dir(dest) as tmp:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
        return dest
    fs, path = filesystem(dest_uri)
    path = path.rstrip("/")
    if _call(dest_uri, "lookup", lambda: bool(fs.find(path))):
        raise FileExistsError(f"{dest_uri}: destination already exists and is not empty")
    staging = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    # Files named in `last` go last, in the order given (e.g. saved_model.pb, then a completion record).
    rels = sorted((p.relative_to(local_dir).as_posix() for p in Path(local_dir).rglob("*") if p.is_file()),
                  key=lambda r: (last.index(r) + 1 if r in last else 0, r))
    done: list[str] = []
    try:
        _call(dest_uri, "upload", lambda: fs.put(local_dir.rstrip("/") + "/", staging + "/", recursive=True))
        for rel in rels:
            _call(dest_uri, "publish", lambda rel=rel: fs.copy(f"{staging}/{rel}", f"{path}/{rel}"))
            done.append(f"{path}/{rel}")
    except BaseException:
        with contextlib.suppress(Exception):
            if done:
                fs.rm(done)
        raise
    finally:
        with contextlib.suppress(Exception):
            fs.rm(staging, recursive=True)
    return dest_uri


def forget_listings(uri: str) -> None:
    """Drop the listings s3fs/gcsfs cached for the store `uri` is on: the next lookup asks the store.
    Needed wherever another process may have changed what was listed (a registry others publish to)."""
    if not is_local(uri):
        fs, _ = filesystem(uri)
        fs.invalidate_cache()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def list_names(uri: str) -> list[str]:
    """Names of the immediate children of a folder or prefix (files and folders); [] if there is none."""
    if is_local(uri):
        path = local_path(uri)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, path = filesystem(uri)
    path = path.rstrip("/")
    fs.invalidate_cache(path)  # s3fs/gcsfs cache listings: another process may have published since
    if not _call(uri, "lookup", lambda: fs.exists(path)):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in _call(uri, "listing", lambda: fs.ls(path, detail=False)))


def put_file(local_file: str, dest_uri: str) -> None:
    """Move a finished local file to `dest_uri`: a rename locally, an upload to a bucket."""
    if is_local(dest_uri):
        dest = Path(local_path(dest_uri))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local_file, dest)
        return
    fs, path = filesystem(dest_uri)
    _call(dest_uri, "upload", lambda: fs.put_file(local_file, path))


def copy_file(local_file: str, dest_uri: str) -> None:
    """Copy a finished local file to `dest_uri`, whole or not at all (object writes are atomic)."""
    if is_local(dest_uri):
        dest = Path(local_path(dest_uri))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = filesystem(dest_uri)
    _call(dest_uri, "upload", lambda: fs.put_file(local_file, path))


def write_text(uri: str, text: str) -> None:
    """Replace a small text object (a state or pointer file); readers see the old or the new whole."""
    if is_local(uri):
        atomic_write_text(local_path(uri), text)
        return
    fs, path = filesystem(uri)
    _call(uri, "write", lambda: fs.pipe_file(path, text.encode("utf-8")))


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists already, or changed since it was read."""


@functools.cache
def _botocore_s3(minio: bool):
    """A plain botocore S3 client with s3fs's settings: fsspec exposes no conditional writes."""
    import botocore.config
    import botocore.session

    opts = s3_options(minio)
    cfg = botocore.config.Config(**opts["config_kwargs"])
    return botocore.session.get_session().create_client("s3", config=cfg, **opts["client_kwargs"])


@functools.cache
def _gcs_client():
    from google.cloud import storage as gcs

    if gcs_options().get("token") == "anon":
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "imgclf"), credentials=AnonymousCredentials())
    return gcs.Client()


def read_versioned(uri: str) -> tuple[bytes, str] | None:
    """(content, tag) of a small object, or None if absent; the tag is what `write_if` compares."""
    if is_local(uri):
        try:
            with open(local_path(uri), "rb") as f:  # the tag of the very file read, not of a later one
                return f.read(), _local_tag(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None
    protocol, rest = uri.split("://", 1)
    bucket, key = rest.split("/", 1)
    if protocol in ("gs", "gcs"):
        blob = _gcs_client().bucket(bucket).get_blob(key)
        if blob is None:
            return None
        # Real GCS always gives a generation; the emulator the tests use gives none (and ignores
        # preconditions anyway): "*" then means "replace without a precondition".
        return blob.download_as_bytes(), "*" if blob.generation is None else str(blob.generation)
    client = _botocore_s3(protocol == "minio")
    try:
        got = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    return got["Body"].read(), got["ETag"]


def write_if(uri: str, data: bytes, tag: str | None) -> None:
    """Write `data` only if the object is still as read: absent (tag None: create-only) or unchanged
    (the tag from `read_versioned`). Raises PreconditionFailed otherwise. S3: If-None-Match / If-Match;
    GCS: if_generation_match; locally an exclusive create, or a lock around compare-and-rename."""
    if is_local(uri):
        _write_if_local(local_path(uri), data, tag)
        return
    protocol, rest = uri.split("://", 1)
    bucket, key = rest.split("/", 1)
    if protocol in ("gs", "gcs"):
        from google.api_core import exceptions

        try:
            cond = {} if tag == "*" else {"if_generation_match": 0 if tag is None else int(tag)}
            _gcs_client().bucket(bucket).blob(key).upload_from_string(data, **cond)
        except exceptions.PreconditionFailed:
            raise PreconditionFailed(uri) from None
        return
    client = _botocore_s3(protocol == "minio")
    cond = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, **cond)
    except client.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            raise PreconditionFailed(uri) from None
        raise StorageError(redact(f"{uri}: conditional write failed: {_cause(e)}")) from e


def _local_tag(st: os.stat_result) -> str:
    """A local file's version: every write below makes a new file (a new inode), so inode and time
    differ even for two writes within one tick of the clock."""
    return f"{st.st_ino}-{st.st_mtime_ns}"


def _write_if_local(path: str, data: bytes, tag: str | None) -> None:
    """Create-only: the whole content is written under a temporary name and hard-linked into place (a
    link fails if the name exists), so a reader never sees the file empty or half-written. Replace:
    compare and rename under a lock. The temporary name is a locked `.<name>.partial-*` sibling, so a
    killed writer's leftover is recognised and removed by the next write."""
    import fcntl

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stale_partials(str(dest.parent), dest.name, remove=True)
    tmp, fd = _locked_partial(dest, folder=False)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        if tag is None:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PreconditionFailed(path) from None
            return
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if _local_tag(os.stat(path)) != tag:
                    raise PreconditionFailed(path)
            except FileNotFoundError:
                raise PreconditionFailed(path) from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)


def remove(uri: str, recursive: bool = False) -> None:
    """Delete a file (or a folder with `recursive`); a missing one is not an error."""
    if is_local(uri):
        p = Path(local_path(uri))
        if p.is_dir() and recursive:
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        _call(uri, "delete", lambda: fs.rm(path, recursive=recursive))


def reset() -> None:
    """Forget cached filesystems, e.g. after the endpoint settings in the environment changed."""
    import fsspec

    _fs.cache_clear()
    _botocore_s3.cache_clear()
    _gcs_client.cache_clear()
    from gcsfs.core import GCSFileSystem

    for cls in (fsspec.get_filesystem_class("s3"), fsspec.get_filesystem_class("gcs"), GCSFileSystem):
        cls.clear_instance_cache()


def upload_dir(local_dir: str, dest_uri: str) -> None:
    """Copy a local folder's files under a bucket prefix (tests, benchmarks, staging data)."""
    fs, path = filesystem(dest_uri)
    _call(dest_uri, "upload", lambda: fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True))
