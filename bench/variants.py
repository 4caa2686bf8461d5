"""Benchmark names beyond the backends, shared by bench.loaders and bench.stages (which must not
import each other): `ffcv@SIDE` / `opencv@SIDE` (the same photos stored at max side SIDE) and the
`:mmap` suffix (normalized batches on fresh mmap'd pages, glibc's defaults: the "before" of
fastmix/devices/allocator.py)."""
from __future__ import annotations

import json
from pathlib import Path

BETON_READERS = ("ffcv", "opencv")  # backends that read the .beton's stored bytes
DEVICE_NAMES = ("dali-cpu", "dali-gpu", "ffcv-fulldecode")  # dali's decode device; ffcv's own decoders

# Not a loader to time: it hands back one batch held in memory, so "its rate" is the loop's own
# overhead (47 million images/s on 2 cores), a number no work allows; the model's rate is the ceiling.
NOT_MEASURED = {"synthetic": "hands back one batch held in memory: its 'rate' is the loop's overhead, "
                             "not a loader's (the model's training rate is the ceiling)"}


def unknown_backends(names: list[str], allowed: tuple[str, ...] | None = None) -> list[str]:
    """`NAME: why` for every benchmark name that cannot be measured (checked before any measurement):
    a backend (loaders.BACKENDS, or `allowed`), a DEVICE_NAMES one, NAME@SIDE on a .beton reader,
    NAME:mmap."""
    import loaders
    known = allowed or tuple(b for b in loaders.BACKENDS if b not in NOT_MEASURED) + DEVICE_NAMES
    out = []
    for given in names:
        name, _, flag = given.partition(":")
        base, _, side = name.partition("@")
        if given in NOT_MEASURED:
            out.append(f"{given}: {NOT_MEASURED[given]}")
        elif base not in known:
            out.append(f"{given}: unknown backend (known: {', '.join(known)})")
        elif flag not in ("", "mmap"):
            out.append(f"{given}: unknown suffix {flag!r} (only ':mmap')")
        elif "@" in name and (base not in BETON_READERS or not side.isdigit() or int(side) < 32):
            out.append(f"{given}: NAME@SIDE takes {' or '.join(BETON_READERS)} and a max side in px >= 32")
    return out


def apply_suffix(backend: str) -> str:
    """`NAME[:mmap]` -> NAME, leaving glibc's allocator defaults for this process when `:mmap` is
    given. Must run in the measuring process, before any batch."""
    name, _, flag = backend.partition(":")
    if flag not in ("", "mmap"):
        raise ValueError(f"backend {backend!r}: unknown suffix {flag!r} (only ':mmap')")
    if flag == "mmap":
        from fastmix.devices.allocator import leave_defaults
        leave_defaults()
    return name


def ffcv_side(backend: str) -> int | None:
    """`ffcv@320` / `opencv@320` -> 320: a .beton stored at that max side (a storage choice)."""
    name = backend.partition(":")[0]
    return int(name.split("@", 1)[1]) if name.startswith(BETON_READERS) and "@" in name else None


def side_variant(data: str, side: int) -> str:
    return f"{data.rstrip('/')}-ffcv{side}"


def prepare_side_variant(data: str, side: int) -> str:
    """The same photos as `data`, as a .beton at max side `side` (same quality), converted once."""
    from fastmix.data.convert import ConvertConfig, convert
    out = side_variant(data, side)
    if not (Path(out) / "manifest.json").exists():
        m = json.loads((Path(data) / "manifest.json").read_text())
        convert(ConvertConfig(source=m["source"]["path"], out=out, num_classes=None, splits=("train",),
                              formats=("ffcv",), max_side=side, quality=m["options"]["quality"], overwrite=True))
    return out
