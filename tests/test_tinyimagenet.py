"""Tiny ImageNet as downloaded: a generated tree in its layout, converted through the real CLI,
labels checked file by file (train from the folder, val from val_annotations.txt)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fastmix.data.convert import ConvertError, plan
from fastmix.data.shards import read_samples
from fastmix.data.sources import open_source
from fastmix.data.synth import class_wnids, write_tinyimagenet
from fastmix.data.tinyimagenet import TinyImageNetError
from fastmix.data.verify import verify

from conftest import small_config

CLASSES, TRAIN, VAL, TEST = 3, 4, 2, 2
QUIRKS = {("train", 1): "gray", ("val", 0): "gray", ("train", 2): "truncated"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    labels = write_tinyimagenet(root, CLASSES, TRAIN, VAL, TEST, quirks=QUIRKS, seed=3)
    return root, labels


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    """The tree through tools/convert_subset.py as a user runs it: layout auto-detected."""
    import contextlib
    import io
    from tools.convert_subset import main
    out, printed = tmp_path_factory.mktemp("tiny-out") / "out", io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["--source", str(tiny[0]), "--out", str(out), "--all-classes", "--workers", "2",
                   "--shard-size", "5", "--verify"])
    assert rc == 0
    return out, printed.getvalue()


def test_layout_is_detected_and_boxes_files_are_not_items(tiny):
    root, labels = tiny
    source = open_source(root)
    assert source.kind == "tinyimagenet"
    wnids, names = source.classes()
    assert wnids == class_wnids(CLASSES)  # sorted, though wnids.txt lists them in reverse
    assert names == {w: f"synthetic {i}, tiny class {i}" for i, w in enumerate(wnids)}
    train = source.items("train", wnids)
    assert {i.path: i.wnid for i in train} == labels["train"]
    assert not any(i.path.endswith("_boxes.txt") for i in train)
    assert {i.path: i.wnid for i in source.items("val", wnids)} == labels["val"]
    assert source.notes == [f"{root / 'test'}: unlabeled test split skipped"]


def test_every_file_keeps_its_label_and_size(tiny, converted):
    root, labels = tiny
    converted, out = converted
    manifest = json.loads((converted / "manifest.json").read_text())
    classes = [c["wnid"] for c in json.loads((converted / "classes.json").read_text())]
    assert classes == class_wnids(CLASSES)
    assert manifest["source"]["layout"] == "tinyimagenet"
    assert manifest["source"]["notes"] == [f"{root / 'test'}: unlabeled test split skipped"]
    broken = root / "train" / class_wnids(CLASSES)[2] / "images" / f"{class_wnids(CLASSES)[2]}_0.JPEG"
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["source_files"] == CLASSES * TRAIN and train["written"] == CLASSES * TRAIN - 1
    assert [r["path"] for r in train["rejected"]] == [str(broken)]
    assert val["source_files"] == val["written"] == CLASSES * VAL and not val["rejected"]
    assert train["reencoded"] == {"kept": CLASSES * TRAIN - 2, "L mode": 1}
    from fastmix.data.manifest import read_sources
    for split in ("train", "val"):
        file_of = {r["key"]: str(root / r["path"]) for r in read_sources(converted, manifest["splits"][split])}
        seen = set()
        for rel in manifest["splits"][split]["shards"]:
            for s in read_samples(converted / rel):
                path = file_of[s.key]
                wnid = labels[split][path]
                assert classes[s.label] == wnid, (split, path)
                source = Path(path).read_bytes()
                if s.jpeg != source:  # only the grayscale file is re-encoded (to RGB, same size)
                    assert Path(path).stem.endswith("_0") or Path(path).stem == "val_0", path
                seen.add(path)
        assert seen == set(labels[split]) - {str(broken)}
    from fastmix.data.beton import read_sizes
    for split in ("train", "val"):
        assert {tuple(s) for s in read_sizes(converted / f"ffcv/{split}.beton").tolist()} == {(64, 64)}
    assert f"note: {root / 'test'}: unlabeled test split skipped" in out
    assert "train: 11 written, 1 rejected, of 12 files" in out and "verify: ok" in out
    assert verify(converted) == []


def test_selection_as_for_imagenet(tiny, tmp_path):
    root, _ = tiny
    w = class_wnids(CLASSES)
    _, wnids, names, plans = plan(small_config(root, tmp_path / "a", num_classes=2))
    assert wnids == w[:2] and {i.wnid for i in plans["val"].items} == set(w[:2])
    (tmp_path / "list.txt").write_text(f"{w[2]}  # the last one\n{w[0]}\n")
    _, wnids, _, plans = plan(small_config(root, tmp_path / "b", class_list=str(tmp_path / "list.txt")))
    assert wnids == [w[0], w[2]] and [i.wnid for i in plans["val"].items] == [w[0]] * VAL + [w[2]] * VAL


@pytest.mark.parametrize("damage, message", [
    ("val_unlabeled", "val_1.JPEG: no val label in"),
    ("extra_class", "class folder not listed in"),
    ("no_images", "images: folder not found"),
    ("bad_annotation", "val_annotations.txt: line 1 is not"),
])
def test_damaged_trees_name_the_file(tiny, tmp_path, damage, message):
    root = tmp_path / "tiny"
    shutil.copytree(tiny[0], root)
    w = class_wnids(CLASSES)
    ann = root / "val" / "val_annotations.txt"
    if damage == "val_unlabeled":
        ann.write_text("".join(line + "\n" for line in ann.read_text().splitlines() if "val_1.JPEG" not in line))
    elif damage == "extra_class":
        (root / "train" / "n09999999" / "images").mkdir(parents=True)
    elif damage == "no_images":
        shutil.rmtree(root / "train" / w[1] / "images")
    elif damage == "bad_annotation":
        ann.write_text("val_0.JPEG 3 4\n")
    with pytest.raises(ConvertError, match=message):
        plan(small_config(root, tmp_path / "out", num_classes=None))
    assert issubclass(TinyImageNetError, Exception)


def test_the_unlabeled_test_split_is_refused_by_name(tiny, tmp_path):
    with pytest.raises(ConvertError, match="labels only for train and val"):
        plan(small_config(tiny[0], tmp_path / "out", splits=("test",), num_classes=None))


def test_identical_files_are_read_once_each(tiny):
    """Every listed train file is a distinct image (no boxes file, no duplicate listing)."""
    source = open_source(tiny[0])
    items = source.items("train", class_wnids(CLASSES))
    assert len({hashlib.sha256(i.read()).hexdigest() for i in items}) == len(items) == CLASSES * TRAIN
