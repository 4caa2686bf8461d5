"""Read FFCV .beton files: checked opening (check_beton), labels, sizes and stored JPEGs, and
zero-copy access to the stored images (StoredImages). The loaders and verify import this module
only, not the converter's writer (beton.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def require_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as e:
        raise ImportError("the FFCV output needs the `ffcv` package: pip install 'fastmix[ffcv]' "
                          "(after apt-get install build-essential pkg-config libopencv-dev "
                          "libturbojpeg0-dev)") from e



def manifest_bytes(path: Path) -> int | None:
    """The size manifest.json recorded for a .beton at OUT/ffcv/<name>; None if it lists none."""
    import json
    path = Path(path)
    manifest = path.parent.parent / "manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    entry = files.get(f"{path.parent.name}/{path.name}") if isinstance(files, dict) else None
    return entry.get("bytes") if isinstance(entry, dict) else None


def check_beton(path: Path, expected_bytes: int | None = None):
    """Open a .beton, checking what ffcv's Reader does not: a file cut short still opens, with
    an allocation table missing its last entries (its samples would read other bytes or crash a
    worker). Checks the size against `expected_bytes` (default: the manifest's, when it lists
    the file), the table's length against the header, and that every stored sample has its
    entry within the data region. Returns the Reader; a ValueError names the file and the fault."""
    require_ffcv()
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, HeaderType
    path = Path(path)
    size = path.stat().st_size
    expected = manifest_bytes(path) if expected_bytes is None else expected_bytes
    if expected is not None and size != expected:
        raise ValueError(f"{path}: {size} bytes, the manifest says {expected} (cut short or changed)")
    if size < HeaderType.itemsize:
        raise ValueError(f"{path}: not a readable .beton ({size} bytes, shorter than its header)")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    table_at = int(header["alloc_table_ptr"])
    if table_at > size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize:
        raise ValueError(f"{path}: truncated .beton (its header puts the allocation table at byte "
                         f"{table_at}; the file has {size} bytes, not that plus whole entries)")
    try:
        reader = Reader(str(path))
    except Exception as e:  # ffcv raises bare errors on foreign or cut files
        raise ValueError(f"{path}: not a readable .beton ({type(e).__name__}: {e})") from e
    table = reader.alloc_table
    if len(table) and int((table["ptr"] + table["size"]).max()) > table_at:
        raise ValueError(f"{path}: damaged .beton (an allocation ends past the data region)")
    for name in reader.metadata.dtype.names:
        field = reader.metadata[name]
        if field.dtype.names and "data_ptr" in field.dtype.names:
            missing = np.flatnonzero(~np.isin(field["data_ptr"], table["ptr"]))
            if len(missing):
                raise ValueError(f"{path}: truncated .beton: {len(missing)} of {reader.num_samples} "
                                 f"samples have no allocation entry (first: sample {missing[0]})")
    return reader


def read_labels(path: Path) -> np.ndarray:
    """The label of every sample, in file order, straight from the .beton's metadata table."""
    return np.asarray(check_beton(path).metadata["f1"]).astype(np.int64)


def read_sizes(path: Path) -> np.ndarray:
    """(width, height) of every sample's image, in file order, from the metadata table (no decode)."""
    image = check_beton(path).metadata["f0"]
    return np.stack([image["width"], image["height"]], axis=1).astype(np.int64)


def read_jpegs(path: Path) -> list[bytes | None]:
    """Every sample's stored JPEG, in file order (None where write_mode stored it raw)."""
    store = StoredImages(path)
    return [store.encoded(i).tobytes() if store.is_jpeg[i] else None for i in range(len(store))]


class StoredImages:
    """Zero-copy access to a .beton's stored images: `encoded(i)` is sample i's bytes (a JPEG,
    or raw RGB where `is_jpeg[i]` is False) as a view into the page-cached file."""

    def __init__(self, path: Path):
        reader = check_beton(path)
        image = reader.metadata["f0"]
        self.labels = np.asarray(reader.metadata["f1"]).astype(np.int64)
        self.heights = image["height"].astype(np.int64)
        self.widths = image["width"].astype(np.int64)
        self.is_jpeg = image["mode"] == 0  # ffcv's IMAGE_MODES: jpg 0, raw 1
        size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
        self.offsets = image["data_ptr"].astype(np.int64)
        self.sizes = np.array([size_at[p] for p in self.offsets.tolist()], np.int64)
        self._file = np.memmap(path, np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.labels)

    def encoded(self, i: int) -> np.ndarray:
        p = self.offsets[i]
        return self._file[p:p + self.sizes[i]]
