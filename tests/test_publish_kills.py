"""Publishes killed at every store operation, on a local folder, the S3 server (moto) and the GCS emulator:
after each kill a server following the registry (through its pinned models.config) loads a complete
champion, and the repair (`imgclf registry check --repair`, or the next publish) leaves nothing behind.
Then damaged champion records: named everywhere, with the repair, and never overwritten silently."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgclf.components.lib import registry, storage
from imgclf.pipelines.cli.main import main

NAME = "fm"
SOURCE = {  # a stand-in SavedModel: publish only copies files (and requires saved_model.pb)
    "saved_model.pb": b"\x08\x01\x12\x04tags" + bytes(range(256)),
    "fingerprint.pb": b"\x08\x02" * 20,
    "variables/variables.data-00000-of-00001": random.Random(1).randbytes(20_000),
    "variables/variables.index": b"index" * 30,
}
KERAS = {"model.keras": b"PK\x03\x04 keras zip", "train.json": b'{"epochs": 1}'}
EXTRA = {"assets.extra/seen_images.txt.gz": b"\x1f\x8b seen"}


def card(record: dict) -> str:
    return f"# card of {record['model_name']} version {record['version']}\n"


@pytest.fixture
def work(tmp_path) -> tuple[str, str]:
    sm, md = tmp_path / "work" / "sm", tmp_path / "work" / "md"
    for rel, data in SOURCE.items():
        (sm / rel).parent.mkdir(parents=True, exist_ok=True)
        (sm / rel).write_bytes(data)
    md.mkdir(parents=True)
    for rel, data in KERAS.items():
        (md / rel).write_bytes(data)
    return str(sm), str(md)


def publish(work, reg: str, run: str = "test") -> int:
    return registry.publish(*work, reg, NAME, {"metrics": {"accuracy": 0.9}, "source_run": run}, card,
                            extra_files=EXTRA)


def expected(version: int) -> dict[str, bytes]:
    """What version `version` holds once published (its record aside)."""
    return {**SOURCE, **{f"{registry.KERAS_DIR}/{k}": v for k, v in KERAS.items()}, **EXTRA,
            registry.MODEL_CARD: card({"model_name": NAME, "version": version}).encode()}


def everything(loc: str) -> list[str]:
    """Every file and folder under the model folder, hidden ones included, fresh from the store."""
    if storage.is_local(loc):
        out = []
        for root, dirs, files in os.walk(loc):
            out += [os.path.relpath(os.path.join(root, n), loc) for n in dirs + files]
        return sorted(out)
    storage.forget_listings(loc)
    try:
        return sorted(e.rel for e in storage.walk_files(loc))
    except FileNotFoundError:
        return []


def assert_complete(loc: str, version: int) -> None:
    """Every file present and byte-equal to what was published, saved_model.pb included; nothing else."""
    vuri = storage.join(loc, str(version))
    for rel, data in expected(version).items():
        assert storage.read_bytes(storage.join(vuri, rel)) == data, (version, rel)
    record = json.loads(storage.read_bytes(storage.join(vuri, registry.RECORD)))
    assert record["version"] == version and record[registry.FILES] == {r: len(d) for r, d in expected(version).items()}
    storage.forget_listings(vuri)
    assert sorted(e.rel for e in storage.walk_files(vuri)) == sorted([*expected(version), registry.RECORD])


def pointer(loc: str) -> int | None:
    uri = storage.join(loc, registry.CHAMPION_FILE)
    return json.loads(storage.read_bytes(uri))["version"] if storage.exists(uri) else None


def pinned(loc: str) -> int | None:
    """What a server following the registry loads: the version models.config pins (None: no config)."""
    uri = storage.join(loc, registry.SERVING_CONFIG)
    storage.forget_listings(loc)
    if not storage.exists(uri):
        return None
    text = storage.read_bytes(uri).decode()
    version = int(text.split("versions: ")[1].split()[0])
    assert text == registry.serving_config(NAME, version)  # base_path /mnt/models, name, the one version
    return version


def numbered(loc: str) -> list[int]:
    storage.forget_listings(loc)
    return sorted(int(n) for n in storage.list_names(loc) if n.isdigit())


def assert_server_view(loc: str, previous: int) -> None:
    champ, pin = pointer(loc), pinned(loc)
    assert champ >= previous
    assert pin in (champ, previous), (pin, champ, previous)
    assert_complete(loc, pin)
    if storage.is_local(loc):  # TF Serving's default policy would load the highest folder: complete too
        assert_complete(loc, numbered(loc)[-1])


def assert_clean(loc: str, verified: set[int] | None = None) -> None:
    """No staging or partial write left, every version folder complete (those in `verified` were checked
    already: complete versions are never written again), pointer and config on the newest."""
    left = [p for p in everything(loc) if ".partial-" in p]
    assert not left, left
    versions = numbered(loc)
    for v in versions:
        if verified is None or v not in verified:
            assert_complete(loc, v)
            if verified is not None:
                verified.add(v)
    assert pointer(loc) == pinned(loc) == versions[-1]
    if verified is None:  # the whole check reads every version's record: once, at the end
        assert registry.check(os.path.dirname(loc), NAME).clean


PUBLISHER = textwrap.dedent("""
    import json, os, shutil, signal, sys, time
    from imgclf.components.lib import registry, storage
    import gcsfs, s3fs, google.cloud.storage  # imported once: each publish runs in a fork of this process

    where, reg, sm, md = sys.argv[1:5]

    def publish(kill_at):
        started = time.monotonic()
        ops = [0]

        def count():
            ops[0] += 1
            if ops[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)   # as if the node died right after this operation

        def after(real, inside=None):
            def wrapper(*a, **kw):
                out = real(*a, **kw)
                if inside is None or inside(a):
                    count()
                return out
            return wrapper

        def after_async(real):
            async def wrapper(*a, **kw):
                out = await real(*a, **kw)
                count()
                return out
            return wrapper

        storage.write_if = after(storage.write_if)          # claim, pointer, config: one conditional write each
        if where == "local":
            root = os.path.abspath(reg)
            def inside(a):                                   # only what lands in the registry counts
                return os.path.abspath(str(a[1])).startswith(root)
            copy2, real_copytree = after(shutil.copy2, inside), shutil.copytree
            def copytree(src, dst, *a, **kw):                # nested folders come back with copy_function positional
                if a:
                    return real_copytree(src, dst, *a, **kw)
                return real_copytree(src, dst, **{**kw, "copy_function": copy2})
            shutil.copytree = copytree                        # each file copied into the hidden folder
            os.replace = after(os.replace, inside)            # the version renamed into place; pointer and config
            os.link = after(os.link, inside)                  # the create-only claim
        else:
            fs, _ = storage.filesystem(reg)
            for name in ("_put_file", "_cp_file", "_pipe_file", "_rm"):   # uploads, server-side copies, deletes
                setattr(fs, name, after_async(getattr(fs, name)))
        v = registry.publish(sm, md, reg, "fm", {"metrics": {"accuracy": 0.9}, "source_run": f"killed-{kill_at}"},
                             lambda r: f"# card of {r['model_name']} version {r['version']}\\n",
                             extra_files={"assets.extra/seen_images.txt.gz": b"\\x1f\\x8b seen"})
        return {"version": v, "ops": ops[0], "seconds": time.monotonic() - started}

    for line in sys.stdin:                     # one publish per line: SIGKILLed after operation N
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            sys.stdout = sys.stderr                # stdout is how this process answers
            code = 0
            try:
                os.write(w, json.dumps(publish(int(line))).encode())
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            os._exit(code)
        os.close(w)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code, "result": out.decode()}), flush=True)
