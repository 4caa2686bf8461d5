"""Worker processes of a conversion: they leave with their parent, and leave Ctrl-C to it.

A worker blocked on its task pipe never sees the parent die (it holds the pipe's other end
itself), so after a `kill -9` of the converter it would wait forever; each one watches its
parent instead. Ctrl-C reaches the whole process group: the workers ignore it, so the parent
alone prints its one line instead of a traceback per worker.
"""
from __future__ import annotations

import multiprocessing
import os
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
