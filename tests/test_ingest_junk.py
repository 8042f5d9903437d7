"""OS and notebook litter is not data: `.ipynb_checkpoints/`, `.DS_Store`, `._*` (AppleDouble), `__MACOSX/`,
`Thumbs.db`, `desktop.ini` and other dot-files and dot-folders are left out of folders, zips and buckets,
never trained on, never quarantined (so never counted towards `max_quarantined_share`), and counted on
their own in the summary and the report. A table row naming such a file explicitly is read.

The generated cases plant litter at random depths in random trees of small real images; what each piece of
litter is reported as is stated here, by construction, not derived from the code under test.
"""
from __future__ import annotations

import csv
import io
import random
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from imgclf.components.contracts import DatasetError, read_manifest, read_quarantine
from imgclf.components.ingest.step import ingest

SPLITS = ("train", "validation", "test")
APPLEDOUBLE = "._* (macOS AppleDouble)"
HIDDEN = "hidden file or folder"


def _image(rng: random.Random, fmt: str) -> bytes:
    """A small image no other in the case equals (random pixels), so no copy is collapsed as a duplicate."""
    img = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _class_names(rng: random.Random) -> list[str]:
    names = set()
    while len(names) < rng.randint(2, 4):
        names.add(rng.choice(["cat", "Dog", "bird", "Sandal", "shoe", "T-shirt", "Ankle boot", "café"]))
    return sorted(names)


class Tree:
    """A generated source: `images` (rel path -> bytes) are the data, `junk` (rel path -> (bytes, the
    kind ingest must report)) the litter."""

    def __init__(self, seed: int):
        rng = self.rng = random.Random(seed)
        self.pre_split = rng.random() < 0.4
        self.classes = _class_names(rng)
        self.images: dict[str, bytes] = {}
        self.junk: dict[str, tuple[bytes, str]] = {}
        folders = [f"{s}/{c}" for s in SPLITS[:rng.randint(2, 3)] for c in self.classes] if self.pre_split \
            else list(self.classes)
        for folder in folders:
            for i in range(rng.randint(1, 3)):
                sub = rng.choice(["", "", "", "more/", "more/deeper/"])  # images deeper in a class folder count
                self.images[f"{folder}/{sub}img{i}.{rng.choice(['png', 'jpg'])}"] = \
                    _image(rng, rng.choice(["PNG", "JPEG"]))
        self.tops = sorted({f.split("/")[0] for f in folders})
        for _ in range(rng.randint(1, 8)):
            self._plant(rng.choice(folders + self.tops + [""]))

    def _plant(self, where: str) -> None:
        rng = self.rng
        at = f"{where}/" if where else ""
        near = rng.choice([rel for rel in self.images if rel.startswith(at)] or list(self.images))
        stem = near.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        kind = rng.randrange(9)
        if kind == 0:  # Jupyter's autosave of an older version: a REAL image, that must not be trained on
            self.junk[f"{at}.ipynb_checkpoints/{stem}-checkpoint.png"] = (_image(rng, "PNG"), ".ipynb_checkpoints")
        elif kind == 1:
            self.junk[f"{at}.DS_Store"] = (b"\0\0\0\1Bud1" + bytes(40), ".DS_Store")
        elif kind == 2:
            self.junk[f"{at}._{stem}.jpg"] = (b"\0\5\26\7\0\2\0\0Mac OS X        ", APPLEDOUBLE)
        elif kind == 3:
            self.junk[f"{at}{rng.choice(['Thumbs.db', 'thumbs.db', 'THUMBS.DB', 'ehthumbs.db'])}"] = \
                (b"\xd0\xcf\x11\xe0" + bytes(60), "Thumbs.db")
        elif kind == 4:
            self.junk[f"{at}{rng.choice(['desktop.ini', 'Desktop.ini'])}"] = (b"[.ShellClassInfo]\r\n", "desktop.ini")
        elif kind == 5:  # a folder unzipped by a tool that kept macOS's resource forks
            self.junk[f"{at}__MACOSX/{at}._{stem}.png"] = (b"\0\5\26\7", "__MACOSX")
        elif kind == 6:  # the top level: a notebook folder beside the classes (or beside train/ validation/)
            self.junk[f".ipynb_checkpoints/{stem}-checkpoint.jpg"] = (_image(rng, "JPEG"), ".ipynb_checkpoints")
            self.junk[f".ipynb_checkpoints/{stem}.ipynb-checkpoint"] = (b"{}", ".ipynb_checkpoints")
        elif kind == 7:
            self.junk[f"{at}.git/objects/ab/{stem}"] = (b"x\x9c", HIDDEN)
            self.junk[f"{at}.Trash-1000/files/{stem}.png"] = (_image(rng, "PNG"), HIDDEN)
        else:
            self.junk[f"{at}Icon\r"] = (b"", "Icon\\r")
            self.junk[f"{at}.hidden-{stem}.png"] = (_image(rng, "PNG"), HIDDEN)

    def write(self, root: Path) -> Path:
        for rel, data in [*self.images.items(), *((r, d) for r, (d, _) in self.junk.items())]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    def kinds(self) -> Counter:
        return Counter(kind for _, kind in self.junk.values())

    def macos_zip(self, path: Path, wrap: str) -> Counter:
        """The tree as macOS's Archive Utility zips it: folder entries, a `__MACOSX/._x` resource fork for
        every file and folder, and `.DS_Store`s (also at the zip's root, beside the wrapping folder). The
        litter kinds this adds to the tree's own."""
        added = Counter()
        files = {**self.images, **{r: d for r, (d, _) in self.junk.items()}}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            folders = sorted({"/".join(rel.split("/")[:n]) for rel in files for n in range(1, rel.count("/") + 1)})
            for folder in folders:
                zf.writestr(f"{wrap}{folder}/", b"")
            for rel, data in sorted(files.items()):
                zf.writestr(f"{wrap}{rel}", data)
            for rel in [*sorted(files), *folders]:
                head, _, name = f"{wrap}{rel}".rpartition("/")
                zf.writestr(f"__MACOSX/{head}/._{name}" if head else f"__MACOSX/._{name}", b"\0\5\26\7")
                added["__MACOSX"] += 1
            for rel in {".DS_Store", f"{wrap}.DS_Store"} - {f"{wrap}{r}" for r in files}:
                zf.writestr(rel, b"\0\0\0\1Bud1")
                added[".DS_Store"] += 1
        return added


