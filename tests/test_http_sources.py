"""HTTP(S) sources against a real local server: table rows (CSV and Parquet) mixing local and http rows,
a zip URL, credentials the standard ways (netrc / NETRC, IMGCLF_HTTP_TOKEN scoped by
IMGCLF_HTTP_AUTH_HOSTS), user-info in URLs refused before work, and no secret in anything a run writes."""
from __future__ import annotations

import base64
import csv
import io
import logging
import random
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgclf.components.contracts import DatasetError, read_manifest, read_quarantine
from imgclf.components.ingest.step import ingest
from imgclf.components.lib import storage
from tests.conftest import TWO, sample_files

PER_CLASS = 12  # min_images_per_class is 10: every test's dataset passes the dataset checks when all is read


@dataclass
class Web:
    """What the server serves and how; `seen` records every request's path and Authorization header."""
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    private: tuple[str, ...] = ()  # path prefixes needing one of `accepted` Authorization values
    accepted: set[str] = field(default_factory=set)
    status: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    delay_first: dict[str, float] = field(default_factory=dict)  # path -> delay of its first request only
    fail_first: dict[str, int] = field(default_factory=dict)  # path -> 503 answers before the file
    redirect: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(web: Web) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _serve(self, send_body: bool):
            path = self.path.split("?", 1)[0]
            with web.lock:
                web.seen.append((path, self.headers.get("Authorization") or ""))
                failing = web.fail_first.get(path, 0)
                if failing:
                    web.fail_first[path] = failing - 1
                wait = web.delay_first.pop(path, web.delay.get(path, 0))
            if failing:
                return self._answer(503, b"busy", send_body=send_body)
            time.sleep(wait)
            if path.startswith(web.private) and self.headers.get("Authorization") not in web.accepted:
                return self._answer(401, b"who are you?", {"WWW-Authenticate": 'Basic realm="data"'}, send_body)
            if path in web.redirect:
                return self._answer(302, b"", {"Location": web.redirect[path]}, send_body)
            if path in web.status:
                return self._answer(web.status[path], b"no", send_body=send_body)
            if path not in web.files:
                return self._answer(404, b"not here", send_body=send_body)
            return self._answer(200, web.files[path], {"Content-Type": "application/octet-stream"}, send_body)

        def do_GET(self):
            self._serve(True)

        def do_HEAD(self):
            self._serve(False)

    return Handler


def _start(web: Web) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(web))
    web.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _served(request) -> Web:
    w = Web()
    server = _start(w)
    request.addfinalizer(server.server_close)
    request.addfinalizer(server.shutdown)
    return w


@pytest.fixture
def web(request):
    return _served(request)


@pytest.fixture
def other_web(request):
    """A second server: another origin (same host, another port), for redirects."""
    return _served(request)


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch, tmp_path):
    """No ~/.netrc, token or host list from the machine running the tests: each test sets its own."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("NETRC", "IMGCLF_HTTP_TOKEN", "IMGCLF_HTTP_AUTH_HOSTS"):
        monkeypatch.delenv(name, raising=False)


def _images(per_class: int = PER_CLASS) -> list[tuple[str, str, bytes]]:
    """(label, file name, PNG bytes) of real Fashion-MNIST images."""
    return [(cls, p.name, p.read_bytes()) for cls in TWO for p in sample_files(cls, per_class)]


def _write_table(path: Path, rows: list[tuple[str, str]]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"path": [r[0] for r in rows], "label": [r[1] for r in rows]}), path)
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
    return path


def _mixed_table(tmp_path: Path, web: Web, suffix: str, private: bool = False) -> tuple[Path, list[str]]:
    """Half of each class local (relative paths), half http rows (under /private/ with `private`);
    returns the table and the http rows' URLs."""
    folder = tmp_path / "tbl"
    folder.mkdir(exist_ok=True)
    rows, urls = [], []
    prefix = "/private" if private else "/img"
    for i, (label, name, data) in enumerate(_images()):
        if i % 2:
            (folder / label).mkdir(exist_ok=True)
            (folder / label / name).write_bytes(data)
            rows.append((f"{label}/{name}", label))
        else:
            web.files[f"{prefix}/{label}/{name}"] = data
            urls.append(f"{web.url}{prefix}/{label}/{name}")
            rows.append((urls[-1], label))
    return _write_table(folder / f"images{suffix}", rows), urls


