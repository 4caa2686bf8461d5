"""Where ImageNet lives on a user's disk, and which files belong to which class.

Three ImageNet layouts are read: an ImageFolder tree, Kaggle's ILSVRC download, and the
original ILSVRC2012 archives (read in place: a member is a byte range of the tar,
so the 148 GB train tar is never unpacked and only the selected classes are opened).
Tiny ImageNet's download (tinyimagenet.py) and CIFAR's (cifar.py) are read as they come.
Every error here happens before any image is converted, and names the file.
"""
from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from functools import cached_property
from pathlib import Path

from .items import WNID_RE, Item, Source, SourceError, entries, labelled_val  # noqa: F401  (convert imports them from here too)

SPLITS = ("train", "val")
NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")  # "<wnid> <words>" per line


def _class_dirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _read_names(root: Path) -> dict[str, str]:
    for fname in NAME_FILES:
        path = root / fname
        if path.is_file():
            pairs = (line.strip().split(" ", 1) for line in path.read_text().splitlines())
            return {p[0]: p[1] if len(p) > 1 else "" for p in pairs if p and p[0]}
    return {}


class ImageFolderSource(Source):
    """`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`."""
    kind = "imagefolder"

    def classes(self):
        return _class_dirs(self.root / "train"), _read_names(self.root)

    def items(self, split, wnids):
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise SourceError(f"{split_dir}: split folder not found")
        return [e.item(w) for w in wnids if (split_dir / w).is_dir()
                for e in entries(split_dir / w, self.real_root)]


class KaggleSource(Source):
    """`ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}` plus `LOC_val_solution.csv`."""
    kind = "kaggle"

    @property
    def data(self) -> Path:
        return self.root / "ILSVRC" / "Data" / "CLS-LOC"

    def classes(self):
        return _class_dirs(self.data / "train"), _read_names(self.root)

    def items(self, split, wnids):
        if split == "train":
            return [e.item(w) for w in wnids if (self.data / "train" / w).is_dir()
                    for e in entries(self.data / "train" / w, self.real_root)]
        val_dir = self.data / "val"
        solution = self.root / "LOC_val_solution.csv"
        if not val_dir.is_dir():
            raise SourceError(f"{val_dir}: val folder not found")
        if not solution.is_file():
            raise SourceError(f"{solution}: val labels not found")
        with open(solution, newline="") as f:
            # PredictionString holds boxes: "<wnid> x0 y0 x1 y1 <wnid> ..."; the first token is the class.
            labels = {row["ImageId"]: row["PredictionString"].split()[0]
                      for row in csv.DictReader(f) if row.get("PredictionString", "").strip()}
        return labelled_val([e.item("") for e in entries(val_dir, self.real_root)],
                            lambda i: labels.get(Path(i.path).name.split(".")[0]), set(wnids), solution)



class ArchiveSource(Source):
    """`ILSVRC2012_img_train.tar` (a tar of `<wnid>.tar`), `ILSVRC2012_img_val.tar` and the devkit."""
    kind = "archives"
    TRAIN, VAL = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
    DEVKIT = "ILSVRC2012_devkit_t12"

    def __init__(self, root):
        super().__init__(root)
        self._train_members: dict[str, tarfile.TarInfo] | None = None

    def _train_index(self) -> dict[str, tarfile.TarInfo]:
        if self._train_members is None:
            path = self.root / self.TRAIN
            if not path.is_file():
                raise SourceError(f"{path}: train archive not found")
            with tarfile.open(path, "r:") as tf:  # reads the 1000 headers only
                self._train_members = {Path(m.name).name[:-4]: m for m in tf
                                       if m.isfile() and m.name.endswith(".tar")}
        return self._train_members

    def _devkit_file(self, name: str) -> bytes:
        folder = self.root / self.DEVKIT / "data"
        if (folder / name).is_file():
            return (folder / name).read_bytes()
        archive = self.root / f"{self.DEVKIT}.tar.gz"
        if not archive.is_file():
            raise SourceError(f"{self.root}: devkit not found (expected {archive.name} or {self.DEVKIT}/data/)")
        with tarfile.open(archive, "r:gz") as tf:
            try:
                return tf.extractfile(f"{self.DEVKIT}/data/{name}").read()
            except KeyError:
                raise SourceError(f"{archive}: has no data/{name}") from None

    @cached_property
    def _meta(self) -> list[tuple[int, str, str]]:
        """(ILSVRC2012_ID, WNID, words) of the 1000 leaf classes, from the devkit's meta.mat."""
        from scipy.io import loadmat
        synsets = loadmat(io.BytesIO(self._devkit_file("meta.mat")), squeeze_me=True)["synsets"]
        return [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]))
                for s in synsets if int(s["num_children"]) == 0]

    def classes(self):
        meta = self._meta if (self.root / f"{self.DEVKIT}.tar.gz").is_file() or \
            (self.root / self.DEVKIT).is_dir() else []
        names = {wnid: words for _, wnid, words in meta}
        wnids = sorted(self._train_index()) if (self.root / self.TRAIN).is_file() else sorted(names)
        return wnids, names

    def items(self, split, wnids):
        return self._train_items(wnids) if split == "train" else self._val_items(wnids)

    def _train_items(self, wnids):
        path, index, out = self.root / self.TRAIN, self._train_index(), []
        with tarfile.open(path, "r:") as outer:
            for wnid in wnids:
                if wnid not in index:
                    continue
                member = index[wnid]
                with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                    files = sorted((m for m in inner if not m.isdir()), key=lambda m: m.name)
                out += [Item(wnid, str(path), f"{path}:{member.name}:{m.name}",
                             member.offset_data + m.offset_data, m.size, problem=_member_problem(m)) for m in files]
        return out

    def _val_items(self, wnids):
        path = self.root / self.VAL
        if not path.is_file():
            raise SourceError(f"{path}: val archive not found")
        gt_name = "ILSVRC2012_validation_ground_truth.txt"
        ground_truth = [int(x) for x in self._devkit_file(gt_name).split()]
        # Ground truth ids follow the devkit's own class order, not sorted WNIDs.
        id_to_wnid = {i: wnid for i, wnid, _ in self._meta}
        def label_of(item):
            number = re.findall(r"\d+", Path(item.name.rsplit(":", 1)[1]).stem)
            n = int(number[-1]) if number else 0
            return id_to_wnid.get(ground_truth[n - 1]) if 1 <= n <= len(ground_truth) else None

        with tarfile.open(path, "r:") as tf:
            found = [Item("", str(path), f"{path}:{m.name}", m.offset_data, m.size, problem=_member_problem(m))
                     for m in tf if not m.isdir()]
        return labelled_val(found, label_of, set(wnids), f"the devkit's {gt_name}")


