"""Tiny ImageNet as downloaded (the public 200-class zip, or any subset laid out the same way).

    wnids.txt                          the classes, one WNID a line
    words.txt                          "<wnid>\\t<names>" for all of WordNet (82k lines)
    train/<wnid>/images/<wnid>_N.JPEG  train images, labelled by their folder
    train/<wnid>/<wnid>_boxes.txt      bounding boxes: not images, not rejects, not read
    val/images/val_N.JPEG              val images, flat
    val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per val image
    test/images/test_N.JPEG            unlabeled: skipped, with a note in the summary and manifest

Images are 64x64 and stay so: the converter only ever shrinks to `--max-side`.
"""
from __future__ import annotations

from pathlib import Path

from .items import WNID_RE, Source, SourceError, entries, labelled_val

BOXES_SUFFIX = "_boxes.txt"


class TinyImageNetError(SourceError):
    """A Tiny ImageNet tree that cannot be read as one (the message names the file)."""


def is_tinyimagenet(root: Path) -> bool:
    return (root / "wnids.txt").is_file() and (root / "train").is_dir()


class TinyImageNetSource(Source):
    kind = "tinyimagenet"

    @property
    def notes(self) -> list[str]:
        test = self.root / "test"
        if test.is_dir():
            return [f"{test}: unlabeled test split skipped"]
        return []

    def _wnids(self) -> list[str]:
        path = self.root / "wnids.txt"
        if not path.is_file():  # a hand-made subset may lack it: the train folders are the classes
            return sorted(p.name for p in (self.root / "train").iterdir()
                          if (p / "images").is_dir()) if (self.root / "train").is_dir() else []
        wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        bad = [w for w in wnids if not WNID_RE.match(w)]
        if bad:
            raise TinyImageNetError(f"{path}: not WNIDs: {bad[:5]}")
        return sorted(set(wnids))

    def classes(self):
        train = self.root / "train"
        if not train.is_dir():
            raise TinyImageNetError(f"{train}: folder not found")
        wnids = self._wnids()
        if not wnids:
            raise TinyImageNetError(f"{self.root}: no classes (no wnids.txt and no train/<wnid>/images/)")
        missing = [w for w in wnids if not (train / w / "images").is_dir()]
        if missing:
            raise TinyImageNetError(f"{train / missing[0] / 'images'}: folder not found "
                                    f"({len(missing)} classes of wnids.txt have none)")
        extra = sorted(set(p.name for p in train.iterdir() if p.is_dir()) - set(wnids))
        if extra:
            raise TinyImageNetError(f"{train / extra[0]}: class folder not listed in "
                                    f"{self.root / 'wnids.txt'} ({len(extra)} such folders)")
        return wnids, self._names(set(wnids))

    def _names(self, wnids: set[str]) -> dict[str, str]:
        path = self.root / "words.txt"
        if not path.is_file():
            return {}
        names = {}
        with open(path) as f:
            for line in f:
                wnid, _, words = line.rstrip("\n").partition("\t")
                if wnid in wnids:
                    names[wnid] = words.strip()
        return names

    def items(self, split, wnids):
        if split == "train":
            return [e.item(w) for w in wnids
                    for e in entries(self.root / "train" / w / "images", self.real_root)
                    if not e.path.name.endswith(BOXES_SUFFIX)]
        if split == "val":
            return self._val_items(wnids)
        raise TinyImageNetError(f"{self.root / split}: Tiny ImageNet has labels only for train and val")

    def _val_items(self, wnids):
        images, labels_file = self.root / "val" / "images", self.root / "val" / "val_annotations.txt"
        if not images.is_dir():
            raise TinyImageNetError(f"{images}: val folder not found")
        if not labels_file.is_file():
            raise TinyImageNetError(f"{labels_file}: val labels not found")
        labels = {}
        for n, line in enumerate(labels_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not WNID_RE.match(fields[1].strip()):
                raise TinyImageNetError(f"{labels_file}: line {n} is not '<file>\\t<wnid>\\t<box>'")
            labels[fields[0].strip()] = fields[1].strip()
        try:
            return labelled_val([e.item("") for e in entries(images, self.real_root)],
                                lambda i: labels.get(Path(i.path).name), set(wnids), labels_file)
        except SourceError as e:
            raise TinyImageNetError(str(e)) from None
