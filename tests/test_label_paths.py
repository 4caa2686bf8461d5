"""Fast checks of every step a label passes through, file by file: which files each layout
lists under which class, the sorted-WNID index a class gets, the keys, the labels in the
shards' index, and the ASCII labels DALI hands back. Seconds, not minutes, so mutation testing
(setup.cfg [mutmut]) can run them for every mutant of these paths."""
from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import small_config
from fastmix.data.convert import ConvertError, _keys, convert, plan
from fastmix.data.shards import read_samples
from fastmix.data.sources import (ArchiveSource, ImageFolderSource, Item, KaggleSource, SourceError,
                                  open_source, select_classes)
from fastmix.data.synth import class_wnids, write_imagefolder
from layouts import to_archives, to_kaggle
from loaders.common import LoaderConfig, parse_ascii_labels
from loaders.shardindex import ShardIndex

CLASSES = 4


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same small tree as ImageFolder, Kaggle and ILSVRC archives; 3 val files per class, so
    two classes have equal val counts (a swap of their labels keeps every count)."""
    root = tmp_path_factory.mktemp("label-paths")
    folder = write_imagefolder(root / "imagefolder", CLASSES, {"train": 3, "val": 3}, seed=5, sizes=[(40, 30)])
    w = class_wnids(CLASSES)
    # names with spaces, a WNID without a name, a blank line
    (folder / "synset_words.txt").write_text(f"{w[0]} tench, Tinca tinca\n{w[1]}\n\n{w[2]} goldfish\n")
    return {"imagefolder": folder, "kaggle": to_kaggle(folder, root / "kaggle"),
            "archives": to_archives(folder, root / "archives")}


def by_content(items: list[Item]) -> dict[str, str]:
    found = {hashlib.sha256(i.read()).hexdigest(): i.wnid for i in items}
    assert len(found) == len(items), "the synthetic files are all distinct"
    return found


@pytest.mark.parametrize("layout", ["imagefolder", "kaggle", "archives"])
def test_each_layout_lists_every_file_under_its_class(sources, layout):
    source = open_source(sources[layout])
    assert source.kind == layout
    wnids, names = source.classes()
    assert wnids == class_wnids(CLASSES)
    expected = {"imagefolder": {wnids[0]: "tench, Tinca tinca", wnids[1]: "", wnids[2]: "goldfish"},
                "kaggle": {w: f"kaggle name {w}" for w in wnids},
                "archives": {w: f"words of {w}" for w in wnids}}[layout]
    assert {w: names[w] for w in expected if w in names} == expected  # the devkit's parent synset is no class
    reference = ImageFolderSource(sources["imagefolder"])
    for split in ("train", "val"):
        for chosen in (wnids, wnids[1:3]):  # all classes, and a subset: no file of another class
            items = source.items(split, chosen)
            assert by_content(items) == by_content(reference.items(split, chosen)), (split, chosen)
            if split == "val":
                assert [i.wnid for i in items] == sorted(i.wnid for i in items), "val in class order"
            if layout != "archives":  # a whole file: read from its path, named by it
                assert all(i.name == i.path and i.offset < 0 for i in items)


def test_archive_members_are_the_files_byte_ranges(sources):
    source = ArchiveSource(sources["archives"])
    for split in ("train", "val"):
        items = source.items(split, class_wnids(CLASSES))
        assert all(i.offset > 0 and i.size > 0 for i in items)
        assert all(i.read()[:2] == b"\xff\xd8" and i.read()[-2:] == b"\xff\xd9" for i in items)


def test_archives_with_an_unpacked_devkit_or_without_one(sources, tmp_path):
    """The devkit as a folder labels val as the .tar.gz does; without a devkit, train still has
    its classes (unnamed) and val says what is missing; without the train tar, the devkit lists
    the classes."""
    import shutil
    import tarfile
    root = tmp_path / "archives"
    shutil.copytree(sources["archives"], root)
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz") as tf:  # unpacked by hand: any Python
        for member in tf.getmembers():
            (root / member.name).parent.mkdir(parents=True, exist_ok=True)
            (root / member.name).write_bytes(tf.extractfile(member).read())
    (root / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    wnids = class_wnids(CLASSES)
    reference = by_content(ImageFolderSource(sources["imagefolder"]).items("val", wnids))
    assert by_content(ArchiveSource(root).items("val", wnids)) == reference
    assert ArchiveSource(root).classes()[1][wnids[0]] == f"words of {wnids[0]}"
    shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    assert ArchiveSource(root).classes() == (wnids, {})
    with pytest.raises(SourceError, match="devkit not found"):
        ArchiveSource(root).items("val", wnids)
    only_val = tmp_path / "only-val"
    only_val.mkdir()
    for name in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        shutil.copy(sources["archives"] / name, only_val / name)
    source = open_source(only_val)
    assert isinstance(source, ArchiveSource) and source.classes()[0] == wnids
    with pytest.raises(SourceError, match="train archive not found"):
        source.items("train", wnids)


def test_archive_val_member_without_a_number_is_an_error(sources, tmp_path):
    import shutil
    from layouts import tar_bytes
    root = tmp_path / "archives"
    shutil.copytree(sources["archives"], root)
    (root / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes([("README.txt", b"notes")]))
    with pytest.raises(SourceError, match=r"ILSVRC2012_img_val.tar:README.txt: no val label in the devkit"):
        ArchiveSource(root).items("val", class_wnids(CLASSES))


def test_a_split_alone_is_recognised(sources, tmp_path):
    import shutil
    for split in ("train", "val"):
        root = tmp_path / f"only-{split}"
        shutil.copytree(sources["imagefolder"] / split, root / split)
        assert isinstance(open_source(root), ImageFolderSource), split
    root = tmp_path / "only-train-tar"
    root.mkdir()
    shutil.copy(sources["archives"] / "ILSVRC2012_img_train.tar", root)
    assert isinstance(open_source(root), ArchiveSource)


def test_layout_detection_and_errors(sources, tmp_path):
    assert isinstance(open_source(sources["kaggle"]), KaggleSource)
    assert isinstance(open_source(sources["archives"], "archives"), ArchiveSource)
    with pytest.raises(SourceError, match="cannot tell the layout"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="unknown layout 'zip'"):
        open_source(sources["kaggle"], "zip")
    with pytest.raises(SourceError, match="source folder not found"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="split folder not found"):
        ImageFolderSource(tmp_path).items("val", [])


def test_missing_parts_are_named(sources, tmp_path):
    import shutil
    import tarfile
    wnids = class_wnids(CLASSES)
    kaggle = tmp_path / "kaggle"
    shutil.copytree(sources["kaggle"], kaggle)
    (kaggle / "LOC_val_solution.csv").unlink()
    with pytest.raises(SourceError, match=r"LOC_val_solution.csv: val labels not found"):
        KaggleSource(kaggle).items("val", wnids)
    shutil.rmtree(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    with pytest.raises(SourceError, match=r"CLS-LOC/val: val folder not found"):
        KaggleSource(kaggle).items("val", wnids)
    shutil.rmtree(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train")
    with pytest.raises(SourceError, match=r"CLS-LOC/train: folder not found"):
        KaggleSource(kaggle).classes()
    unlabelled = to_kaggle(sources["imagefolder"], tmp_path / "unlabelled", drop_label=True)
    with pytest.raises(SourceError, match=r"ILSVRC2012_val_00000002.JPEG: no val label in .*LOC_val_solution.csv"):
        KaggleSource(unlabelled).items("val", wnids)
    archives = tmp_path / "archives"
    shutil.copytree(sources["archives"], archives)
    (archives / "ILSVRC2012_img_val.tar").unlink()
    with pytest.raises(SourceError, match=r"ILSVRC2012_img_val.tar: val archive not found"):
        ArchiveSource(archives).items("val", wnids)
    with tarfile.open(archives / "ILSVRC2012_devkit_t12.tar.gz", "w:gz"):
        pass  # a devkit without its files
    with pytest.raises(SourceError, match=r"devkit_t12.tar.gz: has no data/meta.mat"):
        ArchiveSource(archives).classes()


def test_select_classes(tmp_path):
    wnids = class_wnids(6)
    shuffled = wnids[::-1]
    assert select_classes(shuffled, 3) == wnids[:3]
    assert select_classes(shuffled, None) == wnids
    (tmp_path / "list.txt").write_text(f"# subset\n{wnids[4]}  extra words\n\n{wnids[1]} # c\n{wnids[4]}\n")
    assert select_classes(shuffled, 2, tmp_path / "list.txt") == [wnids[1], wnids[4]]
    with pytest.raises(SourceError, match="only 6"):
        select_classes(wnids, 7)
    (tmp_path / "bad.txt").write_text("dog\n")
    with pytest.raises(SourceError, match=r"not WNIDs: \['dog'\]"):
        select_classes(wnids, 2, tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("n00000001\n")
    with pytest.raises(SourceError, match="1 classes not in the source"):
        select_classes(wnids, 2, tmp_path / "missing.txt")


@pytest.mark.parametrize("layout", ["imagefolder", "kaggle", "archives"])
def test_plan_labels_each_file_with_its_class_index(sources, layout, tmp_path):
    _, wnids, _, plans = plan(small_config(sources[layout], tmp_path, num_classes=3))
    assert wnids == class_wnids(CLASSES)[:3]
    for split, sp in plans.items():
        assert sp.split == split and len(sp.items) == len(sp.keys) == len(sp.labels) == 3 * 3
        assert [wnids[label] for label in sp.labels] == [i.wnid for i in sp.items]
        assert sp.keys == [f"{label:05d}_{i:08d}" for i, label in enumerate(sp.labels)]
        for size in (1, 2, 4, 9, 20):  # shards cover every planned file once, in order
            assert [i for r in sp.shard_ranges(size) for i in r] == list(range(len(sp.items)))
            assert all(len(r) == size for r in sp.shard_ranges(size)[:-1])
    assert plans["val"].labels == sorted(plans["val"].labels)
    train = plans["train"].labels
    assert train != sorted(train), "train is shuffled, so shards mix classes"
    again = plan(small_config(sources[layout], tmp_path, num_classes=3))[3]["train"]
    assert [i.name for i in again.items] == [i.name for i in plans["train"].items], "same seed, same order"
    other = plan(small_config(sources[layout], tmp_path, num_classes=3, shuffle_seed=1))[3]["train"]
    assert [i.name for i in other.items] != [i.name for i in plans["train"].items]


def test_plan_takes_the_class_list_and_the_forced_layout(sources, tmp_path):
    wnids = class_wnids(CLASSES)
    (tmp_path / "list.txt").write_text(f"{wnids[3]}\n{wnids[1]}\n")
    _, chosen, _, plans = plan(small_config(sources["kaggle"], tmp_path, class_list=str(tmp_path / "list.txt")))
    assert chosen == [wnids[1], wnids[3]]
    assert sorted(set(plans["val"].labels)) == [0, 1]
    assert {i.wnid for i in plans["val"].items} == {wnids[1], wnids[3]}
    with pytest.raises(ConvertError, match="the source has only 0"):  # an ImageFolder read as archives
        plan(small_config(sources["imagefolder"], tmp_path, layout="archives"))


def test_plan_refuses_a_class_without_files(sources, tmp_path):
    source = tmp_path / "holes"
    write_imagefolder(source, 2, {"train": 1, "val": 1}, seed=6, sizes=[(16, 16)])
    (source / "val" / class_wnids(2)[1] / f"{class_wnids(2)[1]}_0.JPEG").write_bytes(b"")
    with pytest.raises(ConvertError, match=f"1 selected classes have no non-empty file in val: .*{class_wnids(2)[1]}"):
        plan(small_config(source, tmp_path / "o", num_classes=2))


def test_keys_are_class_and_position_whatever_the_names():
    """The old keys were file stems made unique by a "-N" suffix, which could meet a real stem
    (x, x-2 and another class's x gave x-2 twice): keys now come from the label and position only."""
    assert _keys([3, 0, 3, 12, -1]) == ["00003_00000000", "00000_00000001", "00003_00000002", "00012_00000003",
                                        "-0001_00000004"]


def test_shard_index_labels_are_the_shards(sources, tmp_path):
    out = tmp_path / "out"
    manifest = convert(small_config(sources["kaggle"], out, formats=("wds",), shard_size=4, workers=1))
    samples = [s for rel in manifest["splits"]["val"]["shards"] for s in read_samples(out / rel)]
    index = ShardIndex(LoaderConfig(data=str(out), split="val"))
    assert index.labels.tolist() == [s.label for s in samples] == sorted(s.label for s in samples)
    assert [index.read(i) for i in range(len(index))] == [s.jpeg for s in samples]
    assert sorted(set(index.labels.tolist())) == list(range(CLASSES))


def test_shard_index_refuses_a_sample_without_its_label(sources, tmp_path):
    out = tmp_path / "out"
    convert(small_config(sources["imagefolder"], out, formats=("wds",), splits=("val",), workers=1))
    idx = out / "wds" / "val-00000.idx"
    lines = idx.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:4])  # the first sample's .jpg only
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="val-00000.idx: a sample lacks .jpg or .cls"):
        ShardIndex(LoaderConfig(data=str(out), split="val"))


