"""A source that cannot make a fair classifier is refused, and the refusal says what to fix.

Two rules: pre-split sources must hold the same classes in every split (a typo'd folder is refused
before any file is read, naming the closest name), and whatever dataset check fails, the last line
`imgclf run` prints states that check's own reason, not only "dataset checks failed".
"""
from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imgclf.components.contracts import DatasetError
from imgclf.components.ingest.step import ingest
from tests.conftest import TWO, make_folder, sample_files

POOL = ["Sandal", "Sneaker", "Ankle boot", "Trouser", "Pullover", "Dress", "Coat", "Shirt", "T-shirt",
        "Handbag", "Backpack", "Raincoat"]
SPLIT_FOLDERS = {"validation": ["validation", "val", "valid"], "test": ["test", "testing"]}


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3))).save(path)


def _typo(rng: random.Random, name: str) -> str:
    """One plausible slip: a letter added, dropped, doubled or swapped, or a plural."""
    i = rng.randrange(1, len(name) - 1)
    return rng.choice([name + "s", name[:i] + name[i + 1:], name[:i] + name[i] + name[i:],
                       name[:i] + name[i + 1] + name[i] + name[i + 2:]])


def _layout(rng: random.Random):
    """A random pre-split folder spec: {folder: {class: n}}, plus what was done to it."""
    classes = rng.sample(POOL, rng.randint(2, 5))
    splits = ["train", *(k for k in SPLIT_FOLDERS if rng.random() < 0.8)]
    folders = {"train": "train", **{s: rng.choice(SPLIT_FOLDERS[s]) for s in splits[1:]}}
    spec = {s: dict.fromkeys(classes, 2) for s in splits}
    change = rng.choice(["none", "rename", "drop", "extra"]) if len(splits) > 1 else "none"
    done = ("none", "", "")
    if change != "none":
        split = rng.choice(splits[1:])
        victim = rng.choice(classes)
        if change == "rename":
            typo = _typo(rng, victim)
            while typo in classes or typo.casefold() == victim.casefold():
                typo = _typo(rng, victim)
            spec[split][typo] = spec[split].pop(victim)
            done = ("rename", split, f"{victim}>{typo}")
        elif change == "drop":
            spec[split].pop(victim)
            done = ("drop", split, victim)
        else:
            extra = next(c for c in POOL if c not in classes)
            spec[split][extra] = 2
            done = ("extra", split, extra)
    return {folders[s]: spec[s] for s in splits}, folders, done


@pytest.mark.unit
def test_generated_pre_split_layouts_are_refused_exactly_when_the_class_sets_differ(tmp_path):
    """Random pre-split folders (train plus some of validation|val|valid and test|testing), some with a
    class renamed by a typo, dropped or added in a non-train split. Refused before any file is read
    (the images are unreadable on purpose: a read would quarantine them), naming each folder and, for a
    typo, the class it was meant to be; `allow_missing_classes` lets a dropped class through, never an
    extra or renamed one."""
    rng = random.Random(37)
    seen = set()
    for case in range(40):
        layout, folders, (change, split, what) = _layout(rng)
        seen.add(change)
        root = tmp_path / f"case{case}"
        for folder, classes in layout.items():
            for c, n in classes.items():
                for i in range(n):
                    (root / folder / c).mkdir(parents=True, exist_ok=True)
                    (root / folder / c / f"{i}.png").write_bytes(b"unread")  # read only if admitted
        for allow in (False, True):
            out = tmp_path / f"out{case}-{allow}"
            refused = change in ("rename", "extra") or (change == "drop" and not allow)
            if not refused:
                # Accepted: ingest goes on to read the files (all unreadable: the share check ends it).
                with pytest.raises(DatasetError, match="dataset checks failed") as e:
                    ingest(str(root), str(out), allow_missing_classes=allow, workers=1)
                assert "splits hold different classes" not in str(e.value)
                continue
            with pytest.raises(DatasetError, match="the splits hold different classes") as e:
                ingest(str(root), str(out), allow_missing_classes=allow, workers=1)
            message = str(e.value)
            assert not out.exists(), "nothing written for a refused source"
            if change == "rename":
                meant, typo = what.split(">")
                assert f"`{split}/{typo}`: no such class in train/ — did you mean `{meant}`?" in message, message
                if not allow:
                    assert f"`train/{meant}`: no images in {split}/ — did you mean `{split}/{typo}`?" in message
            elif change == "extra":
                assert f"`{split}/{what}`: no such class in train/" in message, message
            else:
                assert f"`train/{what}`: no images in {split}/" in message and "allow_missing_classes" in message
    assert seen == {"none", "rename", "drop", "extra"}


