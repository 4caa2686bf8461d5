"""Every process started under one tag, found through /proc wherever it was re-parented, and stopped.

The suite starts each child in its own session, so that stopping a phase can kill the child's
whole group; that also takes the child out of reach of a kill of the suite's group, and out of the
suite's process tree once the suite is gone (the child is re-parented to init). A tag in the
environment (VAR=TAG, set where the process is started), inherited by every descendant, finds
them all; `stop_tagged` ends them.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path


def new_tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def tagged(var: str, tag: str, prefix: bool = False) -> list[int]:
    """The live processes (zombies have no environment) whose environment holds var=tag (var=tag...
    with `prefix`), this one excepted."""
    needle = f"{var}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(v == needle or (prefix and v.startswith(needle)) for v in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tagged(var: str, tag: str, grace_s: float = 0.0) -> list[int]:
    """SIGTERM every tagged process (none when grace_s is 0), SIGKILL whichever is left after grace_s;
    returns the pids that were still there."""
    pids = tagged(var, tag)
    if pids and grace_s > 0:
        signal_all(pids, signal.SIGTERM)
        end = time.monotonic() + grace_s
        while (left := tagged(var, tag)) and time.monotonic() < end:
            time.sleep(0.1)
        pids = left
    signal_all(pids, signal.SIGKILL)
    return pids
