"""One conversion at a time per output folder: OUT/.state/lock, held for the whole run.

The lock is an flock(2) on that file, which names its holder (pid, host, start time). The
operating system drops an flock with the process that holds it, however that process ends
(kill -9 included), so a dead holder's lock is free: the next run takes it over and rewrites the
holder. A live holder's lock refuses a second run in one line that names the holder. Worker
processes close their inherited copy, so the lock lives exactly as long as the converter itself.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK = "lock"
HELD: set[int] = set()  # descriptors of locks this process holds; its forked workers close theirs


class OutputBusy(Exception):
    """Another live conversion holds the output folder's lock (the message names it)."""


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


class OutputLock:
    def __init__(self, state_dir: Path):
        self.dir, self.path, self.fd = Path(state_dir), Path(state_dir) / LOCK, None
        self.made_dir = False

    def acquire(self) -> None:
        self.made_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._undo_dir()
                raise OutputBusy(f"{self.dir.parent}: another conversion is writing here ({_holder(self.path)}; "
                                 f"lock {self.path}); wait for it to finish or stop it") from None
            except OSError as e:  # a filesystem without locks (ENOLCK): go on, and say what is not guarded
                os.close(fd)
                print(f"convert: cannot lock {self.path} ({e.strerror}); a second conversion into this folder "
                      "at the same time would not be refused", file=sys.stderr)
                return
            try:  # a holder that just released unlinks the file: a lock on that old file guards nothing
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self.fd = fd
        HELD.add(fd)

    def _undo_dir(self) -> None:
        if self.made_dir:
            try:
                self.dir.rmdir()
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock: a waiter then sees a new file
        HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None
        self._undo_dir()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *_):
        self.release()
        return False


def close_inherited() -> None:
    """In a forked worker: drop this process's copies of its parent's locks (the parent keeps them)."""
    for fd in list(HELD):
        try:
            os.close(fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
    HELD.clear()
