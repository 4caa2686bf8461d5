"""What every source layout yields: its files as Items, its errors as SourceError.

Its own module so that the layouts in their own files (cifar.py, tinyimagenet.py) and sources.py,
which picks a layout, import it without importing each other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


class Source:
    kind = ""
    notes: tuple[str, ...] = ()  # what the converter skipped on purpose (summary and manifest say so)

    def __init__(self, root: Path):
        self.root = Path(root)

    def classes(self) -> tuple[list[str], dict[str, str]]:
        """All WNIDs the source offers (sorted) and their names where known."""
        raise NotImplementedError

    def items(self, split: str, wnids: list[str]) -> list[Item]:
        """The files of `split` that belong to `wnids`, in a stable order."""
        raise NotImplementedError
