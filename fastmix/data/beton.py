"""Write FFCV .beton files with ffcv's own DatasetWriter (reading them: betonread.py, which the
loaders import without this writer; its names are re-exported here).

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

from .betonread import StoredImages, require_ffcv, check_beton, manifest_bytes, read_jpegs, read_labels, read_sizes
from .images import open_rgb
from .sources import Item
from .workers import StopChildrenOnError, worker_init

__all__ = ["write_beton", "page_size", "StoredImages", "check_beton", "manifest_bytes", "read_jpegs", "read_labels",
           "read_sizes"]

MIN_PAGE = 1 << 23  # ffcv's default page (8 MiB)


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
    require_ffcv()
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