""")


class Publisher:
    """A process that publishes in a fresh fork for each request, killing itself after operation N: a
    real separate process per publish, without paying Python's start and imports each time."""

    def __init__(self, where: str, reg: str, work: tuple[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, where, reg, *work], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)

    def run(self, kill_at: int) -> tuple[int, dict | None]:
        """(returncode of the publish: -9 when killed, 0 when it finished; its result)."""
        self.proc.stdin.write(f"{kill_at}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.log.read_text()[-3000:]
        got = json.loads(line)
        return got["returncode"], json.loads(got["result"]) if got["result"] else None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def publisher(tmp_path, work):
    made = []

    def start(where: str, reg: str) -> Publisher:
        made.append(Publisher(where, reg, work, tmp_path / f"publisher-{len(made)}.log"))
        return made[-1]

    yield start
    for p in made:
        p.close()


def _registry_root(where: str, tmp_path: Path, request) -> str:
    if where == "local":
        return str(tmp_path / "reg")
    s3, gs = request.getfixturevalue("bucket")
    return (s3 if where == "s3" else gs) + "/reg"


@pytest.mark.parametrize("where", ["local", "s3", "gs"])
def test_a_publish_killed_at_every_store_operation_never_shows_a_server_a_broken_version(
        where, work, tmp_path, request, monkeypatch, capsys, publisher):
    """Before: killed after 1, 4, 8 or 9 of its 11 copies to S3, the highest folder held no saved_model.pb
    while champion.json said 1: TF Serving's default policy (and a KServe pod) served nothing."""
    reg = _registry_root(where, tmp_path, request)
    loc = registry.model_uri(reg, NAME)
    assert publish(work, reg, "first") == 1
    monkeypatch.setenv(registry.GRACE_ENV, "0")  # the next publish: nothing else publishes here
    started, kill_at, total, verified = time.monotonic(), 0, None, set()
    child = publisher(where, reg)
    while total is None:
        kill_at += 1
        assert kill_at < 80, "the publish never finished"
        previous = pointer(loc)
        returncode, result = child.run(kill_at)
        if returncode == 0:
            total = result["ops"]
            assert total == kill_at - 1
        else:
            assert returncode == -9, child.log.read_text()[-3000:]
        assert_server_view(loc, previous)
        if kill_at % 2:
            assert main(["registry", "check", "--repair", "--grace", "0", loc]) == 0
        else:
            publish(work, reg, f"after-{kill_at}")
        assert_clean(loc, verified)
    assert_clean(loc)
    seconds = time.monotonic() - started
    with capsys.disabled():
        print(f"\n{where}: {total} store operations, killed after each ({total} kill points + 1 complete run) "
              f"in {seconds:.1f} s")
    assert total >= 15
    assert seconds < 60


def test_check_reports_without_changing_and_leaves_a_young_publish_alone(work, bucket, tmp_path, capsys, publisher):
    """A staging prefix or a recordless folder whose claim is younger than the grace period may belong to a
    publish still running: reported, left alone, removed only once old enough (or with --grace 0)."""
    reg = bucket[0] + "/reg"
    loc = registry.model_uri(reg, NAME)
    publish(work, reg)
    assert publisher("s3", reg).run(12)[0] == -9  # killed after 2 of its copies
    before = everything(loc)
    assert any(p.startswith("2.partial-") for p in before) and any(p.startswith("2/") for p in before)
    capsys.readouterr()
    assert main(["registry", "check", loc]) == 1
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith(("found: ", "left: ")) for line in out), out
    assert any("staging of version 2" in line and "a publish may still be running" in line for line in out)
    assert any("2/: version folder without a record" in line for line in out)
    assert main(["registry", "check", "--repair", loc]) == 1
    assert "left: " in capsys.readouterr().out and everything(loc) == before
    assert main(["registry", "check", "--repair", "--grace", "0", "--registry", reg, "--model-name", NAME]) == 0
    out = capsys.readouterr().out
    assert "repaired: " in out and "removed" in out and f"ok: {loc}: champion 1, models.config pins 1" in out
    assert_clean(loc)


