"""A small ImageFolder tree with the names and links a careless user or an attacker leaves behind
(issue 26 items 1, 4, 5, 6): keys that collided, names too long for a tar header, tabs and
newlines and undecodable bytes in names, and symlinks that dangle, loop, point at folders, at a
fifo, or out of the tree."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastmix.data.synth import class_wnids, jpeg_bytes, photo

CLASSES = 3
LONG = "a" * 180 + ".JPEG"  # tar (USTAR) names stop at 100 bytes
ODD = ["x.JPEG", "x-2.JPEG", LONG, "tab\there.JPEG", "new\nline.JPEG", "dots.in.name .jpeg",
       os.fsdecode(b"bytes-\xff\xfe.JPEG"), "plain.JPEG"]
# name -> the reason the converter gives (a substring of it)
REJECTED = {"dangling.JPEG": "dangling symlink", "loop.JPEG": "symlink loop", "linkdir.JPEG": "symlink to a folder",
            "subfolder": "a folder", "fifo.JPEG": "not a regular file"}


def write_hostile(root: Path, outside: Path) -> dict[str, int]:
    """The tree under `root` (train and val), and an image in `outside` that a link reaches.
    Returns the number of source files per split (every name in every selected class folder)."""
    rng = np.random.default_rng(7)
    wnids = class_wnids(CLASSES)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "far.JPEG").write_bytes(jpeg_bytes(photo(rng, 0, (40, 30))))
    counts = {}
    for split in ("train", "val"):
        n = 0
        for label, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            # class 0 has x, class 1 x-2 and x: the old keys gave class 1 "x-2" twice, side by side in val
            names = [n for n in ODD if n != "x-2.JPEG"] if label == 0 else ODD if label == 1 else ["x.JPEG", "y.JPEG"]
            for name in names:
                (folder / name).write_bytes(jpeg_bytes(photo(rng, label, (48, 36))))
            n += len(names)
            if label == 0:
                (folder / "dangling.JPEG").symlink_to(folder / "nowhere.JPEG")
                (folder / "loop.JPEG").symlink_to(folder / "loop.JPEG")
                (folder / "linkdir.JPEG").symlink_to(folder.parent)
                (folder / "subfolder").mkdir()
                (folder / "subfolder" / "hidden.JPEG").write_bytes(jpeg_bytes(photo(rng, label, (48, 36))))
                os.mkfifo(folder / "fifo.JPEG")  # reading it would block forever
                (folder / "far.JPEG").symlink_to(outside / "far.JPEG")
                (folder / "near.JPEG").symlink_to(folder / "plain.JPEG")
                n += len(REJECTED) + 2
        counts[split] = n
    return counts