def _member_problem(m: tarfile.TarInfo) -> str:
    """Why an archive member is not read: links inside an archive are listed, not followed."""
    if m.isfile():
        return ""
    return "a link inside the archive (not followed)" if m.issym() or m.islnk() else "not a file inside the archive"


LAYOUTS = {cls.kind: cls for cls in (ImageFolderSource, KaggleSource, ArchiveSource)}
LAYOUT_NAMES = (*LAYOUTS, "tinyimagenet", "cifar")  # the last two live in their own modules


def detect_layout(root: str | os.PathLike) -> str:
    """The layout of the source at `root`; a SourceError when none fits."""
    root = Path(root)
    from .cifar import is_cifar  # CIFAR's pickled batches: a .tar.gz or its folder
    from .tinyimagenet import is_tinyimagenet
    if is_cifar(root):
        return "cifar"
    if not root.is_dir():
        raise SourceError(f"{root}: source folder not found")
    if (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
        return "kaggle"
    if (root / ArchiveSource.TRAIN).is_file() or (root / ArchiveSource.VAL).is_file():
        return "archives"
    if is_tinyimagenet(root):  # before ImageFolder: it has train/ too
        return "tinyimagenet"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return "imagefolder"
    raise SourceError(f"{root}: cannot tell the layout: expected train/<wnid>/ folders, "
                      f"ILSVRC/Data/CLS-LOC/, {ArchiveSource.TRAIN}, or wnids.txt + train/ (Tiny ImageNet)")


def open_source(root: str | os.PathLike, layout: str = "auto") -> Source:
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUT_NAMES:
        raise SourceError(f"unknown layout {layout!r}; choose from {sorted(LAYOUT_NAMES)}")
    if layout == "cifar":
        from .cifar import CifarSource
        return CifarSource(root)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder not found")
    if layout == "tinyimagenet":
        from .tinyimagenet import TinyImageNetSource
        return TinyImageNetSource(root)
    return LAYOUTS[layout](root)


def select_classes(available: list[str], num_classes: int | None = 100,
                   class_list: str | os.PathLike | None = None) -> list[str]:
    """The selected WNIDs in sorted order; a class's label is its index here.

    `class_list` (one WNID per line, '#' comments allowed) wins over `num_classes`;
    `num_classes=None` takes every class.
    """
    available = sorted(available)
    if class_list is not None:
        try:
            text = Path(class_list).read_text()
        except FileNotFoundError:
            raise SourceError(f"{class_list}: class list not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"{class_list}: cannot read the class list ({getattr(e, 'strerror', None) or e})") from None
        wanted = sorted({tok for line in text.splitlines()
                         for tok in line.split("#")[0].split()[:1]})
        bad = [w for w in wanted if not WNID_RE.match(w)]
        if bad:
            raise SourceError(f"{class_list}: not WNIDs: {bad[:5]}")
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise SourceError(f"{class_list}: {len(missing)} classes not in the source: {missing[:5]}")
        return wanted
    if num_classes is None:
        return available
    if len(available) < num_classes:
        raise SourceError(f"asked for {num_classes} classes but the source has only {len(available)}")
    return available[:num_classes]