def test_a_complete_version_whose_pointer_never_moved_is_rolled_forward(work, tmp_path, capsys, publisher):
    reg = str(tmp_path / "reg")
    loc = registry.model_uri(reg, NAME)
    publish(work, reg)
    # Killed after the rename and before the pointer: complete version 2, pointer and config on 1.
    assert publisher("local", reg).run(12)[0] == -9
    assert pointer(loc) == pinned(loc) == 1 and numbered(loc) == [1, 2]
    assert_complete(loc, 2)
    assert main(["registry", "check", loc]) == 1
    assert "found: version 2 is complete but" in capsys.readouterr().out and pointer(loc) == 1
    assert main(["registry", "check", "--repair", loc]) == 0
    assert "made version 2 the champion" in capsys.readouterr().out
    assert pointer(loc) == pinned(loc) == 2


# --- damaged champion records ------------------------------------------------------------------------

def _damaged_cases() -> list[bytes]:
    good = json.dumps({"version": 2, "updated": "2026-12-01T00:00:00+00:00", "source_run": "r"}, indent=1).encode()
    rnd = random.Random(7)
    cases = [b'{"version": 2', b"\xff\xfe\x00garbage", b"{}", b'{"version": "x"}', b'{"version": -1}',
             b'{"version": 0}', b'{"version": 9}', b'{"version": 3}', b"null", b"[2]", b'"2"', b"", b"2",
             b'{"version": true}', b'{"version": 2.0}', b'{"version": null}', b'{"versions": 2}']
    cases += [good[:rnd.randrange(1, len(good) - 1)] for _ in range(12)]          # truncated writes
    cases += [rnd.randbytes(rnd.randrange(1, 64)) for _ in range(12)]             # garbage
    return cases


