"""A sample of a webdataset shard named so a person can find it: "<shard>.tar: member <name>".

pil-wds, resident and dali (loaders/dali_errors.py) raise CorruptSample
with this name when a JPEG does not decode, instead of the decoder's own words ("cannot identify
image file <_io.BytesIO ...>", "Not a JPEG file: starts with 0x00 0x00"), which name neither.
"""
from __future__ import annotations

from pathlib import Path


class CorruptSample(ValueError):
    """An image that does not decode; the message names its file (and tar member)."""


def member_at(tar: Path, off: int) -> str:
    """The member whose data starts at byte `off` of `tar` as "<shard>: member <name>": the name
    from the tar header just before that data."""
    try:
        with open(tar, "rb") as f:
            f.seek(max(0, off - 512))
            name = f.read(100).split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        name = ""
    return f"{tar}: member {name or f'at byte {off}'}"


def member_of(index, i: int) -> str:
    """Sample i of `index` (a shardindex.ShardIndex; not imported: it imports this) as "<shard>: member <name>"."""
    t, off, _ = index.where[i]
    return member_at(index.tars[t], int(off))


def corrupt(index, i: int, error: BaseException) -> CorruptSample:
    """The one-line error for sample i that `error` (the decoder's) says does not decode."""
    return CorruptSample(f"{member_of(index, i)}: not a readable JPEG ({' '.join(str(error).split())})")