def test_parse_ascii_labels():
    labels = [0, 7, 10, 42, 100, 999, 12345678]
    rows = torch.zeros(len(labels), 8, dtype=torch.uint8)
    for r, label in enumerate(labels):
        digits = str(label).encode()
        rows[r, :len(digits)] = torch.tensor(list(digits))
    parsed = parse_ascii_labels(rows)
    assert parsed.dtype == torch.int64 and parsed.tolist() == labels


def test_archive_links_are_listed_as_rejected_not_skipped(tmp_path):
    """A symlink member of a class's inner tar used to vanish from the counts; it is now an Item that
    is rejected with its reason (never followed: it could name any file)."""
    import io
    import tarfile
    from fastmix.data.synth import jpeg_bytes, photo
    import numpy as np
    from layouts import tar_bytes
    wnid = class_wnids(1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = jpeg_bytes(photo(np.random.default_rng(0), 0, (32, 24)))
        info = tarfile.TarInfo(f"{wnid}_1.JPEG")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(f"{wnid}_2.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes([(f"{wnid}.tar", buf.getvalue())]))
    items = ArchiveSource(tmp_path).items("train", [wnid])
    assert [(i.name.rsplit(":", 1)[1], i.problem) for i in items] == [
        (f"{wnid}_1.JPEG", ""), (f"{wnid}_2.JPEG", "a link inside the archive (not followed)")]


def test_pil_reads_a_kaggle_conversion_from_its_imagefolder_tree(sources, tmp_path):
    """The sources file holds paths under the Kaggle download's root; the pil backend is given its
    ImageFolder tree (ILSVRC/Data/CLS-LOC), and opens every written file with its label."""
    from loaders import make_loader
    out = tmp_path / "out"
    manifest = convert(small_config(sources["kaggle"], out, formats=("wds",), workers=1))
    tree = sources["kaggle"] / "ILSVRC" / "Data" / "CLS-LOC"
    reference = ImageFolderSource(sources["imagefolder"])
    for split in ("train", "val"):
        loader = make_loader("pil", str(out), split, batch_size=4, image_size=32, imagefolder=str(tree), workers=0)
        labels = torch.cat([y for _, y in loader]).tolist()
        assert len(labels) == manifest["splits"][split]["written"] == len(reference.items(split, class_wnids(CLASSES)))
        assert sorted(labels) == sorted(i // (len(labels) // CLASSES) for i in range(len(labels)))