DAMAGED = _damaged_cases()


@pytest.fixture
def two_versions(work, tmp_path) -> str:
    reg = str(tmp_path / "reg")
    publish(work, reg)
    publish(work, reg)
    # A version folder without a record (a copy that never finished) for `{"version": 3}` to name.
    (tmp_path / "reg" / NAME / "3").mkdir()
    (tmp_path / "reg" / NAME / "3" / "saved_model.pb").write_bytes(b"pb")
    return reg


def _assert_named(message: str, loc: str) -> None:
    assert message.startswith(f"{loc}/champion.json: the champion record is damaged ("), message
    assert ("); it is never overwritten automatically. The newest complete version is 2: run 'imgclf registry "
            f"check --repair --champion 2 {loc}' to point the champion at it, or restore the file.") in message
    assert "\n" not in message


@pytest.mark.parametrize("case", range(len(DAMAGED)))
@pytest.mark.unit
def test_a_damaged_champion_record_is_named_and_never_overwritten(case, two_versions, work, capsys):
    reg, damage = two_versions, DAMAGED[case]
    loc = registry.model_uri(reg, NAME)
    path = Path(loc) / registry.CHAMPION_FILE
    path.write_bytes(damage)
    for read in (lambda: registry.champion(reg, NAME), lambda: registry.resolve(loc),
                 lambda: publish(work, reg), lambda: registry.advance_champion(reg, NAME, 4, {"version": 4})):
        with pytest.raises(registry.RegistryError) as e:
            read()
        _assert_named(str(e.value), loc)
    assert sorted(os.listdir(Path(loc) / registry.CLAIMS)) == ["1", "2"]  # the refused publish claimed nothing
    # check reports it; --repair without --champion leaves it alone and says how.
    assert main(["registry", "check", loc]) == 1
    assert main(["registry", "check", "--repair", loc]) == 1
    out = capsys.readouterr().out
    assert "the champion record is damaged" in out and "--champion 2" in out and path.read_bytes() == damage
    # What is independent of the pointer is repaired all the same: 3/ was never claimed by a publish.
    assert "3/: version folder without a record" in out and numbered(loc) == [1, 2]
    # --champion must name a complete version.
    assert main(["registry", "check", "--repair", "--champion", "3", loc]) == 1
    assert "--champion 3: version 3 is not complete" in capsys.readouterr().err and path.read_bytes() == damage
    assert main(["registry", "check", "--repair", "--champion", "2", loc]) == 0
    out = capsys.readouterr().out
    assert "repaired: " in out and "pointed at version 2" in out
    assert registry.champion(reg, NAME)["version"] == 2 and pinned(loc) == 2


@pytest.mark.unit
def test_a_champion_set_by_hand_is_not_rolled_forward(two_versions, capsys):
    loc = registry.model_uri(two_versions, NAME)
    (Path(loc) / registry.CHAMPION_FILE).write_text("{")
    assert main(["registry", "check", "--repair", "--champion", "1", loc]) == 0
    assert pointer(loc) == pinned(loc) == 1
    # Version 2 is complete and newer, but older than the pointer a person set: it stays as set.
    assert main(["registry", "check", "--repair", loc]) == 0
    assert pointer(loc) == pinned(loc) == 1 and "ok: " in capsys.readouterr().out


