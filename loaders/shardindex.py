"""Random access to a split's webdataset shards through their DALI indexes (no tar scanning)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fastmix.data.shards import read_index

from .common import LoaderConfig, manifest_split
from .labels import LABEL_DIGITS, check_labels, class_count, not_a_label
from .shardnames import member_at


class ShardIndex:
    """Every sample of a split: (shard, offset, size) of its JPEG, and its label, checked to be one
    of the data's classes (loaders/labels.py)."""

    def __init__(self, cfg: LoaderConfig):
        root = Path(cfg.data)
        self.tars = [root / rel for rel in manifest_split(cfg)["shards"]]
        if not self.tars:
            raise FileNotFoundError(f"{root}: no webdataset shards for {cfg.split!r}")
        where, labels, label_at = [], [], []
        for t, tar in enumerate(self.tars):
            idx = tar.with_suffix(".idx")
            for path in (tar, idx):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: not found")
            size = tar.stat().st_size
            with open(tar, "rb") as f:
                for entry in read_index(idx):
                    if "jpg" not in entry or "cls" not in entry:
                        raise ValueError(f"{idx}: a sample lacks .jpg or .cls")
                    (off, n, _), (coff, cn, _) = entry["jpg"], entry["cls"]
                    if max(off + n, coff + cn) > size:
                        raise ValueError(f"{tar}: shorter than its index says (truncated?)")
                    f.seek(coff)
                    raw = f.read(cn)
                    if not raw.isdigit() or len(raw) > LABEL_DIGITS:  # int() takes " 7", "+7", "7_0": DALI does not
                        raise not_a_label(member_at(tar, coff), raw)
                    labels.append(int(raw))
                    label_at.append(coff)
                    where.append((t, off, n))
        self.where = np.array(where, dtype=np.int64)
        self.labels = np.array(labels, dtype=np.int64)
        check_labels(self.labels, class_count(root),
                     lambda i: member_at(self.tars[self.where[i, 0]], label_at[i]))
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        t, off, n = self.where[i]
        f = self._files.get(t)
        if f is None:  # one handle per shard per process; opened lazily so it survives fork
            f = self._files[t] = open(self.tars[t], "rb")
        f.seek(off)
        return f.read(n)

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}