def _check(tree: Tree, out: Path, s, locations: list[str], kinds: Counter) -> None:
    assert sorted(locations) == sorted(tree.images), "the manifest holds exactly the real images"
    assert read_quarantine(str(out)) == [], "litter is never quarantined"
    assert s.quarantined == 0 and s.quarantine_reasons == {}
    assert s.ignored == sum(kinds.values()) and s.ignored_kinds == dict(kinds)
    assert s.layout == ("pre-split" if tree.pre_split else "class-per-subfolder")
    assert s.classes == tree.classes


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(40))
def test_litter_in_a_folder_is_ignored_and_counted(tmp_path, seed):
    tree = Tree(seed)
    root = tree.write(tmp_path / "src")
    out = tmp_path / "ds"
    # a clean folder with litter passes the strictest quarantine limit
    s = ingest(str(root), str(out), workers=1, min_images_per_class=1, max_quarantined_share=0.0)
    rows, _ = read_manifest(str(out))
    _check(tree, out, s, [str(Path(r["location"]).relative_to(root).as_posix()) for r in rows], tree.kinds())


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(100, 130))
def test_litter_in_a_macos_zip_is_ignored_and_counted(tmp_path, seed):
    tree = Tree(seed)
    wrap = tree.rng.choice(["", "dataset/", "my data/"])
    added = tree.macos_zip(tmp_path / "data.zip", wrap)
    out = tmp_path / "ds"
    s = ingest(str(tmp_path / "data.zip"), str(out), workers=1, min_images_per_class=1, max_quarantined_share=0.0)
    rows, _ = read_manifest(str(out))
    prefix = f"files/{wrap}"
    assert all(r["location"].startswith(prefix) for r in rows)
    _check(tree, out, s, [r["location"][len(prefix):] for r in rows], tree.kinds() + added)


