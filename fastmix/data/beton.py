"""Write FFCV .beton files with ffcv's own DatasetWriter (reading them: betonread.py, which the
loaders import without this writer; its names are re-exported here).

The writer decodes the *source* file (not the shard's JPEG), so a re-encoded image goes
through one lossy encode, not two. ffcv's workers book file pages in whatever order they
finish, so only `ffcv_workers=1` gives a byte-reproducible file; more workers are faster
and hold the same samples in a different layout.
"""
from __future__ import annotations

import _thread
import multiprocessing
import os
import re
import signal
import threading
import time
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
WAKE = signal.SIGUSR1  # the watchdog's signal to the main thread (SIGINT may be ignored: `convert &`)


class _SourceImages:
    """Indexable (image array, label) pairs that ffcv's writer pulls from.

    ffcv's writer asks for indices in order; with one writer process (reproducible
    layout) decoding would use one core, so the next images are decoded ahead in
    threads (PIL releases the GIL while decoding and resizing).
    """

    def __init__(self, items: list[Item], labels: list[int], max_side: int, seed: int,
                 report_fd: int, threads: int):
        self.items, self.labels, self.max_side, self.seed = items, labels, max_side, seed
        self.report_fd, self.threads = report_fd, max(1, threads)
        self._pool, self._ahead, self._parent = None, {}, os.getpid()

    def __len__(self):
        return len(self.items)

    def _load(self, i):
        try:
            img, _ = open_rgb(self.items[i].read(), self.max_side)
            return np.asarray(img)
        except Exception as e:  # the traceback's last line is what the parent reports
            raise RuntimeError(f"{self.items[i].name}: {e}") from None

    def __getitem__(self, i):
        if self._pool is None:  # created in the writer's (forked) process, not the parent
            if os.getpid() != self._parent:  # a failure's traceback goes to the parent's watchdog, not the screen
                worker_init(self._parent)
                os.dup2(self.report_fd, 2)
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


class _Watchdog(threading.Thread):
    """ffcv's writer waits forever for a writer process that died (of a full disk, of a file that
    no longer decodes): the parent would hang with a zombie child. This thread watches the writer's
    children; when one ends with an error it keeps the last line that child wrote to stderr (a
    pipe) and interrupts the main thread, which then raises that error."""

    def __init__(self, read_fd: int, stop: threading.Event, signalled: bool):
        super().__init__(daemon=True, name="fastmix-beton-watchdog")
        self.signalled = signalled
        self.read_fd, self.stop, self.before = read_fd, stop, {p.pid for p in multiprocessing.active_children()}
        self.children: dict[int, multiprocessing.Process] = {}
        self.text, self.failure = b"", None
        os.set_blocking(read_fd, False)

    def _drain(self) -> None:
        try:
            while chunk := os.read(self.read_fd, 1 << 16):
                self.text = (self.text + chunk)[-(1 << 16):]
        except BlockingIOError:
            pass

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.children.update((p.pid, p) for p in multiprocessing.active_children() if p.pid not in self.before)
            self._drain()
            dead = [p for p in self.children.values() if p.exitcode not in (None, 0)]
            if dead and not self.stop.is_set():
                time.sleep(0.1)  # the rest of its traceback
                self._drain()
                lines = [line for line in self.text.decode(errors="replace").splitlines() if line.strip()]
                self.failure = lines[-1] if lines else f"ffcv writer process exited with code {dead[0].exitcode}"
                if self.signalled:  # a real signal: it also ends a blocking read (the writer's queue.get)
                    signal.pthread_kill(threading.main_thread().ident, WAKE)
                else:
                    _thread.interrupt_main()
                return


class _WriterDied(Exception):
    """Raised in the main thread by the watchdog's signal."""


def _writer_died(signum, frame):
    raise _WriterDied()


def _on_wake(handler):
    """Install `handler` for WAKE; the previous handler, or None off the main thread (no signals there)."""
    try:
        return signal.signal(WAKE, handler)
    except ValueError:
        return None


def _writer_error(path: Path, line: str) -> Exception:
    """The child's last line as an exception: an OSError keeps its errno (a full disk stays one)."""
    found = re.match(r"\w+: \[Errno (\d+)\] (.+?)(?:: '.*')?$", line)
    if found:
        return OSError(int(found.group(1)), found.group(2))
    return RuntimeError(f"{path}: ffcv writer failed: {line.partition(': ')[2] or line}")


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
    read_fd, write_fd = os.pipe()
    images = _SourceImages(items, labels, cfg.max_side, cfg.shuffle_seed, write_fd,
                           threads=cfg.workers // max(1, cfg.ffcv_workers))
    stop = threading.Event()
    previous = _on_wake(_writer_died)
    watchdog = _Watchdog(read_fd, stop, signalled=previous is not None)
    watchdog.start()
    try:
        with StopChildrenOnError():
            writer.from_indexed_dataset(images, chunksize=64)
        stop.set()
    except BaseException as e:
        stop.set()
        _close_bars()
        _discard(writer, tmp)
        if isinstance(e, (_WriterDied, KeyboardInterrupt)) and watchdog.failure:
            raise _writer_error(path, watchdog.failure) from None
        raise
    finally:
        watchdog.join()
        if previous is not None:
            signal.signal(WAKE, previous)
        os.close(read_fd)
        os.close(write_fd)
    os.replace(tmp, path)


def _close_bars() -> None:
    """End ffcv's progress bar, left open by the interruption, with its newline: the error line that
    follows starts a line of its own."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _discard(writer, tmp: Path) -> None:
    """After a failure: free the disk space and the shared memory the writer took (ffcv releases
    them only on success; the shared memory would outlive the process)."""
    tmp.unlink(missing_ok=True)
    shm = getattr(writer, "metadata_sm", None)
    if hasattr(shm, "unlink"):
        shm.close()
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