@pytest.mark.unit
def test_a_table_with_splits_is_held_to_the_same_rule(tmp_path):
    make_folder(tmp_path / "img", TWO, 2)
    rows = [(f"img/{c}/{p.name}", c, s) for c in TWO for p, s in zip(sorted((tmp_path / "img" / c).iterdir()),
                                                                        ["train", "test"])]
    rows[-1] = (rows[-1][0], "Bags", "test")
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    with pytest.raises(DatasetError, match=r"`test/Bags`: no such class in train/ — did you mean `Bag`\?"):
        ingest(str(tmp_path / "t.csv"), str(tmp_path / "out"), workers=1)


# Every kind of whole-dataset refusal ingest makes, each built on real images: name -> (build, a phrase
# of its reason); build returns the source and the options it needs. The phrase only guards against an
# empty oracle: the test's real claim is that the CLI's last line carries ingest's own message whole.
def _one_class(d: Path):
    return make_folder(d, ["Bag"], 12), {}


def _small_class(d: Path):
    root = make_folder(d, TWO, 12)
    for p in sorted((root / "Bag").iterdir())[3:]:
        p.unlink()
    return root, {}


def _imbalanced(d: Path):
    root = make_folder(d, TWO, 30)
    for p in sorted((root / "Bag").iterdir())[12:]:
        p.unlink()
    return root, {"max_imbalance": 2.0}


def _mostly_broken(d: Path):
    root = make_folder(d, TWO, 12)
    for i in range(30):
        (root / "Bag" / f"broken{i}.png").write_bytes(b"\x89PNG broken")
    return root, {}


def _no_training_images(d: Path):
    for c in TWO:
        (d / "train" / c).mkdir(parents=True)
        (d / "train" / c / "x.png").write_bytes(b"damaged")
        for i, p in enumerate(sample_files(c, 12)):
            (d / "test" / c).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / "test" / c / f"{i}.png")
    return d, {"max_quarantined_share": 1.0, "min_images_per_class": 1}


def _case_clash(d: Path):
    root = make_folder(d, TWO, 12)
    shutil.copytree(root / "Bag", root / "bag")
    return root, {}


def _typo_split(d: Path):
    for split, names in (("train", ["Trouser", "Sandal"]), ("validation", ["Trouser", "Sandals"])):
        for c in names:
            for i in range(10):
                _image(d / split / c / f"{i}.png", hash((split, c, i)) % 10_000)
    return d, {}


def _empty_table(d: Path):
    d.mkdir(parents=True)
    (d / "t.csv").write_text("path,label\n")
    return d / "t.csv", {}


def _table_without_labels(d: Path):
    d.mkdir(parents=True)
    (d / "t.csv").write_text("path,kind\nx.png,a\n")
    return d / "t.csv", {}


def _no_files(d: Path):
    (d / "Bag").mkdir(parents=True)
    return d, {}


KINDS = {
    "fewer than 2 classes": (_one_class, "a classifier needs at least 2 classes"),
    "a class too small": (_small_class, "fewer than 10 usable images: Bag (3)"),
    "imbalance": (_imbalanced, "imbalanced"),
    "mostly quarantined": (_mostly_broken, "max_quarantined_share"),
    "no training images": (_no_training_images, "no usable training images"),
    "names differ by case": (_case_clash, "differ only by case"),
    "class sets differ": (_typo_split, "`validation/Sandals`: no such class in train/ — did you mean `Sandal`?"),
    "an empty table": (_empty_table, "the table has no rows"),
    "a table without a label column": (_table_without_labels, "needs a header"),
    "no files": (_no_files, "no files found"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_last_line_of_a_refused_run_states_the_reason(kind, tmp_path, capsys):
    from imgclf.pipelines.cli.main import main

    build, phrase = KINDS[kind]
    data, options = build(tmp_path / "data")
    with pytest.raises(DatasetError) as direct:
        ingest(str(data), str(tmp_path / "direct"), **options)
    reason = str(direct.value)
    assert phrase in reason, reason
    registry = tmp_path / "registry"
    flags = [x for name, value in options.items() for x in (f"--{name.replace('_', '-')}", str(value))]
    code = main(["run", "--data", str(data), *flags, "--pipeline-root", str(tmp_path / "runs"),
                 "--registry", str(registry), "--quiet"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("imgclf: error: the pipeline failed in step 'ingest': ") and last.endswith(reason), last
    assert not registry.exists() or not any(registry.rglob("saved_model.pb"))  # nothing was published