@pytest.mark.unit
def test_the_report_and_the_printed_line_count_litter_on_their_own(tmp_path, capsys):
    root = tmp_path / "src"
    rng = random.Random(5)
    for cls in ("A", "B"):
        (root / cls / ".ipynb_checkpoints").mkdir(parents=True)
        (root / cls / "x.png").write_bytes(_image(rng, "PNG"))
        (root / cls / ".ipynb_checkpoints" / "x-checkpoint.png").write_bytes(_image(rng, "PNG"))
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._A").write_bytes(b"\0")
    s = ingest(str(root), str(tmp_path / "ds"), workers=1, min_images_per_class=1,
               report_html=str(tmp_path / "report.html"))
    assert s.ignored == 4 and s.ignored_kinds == {".ipynb_checkpoints": 2, ".DS_Store": 1, "__MACOSX": 1}
    html = (tmp_path / "report.html").read_text()
    assert "ignored files (OS and notebook litter, not data)" in html
    assert "4 (.ipynb_checkpoints 2, .DS_Store 1, __MACOSX 1)" in html
    assert capsys.readouterr().out.rstrip().endswith(
        "; ignored as OS or notebook litter: 4 (.ipynb_checkpoints 2, .DS_Store 1, __MACOSX 1)")


@pytest.mark.unit
def test_litter_is_not_a_file_in_the_quarantined_share(tmp_path):
    """1 broken file among 10 images is 1 of 11 files, however much litter lies beside them: litter can
    neither fail a clean folder nor dilute a broken one below `max_quarantined_share`."""
    root = tmp_path / "src"
    rng = random.Random(1)
    for cls in ("A", "B"):
        (root / cls / ".ipynb_checkpoints").mkdir(parents=True)
        for i in range(5):
            (root / cls / f"{i}.png").write_bytes(_image(rng, "PNG"))
        for i in range(50):
            (root / cls / ".ipynb_checkpoints" / f"{i}-checkpoint.png").write_bytes(b"not an image")
    (root / "A" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"1 of 11 files \(9%\) were quarantined"):
        ingest(str(root), str(tmp_path / "ds"), workers=1, min_images_per_class=1, max_quarantined_share=0.05)
    s = ingest(str(root), str(tmp_path / "ds"), workers=1, min_images_per_class=1, max_quarantined_share=0.1)
    assert s.quarantine_reasons == {"not an image": 1} and s.ignored_kinds == {".ipynb_checkpoints": 100}


@pytest.mark.unit
def test_a_folder_of_nothing_but_litter_says_so(tmp_path):
    root = tmp_path / "src"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    (root / ".ipynb_checkpoints" / "a-checkpoint.png").write_bytes(_image(random.Random(0), "PNG"))
    (root / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DatasetError, match=r"src: no files found, only OS or notebook litter, which is not data: "
                                           r"2 \(\.DS_Store 1, \.ipynb_checkpoints 1\) ignored"):
        ingest(str(root), str(tmp_path / "ds"), workers=1)


@pytest.mark.unit
def test_a_table_row_naming_a_hidden_file_is_read(tmp_path):
    """The listing's litter rule is for files nobody chose; a table row is the user's explicit choice."""
    root = tmp_path / "src"
    rng = random.Random(3)
    rows = []
    for cls in ("cat", "dog"):
        for rel in (f"{cls}/a.png", f"{cls}/.ipynb_checkpoints/a-checkpoint.png", f".{cls}-hidden.png"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(_image(rng, "PNG"))
            rows.append({"path": rel, "label": cls})
    (root / ".DS_Store").write_bytes(b"\0")  # litter beside the table: not a row, so not read either
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "ds"
    s = ingest(str(root / "labels.csv"), str(out), workers=1, min_images_per_class=1, max_quarantined_share=0.0)
    manifest, _ = read_manifest(str(out))
    assert sorted(Path(r["location"]).relative_to(root).as_posix() for r in manifest) == sorted(r["path"] for r in rows)
    assert s.per_class == {"cat": 3, "dog": 3} and s.ignored == 0 and s.quarantined == 0


def test_litter_in_a_bucket_is_ignored_and_counted(bucket, tmp_path):
    from imgclf.components.lib import storage

    tree = Tree(11)
    tree.junk["cat/.ipynb_checkpoints/x-checkpoint.png"] = (_image(tree.rng, "PNG"), ".ipynb_checkpoints")
    tree.junk[".DS_Store"] = (b"\0", ".DS_Store")
    storage.upload_dir(str(tree.write(tmp_path / "src")), f"{bucket[0]}/data")
    listed = {e.rel for e in storage.walk_files(f"{bucket[0]}/data")}
    assert set(tree.junk) <= listed, "the litter really is in the bucket"
    out = tmp_path / "ds"
    s = ingest(f"{bucket[0]}/data", str(out), min_images_per_class=1, max_quarantined_share=0.0)
    rows, _ = read_manifest(str(out))
    _check(tree, out, s, [r["location"][len(f"{bucket[0]}/data/"):] for r in rows], tree.kinds())
