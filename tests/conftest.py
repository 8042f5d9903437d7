"""Shared fixtures: small real-image datasets cut from the embedded Fashion-MNIST sample."""
from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_PRINT = builtins.print


# The unit lane (`make test-unit`, marker `unit`) promises no servers. Two checks keep the promise by
# mechanism rather than by reading: a unit test that asks for a fixture that starts one (directly or
# through another fixture: `bucket` needs `stores`) fails before it is set up; while a unit test (and
# its fixtures) runs, opening a listening TCP socket in this process (an HTTP double, http.server) fails,
# and so does launching a store server process (moto, the GCS emulator: tests/stores.py, guarded below).
SERVER_FIXTURES = frozenset({"stores", "http_dir", "web", "other_web"})
_UNIT_RUNNING = [False]
_LISTEN = socket.socket.listen


def _guarded_listen(self, *args):
    if _UNIT_RUNNING[0] and self.family in (socket.AF_INET, socket.AF_INET6):
        pytest.fail("unit tests use no servers: this test (or a fixture of it) opened a listening socket; "
                    "drop the unit mark or the server", pytrace=False)
    return _LISTEN(self, *args)


socket.socket.listen = _guarded_listen


def _is_unit(item) -> bool:
    return item.get_closest_marker("unit") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _is_unit(item):
        servers = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if servers:
            pytest.fail(f"unit tests use no servers: {item.nodeid} uses {', '.join(sorted(servers))}; "
                        f"drop the unit mark or the fixture", pytrace=False)
        _UNIT_RUNNING[0] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    _UNIT_RUNNING[0] = False


@pytest.fixture(autouse=True)
def _plain_print():
    """Every test starts with the real `print`. kfp.local indents a task's log by swapping
    `builtins.print` for the task's duration (kfp.local.logging_utils.indented_print). In the full
    suite an earlier in-process run left it swapped, and every later test's output started with four
    spaces: a test's result depended on which tests ran before it."""
    builtins.print = _PRINT
    yield


SAMPLE = REPO / "data" / "fashion-mnist-sample"


def sample_files(cls: str, n: int, skip: int = 0) -> list[Path]:
    files = sorted((SAMPLE / cls).glob("*.png"))[skip:skip + n]
    assert len(files) == n, f"embedded sample has too few {cls} images"
    return files


def make_folder(root: Path, classes: list[str], per_class: int, jpeg_every: int = 0, skip: int = 0) -> Path:
    """Class-per-subfolder copy of real images; every `jpeg_every`-th one re-encoded as RGB JPEG."""
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(sample_files(cls, per_class, skip)):
            if jpeg_every and i % jpeg_every == 0:
                Image.open(src).convert("RGB").save(root / cls / f"{src.stem}.jpg", quality=92)
            else:
                shutil.copy(src, root / cls / src.name)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Content of every file and link under root: proves a step left the user's source untouched."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


TWO = ["Trouser", "Bag"]
TEN = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())


def preprocessed(tmp: Path, per_class: int) -> Path:
    """Real Fashion-MNIST images of all ten classes (every third a JPEG), ingested and preprocessed at
    32 px grey with 15 % validation and 15 % test: the records the training tests start from."""
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess

    ingest(str(make_folder(tmp / "src", TEN, per_class, jpeg_every=3)), str(tmp / "ds"))
    preprocess(str(tmp / "ds"), str(tmp / "pp"), image_size=32, color_mode="grayscale", val_fraction=0.15,
               test_fraction=0.15, seed=1)
    return tmp / "pp"


@pytest.fixture
def google_anonymous(monkeypatch):
    """The Google client libraries with anonymous credentials, for the local API doubles."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "proj"))


@pytest.fixture
def two_class_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "two", TWO, 30, jpeg_every=3)


@pytest.fixture
def ten_class_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "ten", TEN, 20, jpeg_every=4)


@pytest.fixture(scope="session")
def chain_factory(tmp_path_factory):
    """Run ingest -> preprocess -> train -> evaluate -> export once per class set and share the result:
    training is the slow part of the suite."""
    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.export.step import export
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess
    from imgclf.components.train.step import train

    built = {}

    def build(name: str):
        if name not in built:
            classes, per_class = {"two": (TWO, 30), "ten": (TEN, 20)}[name]
            tmp = tmp_path_factory.mktemp(name)
            src = make_folder(tmp / "src", classes, per_class, jpeg_every=3)
            ingest(str(src), str(tmp / "ds"))
            preprocess(str(tmp / "ds"), str(tmp / "pp"), image_size=28, color_mode="grayscale",
                       val_fraction=0.15, test_fraction=0.2, seed=1)
            tr = train(str(tmp / "pp"), str(tmp / "model"), epochs=3, batch_size=16, width=8, depth=2,
                       patience=2, curves_html=str(tmp / "curves.html"))
            ev = evaluate(str(tmp / "pp"), str(tmp / "model"), str(tmp / "pred"),
                          report_html=str(tmp / "report.html"))
            ex = export(str(tmp / "model"), str(tmp / "pp"), str(tmp / "pred"), str(tmp / "saved_model"))
            built[name] = (tmp, classes, tr, ev, ex)
        return built[name]

    return build


STORE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
             "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "IMGCLF_STORAGE_RETRIES": "3"}


@pytest.fixture(scope="session")
def stores():
    """A real S3 API server and a GCS emulator on 127.0.0.1, configured through the environment exactly
    as a user configures MinIO or an emulator (so subprocesses such as kfp.local tasks see them too)."""
    from imgclf.components.lib import storage
    from tests import stores as st

    s3, gcs = st.moto_s3(), st.gcs_emulator()
    saved = {k: os.environ.get(k) for k in [*STORE_ENV, "IMGCLF_S3_ENDPOINT_URL", "STORAGE_EMULATOR_HOST"]}
    os.environ.update(STORE_ENV, IMGCLF_S3_ENDPOINT_URL=s3.url, STORAGE_EMULATOR_HOST=gcs.url)
    storage.reset()
    try:
        yield {"s3": s3, "gcs": gcs}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset()
        s3.stop()
        gcs.stop()


_bucket_counter = iter(range(10_000))


@pytest.fixture
def bucket(stores):
    """A fresh bucket name in both stores: returns (s3_uri, gs_uri) of its root."""
    from imgclf.components.lib import storage

    name = f"bkt{next(_bucket_counter)}"
    for proto in ("s3", "gs"):
        fs, _ = storage.filesystem(f"{proto}://{name}")
        fs.mkdir(name)
    return f"s3://{name}", f"gs://{name}"


@pytest.fixture
def http_dir(tmp_path):
    """Serve a folder over HTTP on 127.0.0.1, as a dataset download URL would be."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _guard_store_servers() -> None:
    """moto and the GCS emulator listen in a child process, out of reach of the socket guard: their one
    launcher (tests/stores.py `Server`) refuses to start while a unit test runs."""
    from tests import stores

    launch = stores.Server.__init__

    def guarded(self, cmd, *args, **kwargs):
        if _UNIT_RUNNING[0]:
            pytest.fail(f"unit tests use no servers: this test (or a fixture of it) started {Path(cmd[0]).name}; "
                        "drop the unit mark or the server", pytrace=False)
        launch(self, cmd, *args, **kwargs)

    stores.Server.__init__ = guarded


_guard_store_servers()
