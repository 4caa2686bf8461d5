"""Write and read FFCV .beton files with ffcv's own DatasetWriter / Reader.

The writer decodes the *source* file (not the shard's JPEG), so a re-encoded image goes
through one lossy encode, not two. ffcv's workers book file pages in whatever order they
finish, so only `ffcv_workers=1` gives a byte-reproducible file; more workers are faster
and hold the same samples in a different layout.
"""
from __future__ import annotations

import _thread
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .images import open_rgb
from .sources import Item
from .workers import StopChildrenOnError, worker_init

MIN_PAGE = 1 << 23  # ffcv's default page (8 MiB)


def _require_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as e:
        raise ImportError("the FFCV output needs the `ffcv` package: pip install 'fastmix[ffcv]' "
                          "(after apt-get install build-essential pkg-config libopencv-dev "
                          "libturbojpeg0-dev)") from e


class _SourceImages:
    """Indexable (image array, label) pairs that ffcv's writer pulls from.

    ffcv's writer asks for indices in order; with one writer process (reproducible
    layout) decoding would use one core, so the next images are decoded ahead in
    threads (PIL releases the GIL while decoding and resizing).
    """

    def __init__(self, items: list[Item], labels: list[int], max_side: int, seed: int,
                 error_path: Path, threads: int):
        self.items, self.labels, self.max_side, self.seed = items, labels, max_side, seed
        self.error_path, self.threads = error_path, max(1, threads)
        self._pool, self._ahead, self._parent = None, {}, os.getpid()

    def __len__(self):
        return len(self.items)

    def _load(self, i):
        try:
            img, _ = open_rgb(self.items[i].read(), self.max_side)
            return np.asarray(img)
        except BaseException as e:
            # ffcv's writer waits forever for a worker that died; leave word for the watchdog.
            self.error_path.write_text(f"{self.items[i].name}: {e}")
            raise

    def __getitem__(self, i):
        if self._pool is None:  # created in the writer's (forked) process, not the parent
            worker_init(self._parent)
            self._pool = ThreadPoolExecutor(self.threads)
        window = range(i, min(i + 2 * self.threads, len(self.items)))
        # With several ffcv writer processes a chunk's successor belongs to another process:
        # drop decodes ahead that this one will never be asked for (bounded memory).
        for j in [j for j in self._ahead if j not in window]:
            self._ahead.pop(j).cancel()
        for j in window:
            if j not in self._ahead:
                self._ahead[j] = self._pool.submit(self._load, j)
        image = self._ahead.pop(i).result()
        # write_mode=proportion draws np.random per image; seeding per index makes the
        # jpg/raw choice independent of which worker encodes which image.
        np.random.seed((self.seed * 1_000_003 + i) % 2**32)
        return image, self.labels[i]


def _watchdog(error_path: Path, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        if error_path.exists():
            _thread.interrupt_main()
            return


def page_size(max_side: int) -> int:
    """A page must hold the largest raw image (ffcv fails on a sample larger than a page)."""
    need = max_side * max_side * 3 + 4096
    return max(MIN_PAGE, 1 << (need - 1).bit_length())


def write_beton(path: Path, items: list[Item], labels: list[int], cfg) -> None:
    _require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    tmp = Path(f"{path}.tmp")
    fields = {
        "image": RGBImageField(write_mode=cfg.write_mode, max_resolution=cfg.max_side,
                               jpeg_quality=cfg.quality,
                               compress_probability=cfg.compress_probability),
        "label": IntField(),
    }
    writer = DatasetWriter(str(tmp), fields, page_size=page_size(cfg.max_side),
                           num_workers=cfg.ffcv_workers)
    error_path = Path(f"{path}.error.tmp")
    error_path.unlink(missing_ok=True)
    images = _SourceImages(items, labels, cfg.max_side, cfg.shuffle_seed, error_path,
                           threads=cfg.workers // max(1, cfg.ffcv_workers))
    stop = threading.Event()
    threading.Thread(target=_watchdog, args=(error_path, stop), daemon=True).start()
    try:
        with StopChildrenOnError():
            writer.from_indexed_dataset(images, chunksize=64)
    except KeyboardInterrupt:
        if error_path.exists():
            raise RuntimeError(f"{path}: ffcv writer failed on {error_path.read_text()}") from None
        raise
    finally:
        stop.set()
    os.replace(tmp, path)


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
    _require_ffcv()
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