def _netrc(tmp_path: Path, login: str, password: str, host: str = "127.0.0.1") -> Path:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host}\n  login {login}\n  password {password}\n")
    path.chmod(0o600)
    return path


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_rows_over_http_read_like_any_row(tmp_path, web, suffix):
    table, urls = _mixed_table(tmp_path, web, suffix)
    slow, flaky = urls[0], urls[1]
    web.delay[slow.removeprefix(web.url)] = 1.5  # answers late, well within the read timeout
    web.fail_first[flaky.removeprefix(web.url)] = 1  # one 503 first: retried by the store layer
    web.status["/img/gone.png"] = 410
    web.status["/img/bad-request.png"] = 400
    extra = [(f"{web.url}/img/missing.png", "Bag"), (f"{web.url}/img/gone.png", "Bag"),
             (f"{web.url}/img/bad-request.png", "Trouser")]
    with open(table, "rb") as f:
        original = f.read()
    if suffix == ".csv":
        table.write_bytes(original + "".join(f"{u},{label}\r\n" for u, label in extra).encode())
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(table).to_pylist()
        _write_table(table, [(r["path"], r["label"]) for r in rows] + extra)

    s = ingest(str(table), str(tmp_path / "ds"))

    assert s.per_class == {"Bag": PER_CLASS, "Trouser": PER_CLASS}
    rows, _ = read_manifest(str(tmp_path / "ds"))
    assert {r["location"] for r in rows} >= set(urls)  # http rows are recorded as their URLs
    q = {r["location"]: r for r in read_quarantine(str(tmp_path / "ds"))}
    assert set(q) == {u for u, _ in extra}
    missing, gone, bad = (q[u] for u, _ in extra)
    assert missing["reason"] == "missing" and "HTTP 404 Not Found" in missing["detail"]
    assert gone["reason"] == "missing" and "HTTP 410" in gone["detail"]
    assert bad["reason"] == "unreadable" and "HTTP 400" in bad["detail"]
    assert [p for p, _ in web.seen].count(flaky.removeprefix(web.url)) == 2  # the 503, then the file