@pytest.mark.unit
def test_a_rollback_by_hand_stays_until_the_next_publish(two_versions, capsys):
    loc = registry.model_uri(two_versions, NAME)
    assert pointer(loc) == pinned(loc) == 2
    assert main(["registry", "check", "--repair", "--champion", "1", loc]) == 0
    assert "a rollback by hand" in capsys.readouterr().out and pointer(loc) == pinned(loc) == 1
    # Neither a check nor the next publish's own repair rolls it forward to 2 again.
    assert main(["registry", "check", "--repair", loc]) == 0
    assert pointer(loc) == pinned(loc) == 1


@pytest.mark.parametrize("where", ["s3", "gs"])
def test_a_damaged_champion_record_in_a_bucket_is_named(where, work, request, tmp_path):
    reg = _registry_root(where, tmp_path, request)
    loc = registry.model_uri(reg, NAME)
    publish(work, reg)
    publish(work, reg)
    fs, path = storage.filesystem(storage.join(loc, registry.CHAMPION_FILE))
    for damage in (b'{"version": 2', b"\xff\xfe", b"{}", b'{"version": 5}'):
        fs.pipe_file(path, damage)
        for read in (lambda: registry.champion(reg, NAME), lambda: publish(work, reg)):
            with pytest.raises(registry.RegistryError) as e:
                read()
            _assert_named(str(e.value), loc)
    assert registry.check(reg, NAME, repair=True, set_champion=1).clean
    assert pointer(loc) == pinned(loc) == 1


@pytest.mark.unit
def test_predict_names_a_damaged_champion_record_in_one_line(two_versions, tmp_path, capsys):
    from tests.conftest import sample_files

    loc = registry.model_uri(two_versions, NAME)
    (Path(loc) / registry.CHAMPION_FILE).write_text("{}")
    image = sample_files("Bag", 1)[0]
    assert main(["predict", "--model", loc, str(image)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imgclf: error: ") and err.count("\n") == 1 and "Traceback" not in err
    _assert_named(err[len("imgclf: error: "):].rstrip("\n"), loc)


@pytest.mark.unit
def test_the_run_steps_name_a_damaged_champion_record(two_versions, tmp_path, monkeypatch):
    """The champion lookup and the gate (the steps of `imgclf run` that read the pointer) raise the
    RegistryError, which the run reports as its error."""
    from imgclf.components.release import champion, gate

    loc = registry.model_uri(two_versions, NAME)
    (Path(loc) / registry.CHAMPION_FILE).write_text('{"version": "x"}')
    monkeypatch.setattr(champion.RecordsMetadata, "load", lambda _: SimpleNamespace(data_fingerprint="f"))
    with pytest.raises(registry.RegistryError) as e:
        champion.lookup(str(tmp_path), registry=two_versions, model_name=NAME)
    _assert_named(str(e.value), loc)
    evaluated = SimpleNamespace(metrics={"accuracy": 0.9, "macro_f1": 0.9, "test_images": 10}, classes=["a", "b"],
                                intervals={})
    monkeypatch.setattr(gate.Evaluation, "load", lambda _: evaluated)
    rows = [{"location": f"{i}.png", "label": c, "predicted": c, "probability": "1.0"} for i, c in enumerate("abab")]
    monkeypatch.setattr(gate, "read_predictions", lambda _: rows, raising=False)
    with pytest.raises(registry.RegistryError) as e:
        gate.gate(str(tmp_path), str(tmp_path), registry=two_versions, model_name=NAME)
    _assert_named(str(e.value), loc)


@pytest.mark.unit
def test_registry_check_usage(two_versions, capsys):
    loc = registry.model_uri(two_versions, NAME)
    assert main(["registry", "check", "--registry", two_versions, "--model-name", NAME]) == 1  # 3/ has no record
    assert main(["registry", "check", "--repair", loc]) == 0
    assert main(["registry", "check", loc]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"found: {loc}/3/: version folder without a record (1 files, saved_model.pb present): its " \
                     "publish stopped while copying; --repair: removed"
    assert out[1].startswith("repaired: ") and out[-1] == f"ok: {loc}: champion 2, models.config pins 2"
    for argv, why in ((["registry", "check"], "which registry?"),
                      (["registry", "check", loc, "--registry", two_versions], "not both"),
                      (["registry", "check", "s3://bucket"], "expected REGISTRY/NAME"),
                      (["registry", "check", "--repair", "--champion", "0", loc], "expected a version number")):
        assert main(argv) == 1
        assert why in capsys.readouterr().err
