"""Worker processes of a conversion: they leave with their parent, and leave Ctrl-C to it.

A worker blocked on its task pipe never sees the parent die (it holds the pipe's other end
itself), so after a `kill -9` of the converter it would wait forever; each one watches its
parent instead. Ctrl-C reaches the whole process group: the workers ignore it, so the parent
alone prints its one line instead of a traceback per worker.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
import signal
import threading
import time

POLL_S = 0.2


def exit_with_parent(parent: int) -> None:
    """In a child of `parent`: a thread that ends this process once `parent` is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="fastmix-parent-watch").start()


def worker_init(parent: int) -> None:
    """Initializer of a conversion worker process (no-op in the parent itself)."""
    if os.getpid() == parent:
        return
    from .outlock import close_inherited
    close_inherited()  # the output lock dies with the converter, not with its last worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)


class StopChildrenOnError:
    """`with` block that terminates the child processes started inside it if it fails (ffcv's
    writer joins its processes only on success; the interpreter would wait for them at exit)."""

    def __enter__(self):
        self.before = {p.pid for p in multiprocessing.active_children()}
        return self

    def __exit__(self, kind, *_):
        if kind is not None:
            for p in multiprocessing.active_children():
                if p.pid not in self.before:
                    p.terminate()
                    p.join(5)
        return False


def bounded_map(fn, args, workers: int):
    """Ordered map over a process pool with at most ~4 tasks per worker in flight (bounded memory)."""
    if workers <= 1:
        yield from map(fn, args)
        return
    window = 4 * workers
    pool = ProcessPoolExecutor(max_workers=workers, initializer=worker_init, initargs=(os.getpid(),))
    try:
        pending: deque = deque()
        for a in args:
            pending.append(pool.submit(fn, a))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when interrupted: drop what has not started
        pool.shutdown(wait=True, cancel_futures=True)