def test_a_row_the_server_keeps_failing_ends_the_step_naming_the_url(tmp_path, web, monkeypatch):
    monkeypatch.setenv("IMGCLF_STORAGE_RETRIES", "2")
    table, urls = _mixed_table(tmp_path, web, ".csv")
    web.status[urls[3].removeprefix(web.url)] = 500
    with pytest.raises(storage.StorageError, match=rf"{urls[3]}: read failed after 2 attempts: .*HTTP 500"):
        ingest(str(table), str(tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


def test_a_read_that_times_out_is_retried(tmp_path, web, monkeypatch):
    """A server silent for longer than the read timeout is a transient fault: the next attempt reads."""
    monkeypatch.setattr(storage, "HTTP_READ_TIMEOUT", 2)
    storage.reset()  # the HTTP file system is built with the timeout
    try:
        web.files["/img/x.png"] = _images(1)[0][2]
        web.delay_first["/img/x.png"] = 6.0  # 3x the timeout, then answered at once
        assert storage.read_bytes(f"{web.url}/img/x.png") == web.files["/img/x.png"]
        assert [p for p, _ in web.seen] == ["/img/x.png", "/img/x.png"]
    finally:
        monkeypatch.undo()
        storage.reset()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_authenticated_rows(tmp_path, web, other_web, monkeypatch, suffix):
    token = "tok-" + secrets.token_hex(8)
    login, password = "alice", "pw-" + secrets.token_hex(8)
    web.private = ("/private/",)
    web.accepted = {f"Bearer {token}", _basic(login, password)}
    table, urls = _mixed_table(tmp_path, web, suffix, private=True)

    with pytest.raises(storage.StorageError) as failed:
        ingest(str(table), str(tmp_path / "a"))
    message = str(failed.value)
    assert "HTTP 401" in message and "no credentials were sent" in message and "netrc" in message
    assert any(message.startswith(u) for u in urls) and not (tmp_path / "a").exists()

    monkeypatch.setenv("NETRC", str(_netrc(tmp_path, login, password)))
    assert ingest(str(table), str(tmp_path / "b")).images == 2 * PER_CLASS
    monkeypatch.delenv("NETRC")

    # A token is sent only to the hosts IMGCLF_HTTP_AUTH_HOSTS lists: unset, it goes nowhere, and says so.
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", token + "\n")  # as a secret mounted from a file often is
    with pytest.raises(storage.StorageError, match="IMGCLF_HTTP_AUTH_HOSTS does not list 127.0.0.1"):
        ingest(str(table), str(tmp_path / "c"))
    port = web.url.rsplit(":", 1)[1]
    monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", f"example.org, 127.0.0.1:{port}")
    assert ingest(str(table), str(tmp_path / "d")).images == 2 * PER_CLASS
    assert {a for p, a in web.seen if p.startswith("/private/")} >= {f"Bearer {token}", _basic(login, password)}

    # A redirect to another origin (another port here) carries no credentials, even to a host the token
    # may go to: aiohttp drops the header, as urllib does for the zip.
    monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", "127.0.0.1")
    other_web.files["/elsewhere.png"] = _images(1)[0][2]
    web.redirect["/private/hop.png"] = f"{other_web.url}/elsewhere.png"
    assert storage.read_bytes(f"{web.url}/private/hop.png") == other_web.files["/elsewhere.png"]
    assert other_web.seen == [("/elsewhere.png", "")]


def _zip(entries: list[tuple[str, str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, name, data in entries:
            zf.writestr(f"data/{label}/{name}", data)
    return buf.getvalue()


def test_zip_url_behind_basic_auth_via_netrc(tmp_path, web, other_web, monkeypatch):
    login, password = "bob", "pw-" + secrets.token_hex(8)
    web.private = ("/private/",)
    web.accepted = {_basic(login, password)}
    web.files["/private/data.zip"] = _zip(_images())
    web.redirect["/moved.zip"] = "/private/data.zip"  # same origin: the credentials follow
    web.redirect["/private/away.zip"] = f"{other_web.url}/data.zip"  # another origin: they do not
    other_web.files["/data.zip"] = web.files["/private/data.zip"]

    with pytest.raises(storage.StorageError, match=rf"{web.url}/private/data.zip: HTTP 401 .*netrc"):
        ingest(f"{web.url}/private/data.zip", str(tmp_path / "a"))
    assert list(tmp_path.iterdir()) == []  # no artifact, no partial download

    monkeypatch.setenv("NETRC", str(_netrc(tmp_path, login, password)))
    assert ingest(f"{web.url}/private/data.zip", str(tmp_path / "b")).images == 2 * PER_CLASS
    assert ingest(f"{web.url}/moved.zip", str(tmp_path / "c")).images == 2 * PER_CLASS
    assert ingest(f"{web.url}/private/away.zip", str(tmp_path / "d")).images == 2 * PER_CLASS
    assert other_web.seen == [("/data.zip", "")]


def test_user_info_in_a_url_is_refused_before_anything_is_read(tmp_path, web):
    password = "pw-" + secrets.token_hex(8)
    table, urls = _mixed_table(tmp_path, web, ".csv")
    lines = table.read_text().splitlines()
    secret_url = urls[2].replace("http://", f"http://alice:{password}@")
    lines = [line.replace(urls[2], secret_url) for line in lines]
    table.write_text("\n".join(lines) + "\n")
    row = next(n for n, line in enumerate(lines, start=1) if secret_url in line)

    with pytest.raises(DatasetError) as refused:
        ingest(str(table), str(tmp_path / "a"))
    message = str(refused.value)
    assert f"row {row}:" in message and urls[2].replace("http://", "http://***@") in message
    assert password not in message and "netrc" in message and "IMGCLF_HTTP_TOKEN" in message

    web.files["/data.zip"] = _zip(_images())
    for source in (f"http://alice:{password}@{web.url[7:]}/data.zip", f"http://alice:{password}@{web.url[7:]}/t.csv"):
        with pytest.raises(ValueError) as refused:  # DatasetError, or the parameter check's refusal
            ingest(source, str(tmp_path / "b"))
        assert password not in str(refused.value) and "***@" in str(refused.value)
    assert web.seen == []  # not one request: refused before any file was read
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_no_secret_reaches_any_output(tmp_path, web, monkeypatch, capsys, caplog):
    """Runs that carried a token and a netrc password (a good run, a run with a refused row, a 401): not
    one byte of either in anything written under the output folder, nor in stdout, stderr, errors or any
    log record (fsspec, aiohttp, urllib), debug level included."""
    caplog.set_level(logging.DEBUG)
    token, password = "tok-" + secrets.token_hex(12), "pw-" + secrets.token_hex(12)
    web.private = ("/private/",)
    web.accepted = {f"Bearer {token}"}
    table, _ = _mixed_table(tmp_path, web, ".csv", private=True)
    with open(table, "a", encoding="utf-8") as f:
        f.write(f"{web.url}/private/missing.png,Bag\n")
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", token)
    monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", "127.0.0.1")
    monkeypatch.setenv("NETRC", str(_netrc(tmp_path, "carol", password, host="localhost")))
    out = tmp_path / "out"

    s = ingest(str(table), str(out / "ds"), report_html=str(out / "report.html"))
    assert s.images == 2 * PER_CLASS and s.quarantined == 1
    errors = []
    localhost = web.url.replace("127.0.0.1", "localhost")
    web.accepted = {_basic("someone", "else")}  # the token is refused now: a 401 error message
    for source in (str(table), f"{localhost}/private/data.zip"):
        with pytest.raises((storage.StorageError, DatasetError)) as failed:
            ingest(source, str(out / f"failed{len(errors)}"))
        errors.append(str(failed.value))
    assert "the credentials from IMGCLF_HTTP_TOKEN were refused" in errors[0]
    assert "the credentials from the netrc file" in errors[1]

    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 5  # manifest, classes, quarantine, summary, report
    captured = capsys.readouterr()
    texts = [p.read_bytes() for p in written] + [captured.out.encode(), captured.err.encode()]
    texts += [e.encode() for e in errors] + [caplog.text.encode()]
    for secret in (token, password):
        assert not [p for p, t in zip([*written, "stdout", "stderr", *errors, "logs"], texts) if secret.encode() in t]
        assert base64.b64encode(f"carol:{password}".encode()).decode().encode() not in b"".join(texts)


# --- redact: generated URIs ---------------------------------------------------------------------------

_PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SPECIAL = ["@", ":", "%40", "%3A", "%2F", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=", "-", ".", "_", "~",
            "é", "ß", "中", "密", "🔑", "Ω"]
_HOSTS = ["example.org", "data.example.co.uk", "127.0.0.1", "[::1]", "[2001:db8::7]", "minio-service.kubeflow",
          "bücher.example"]
_PATHS = ["", "/", "/d.zip", "/a/b/c.png", "/img/a@b.png", "/x?token=1&y=a@b", "/p#frag@x", "/t.csv?x=%40",
          "/weird:name/@at.jpg"]


def _secret(rng: random.Random) -> str:
    """A password with at least one special character, and a plain marker no host or path holds."""
    parts = [rng.choice(_SPECIAL) if rng.random() < 0.4 else rng.choice(_PLAIN) for _ in range(rng.randint(3, 16))]
    parts.insert(rng.randrange(len(parts) + 1), rng.choice(_SPECIAL))
    return "".join(parts) + "Q" + "".join(rng.choice(_PLAIN) for _ in range(6))


@pytest.mark.unit
def test_redact_removes_every_password_and_keeps_the_rest_of_the_uri():
    rng = random.Random(37)
    for _ in range(3000):
        scheme = rng.choice(["http", "https", "HTTPS", "s3", "gs", "minio", "ftp"])
        host = rng.choice(_HOSTS) + (f":{rng.randint(1, 65535)}" if rng.random() < 0.5 else "")
        rest = rng.choice(_PATHS)
        user = "".join(rng.choice(_PLAIN + "é中.-_") for _ in range(rng.randint(1, 8)))
        password = _secret(rng)
        userinfo = rng.choice([f"{user}:{password}", password, f"{user}:{password}:{password}"])
        uri = f"{scheme}://{userinfo}@{host}{rest}"
        expected = f"{scheme}://***@{host}{rest}"
        assert storage.redact(uri) == expected, uri
        assert storage.userinfo_problem(uri).startswith(f"{expected}: a user name or password"), uri
        assert password not in storage.userinfo_problem(uri)
        # Inside a longer message, quoted or not, among other URIs: each redacted, all else kept.
        other = f"gs://bucket/{user}@x.png"
        for template in ("{u}", "failed: {u}: HTTP 404", "'{u}'", '"{u}"', "<{u}>", "[{u}, {o}]", "{o} then {u}\n"):
            message = template.format(u=uri, o=other)
            assert storage.redact(message) == template.format(u=expected, o=other), message
            assert password not in storage.redact(message)


@pytest.mark.unit
def test_redact_leaves_uris_without_user_info_alone():
    rng = random.Random(3)
    for _ in range(1000):
        scheme = rng.choice(["http", "https", "s3", "gs", "file"])
        host = "" if scheme == "file" else rng.choice(_HOSTS) + (f":{rng.randint(1, 65535)}" if rng.random() < 0.5 else "")
        uri = f"{scheme}://{host}{rng.choice(_PATHS) or '/'}"
        assert storage.redact(uri) == uri and storage.userinfo_problem(uri) == ""
    for text in ("/data/me@example.com/img.png", "user@host: no scheme", "no URI at all", ""):
        assert storage.redact(text) == text and storage.userinfo_problem(text) == ""


@pytest.mark.unit
def test_a_password_with_an_unencoded_slash_is_still_redacted():
    for password in ("ab/cd", "a?b", "x#y", "x:12/34"):
        uri = f"https://me:{password}@host/u@x.png"
        assert password not in storage.redact(uri) and storage.redact(uri).startswith("https://***@")


@pytest.mark.unit
def test_http_headers_scope_the_token_and_read_netrc(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("NETRC", "IMGCLF_HTTP_TOKEN", "IMGCLF_HTTP_AUTH_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    assert storage.http_headers("https://data.example.org/x.png") == {}
    (tmp_path / ".netrc").write_text("machine data.example.org login u password p@ss:w\ndefault login d password dd\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert storage.http_headers("https://data.example.org/x") == {"Authorization": _basic("u", "p@ss:w")}
    assert storage.http_headers("https://elsewhere.org/x") == {"Authorization": _basic("d", "dd")}  # as curl
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", "t0k\n")
    assert storage.http_headers("https://data.example.org/x") == {"Authorization": _basic("u", "p@ss:w")}
    cases = {"data.example.org": ["https://data.example.org/x", "http://DATA.example.org:8080/x"],
             "data.example.org:443": ["https://data.example.org/x", "https://data.example.org:443/x"],
             "data.example.org:8080, other.org": ["http://data.example.org:8080/x", "https://other.org/x"],
             "*": ["https://anything.example/x"]}
    for hosts, sent in cases.items():
        monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", hosts)
        for url in sent:
            assert storage.http_headers(url) == {"Authorization": "Bearer t0k"}, (hosts, url)
    monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", "data.example.org:443")
    assert storage.http_headers("http://data.example.org/x") == {"Authorization": _basic("u", "p@ss:w")}
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    monkeypatch.delenv("IMGCLF_HTTP_TOKEN")
    with pytest.raises(storage.StorageError, match="NETRC=.*absent: no such file"):
        storage.http_headers("https://data.example.org/x")
    (tmp_path / "broken").write_text("machine h login u password secret-word extra-token\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "broken"))
    with pytest.raises(storage.StorageError) as bad:
        storage.http_headers("https://h/x")
    assert "secret-word" not in str(bad.value) and "extra-token" not in str(bad.value)


@pytest.mark.unit
def test_an_http_folder_is_refused_naming_what_works(tmp_path):
    """A web server lists no folders: `--data https://host/folder/` is refused before any request,
    saying what an http(s) source must be."""
    with pytest.raises(DatasetError, match=r"must name a \.zip archive or a CSV/Parquet table"):
        ingest("http://127.0.0.1:9/images/", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", range(6))
def test_generated_tables_mixing_local_bucket_and_http_rows(tmp_path, web, bucket, seed):
    """Each image a local, bucket (s3:// or gs://) or http row at random, some http rows answering 404,
    some bucket rows naming a missing object, in a random order: every good row is admitted at its own
    location with its label, and every bad one quarantined as `missing` with its cause."""
    rng = random.Random(seed)
    folder = tmp_path / "tbl"
    rows, good, bad = [], {}, {}
    for label, name, data in _images():
        where = rng.choice(["local", "s3", "gs", "http"])
        broken = rng.random() < 0.15 and where != "local"
        if where == "local":
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / name).write_bytes(data)
            location = str(folder / label / name)
            rows.append((f"{label}/{name}", label))
        elif where == "http":
            location = f"{web.url}/img/{seed}/{label}/{name}"
            if not broken:
                web.files[f"/img/{seed}/{label}/{name}"] = data
            rows.append((location, label))
        else:
            location = f"{bucket[0] if where == 's3' else bucket[1]}/{seed}/{label}/{name}"
            if not broken:
                fs, path = storage.filesystem(location)
                fs.pipe_file(path, data)
            rows.append((location, label))
        (bad if broken else good)[location] = label
    rng.shuffle(rows)
    table = _write_table(folder / "t.csv", rows)

    s = ingest(str(table), str(tmp_path / "ds"), min_images_per_class=1, max_quarantined_share=1.0)
    manifest, _ = read_manifest(tmp_path / "ds")
    assert {r["location"]: r["label"] for r in manifest} == good and s.images == len(good)
    quarantine = {q["location"]: q for q in read_quarantine(tmp_path / "ds")}
    assert set(quarantine) == set(bad)
    for location, q in quarantine.items():
        assert q["reason"] == "missing" and q["label"] == bad[location]
        assert ("HTTP 404" in q["detail"]) if location.startswith("http") else location in q["detail"], q


@pytest.mark.slow
def test_a_whole_run_over_private_http_rows_writes_the_token_nowhere(tmp_path, web, monkeypatch, capsys):
    """`imgclf run` (kfp.local's full output: it dumps every task's inputs) on a table whose http rows
    need a bearer token from the environment: it trains, and not one byte of the token is in anything it
    printed or wrote under the pipeline root (manifests, metrics, reports, executor inputs and outputs)."""
    from imgclf.pipelines.cli.main import main

    token = "tok-" + secrets.token_hex(12)
    web.private = ("/private/",)
    web.accepted = {f"Bearer {token}"}
    table, urls = _mixed_table(tmp_path, web, ".csv", private=True)
    monkeypatch.setenv("IMGCLF_HTTP_TOKEN", token)
    monkeypatch.setenv("IMGCLF_HTTP_AUTH_HOSTS", "127.0.0.1")
    root = tmp_path / "runs"
    assert main(["run", "--data", str(table), "--epochs", "1", "--image-size", "28", "--pipeline-root", str(root)]) == 0
    assert {path for path, auth in web.seen if auth == f"Bearer {token}"} >= {u[len(web.url):] for u in urls}
    written = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.csv" for p in written) and any(p.name == "saved_model.pb" for p in written)
    out = capsys.readouterr()
    assert token not in out.out and token not in out.err
    assert [p for p in written if token.encode() in p.read_bytes()] == []
