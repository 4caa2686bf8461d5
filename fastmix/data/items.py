"""What every source layout yields: its files as Items, its errors as SourceError.

Its own module so that the layouts in their own files (cifar.py, tinyimagenet.py) and sources.py,
which picks a layout, import it without importing each other.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

WNID_RE = re.compile(r"^n\d{8}$")


class SourceError(Exception):
    """The source cannot be converted as asked; raised before any work."""


@dataclass(frozen=True)
class Item:
    """One source file: a whole file, or a byte range inside an archive."""
    wnid: str
    path: str
    name: str          # how messages and the manifest name it
    offset: int = -1
    size: int = -1
    # keyword-only, so that subclasses (cifar.CifarItem) keep their positional fields
    problem: str = field(default="", kw_only=True)  # why it is rejected unread (a dangling link, a folder)
    outside: str = field(default="", kw_only=True)  # its real path, when that lies outside the source

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


class Entry(NamedTuple):
    """One name in a folder of images: a file to read, or why it is not one."""
    path: Path
    problem: str = ""
    outside: str = ""

    def item(self, wnid: str) -> Item:
        return Item(wnid, str(self.path), str(self.path), problem=self.problem, outside=self.outside)


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _link_entry(path: Path, real_root: str) -> Entry:
    """A symlink: followed wherever it leads (outside the source too, which `outside` records);
    rejected when it leads nowhere, in a loop, or to something that is not a file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Entry(path, f"dangling symlink (to {os.readlink(path)!r}, which does not exist)")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Entry(path, "symlink loop (it never reaches a file)")
        return Entry(path, f"unreadable symlink ({e.strerror})")
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, "symlink to a folder (class folders are not searched recursively)")
    if not stat.S_ISREG(st.st_mode):
        return Entry(path, "symlink to something that is not a regular file (a device, fifo or socket)")
    real = os.path.realpath(path)
    return Entry(path, outside="" if _inside(real, real_root) else real)


def entries(folder: Path, real_root: str) -> list[Entry]:
    """Every name in `folder`, sorted: regular files (through symlinks too) to read, and the rest
    (folders, dangling or looping links, devices, fifos) with the reason they are not read, so
    that each one is counted and listed among the rejected files rather than skipped unseen.
    `real_root` is the source's real path: a file whose real path leaves it is marked `outside`."""
    folder_real = os.path.realpath(folder)
    folder_outside = not _inside(folder_real, real_root)
    out = []
    with os.scandir(folder) as it:
        for e in sorted(it, key=lambda e: e.name):
            path = Path(folder, e.name)
            if e.is_symlink():
                out.append(_link_entry(path, real_root))
            elif e.is_dir(follow_symlinks=False):
                out.append(Entry(path, "a folder (class folders are not searched recursively)"))
            elif not e.is_file(follow_symlinks=False):
                out.append(Entry(path, "not a regular file (a device, fifo or socket)"))
            else:  # in a class folder that is itself a link out of the source, every file is outside
                out.append(Entry(path, outside=os.path.join(folder_real, e.name) if folder_outside else ""))
    return out


def labelled_val(items: list[Item], label_of, keep: set[str], labels_file) -> list[Item]:
    """A flat val folder's Items (wnid still "") as those of the selected classes, in class order.
    A file without a label stops the run; a name that is no file (a dangling link, a folder) is
    rejected, with its class when it has a label and with none when not, so that it is still listed."""
    out = []
    for item in items:
        wnid = label_of(item)
        if wnid is None and not item.problem:
            raise SourceError(f"{item.name}: no val label in {labels_file}")
        if wnid in keep or (wnid is None and item.problem):
            out.append(replace(item, wnid=wnid or ""))
    return sorted(out, key=lambda i: (i.wnid, i.name))


class Source:
    kind = ""
    notes: tuple[str, ...] = ()  # what the converter skipped on purpose (summary and manifest say so)

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)

    def classes(self) -> tuple[list[str], dict[str, str]]:
        """All WNIDs the source offers (sorted) and their names where known."""
        raise NotImplementedError

    def items(self, split: str, wnids: list[str]) -> list[Item]:
        """The files of `split` that belong to `wnids`, in a stable order."""
        raise NotImplementedError
