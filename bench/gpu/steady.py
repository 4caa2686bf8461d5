"""When a child's training steps were steady, seen from the parent: the arrival of its step-log lines.

tools/train.py appends a line to steps.jsonl every `log_every` updates, after reading the device
(so a line arrives when its updates are done). Between two consecutive lines of the same epoch
there are only training updates; a pair that spans epochs holds evaluation and checkpointing,
and the lines before `warmup_share` of the updates hold compilation and autotuning. The parent
notes each line's arrival (time.monotonic, the clock Telemetry samples with) by polling the file.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class StepWatcher:
    def __init__(self, path: Path, interval_s: float = 0.05):
        self.path, self.interval = Path(path), interval_s
        self.lines: list[tuple[float, dict]] = []
        self.records: list[dict] = []  # the same lines without their arrival: grows while the child runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steps-watcher", daemon=True)
        self._offset, self._partial = 0, ""

    def _poll(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open() as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        now = time.monotonic()
        text, self._partial = (self._partial + chunk).rsplit("\n", 1) if "\n" in self._partial + chunk \
            else ("", self._partial + chunk)
        for line in text.splitlines():
            if line.strip():
                self.lines.append((now, json.loads(line)))
                self.records.append(self.lines[-1][1])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> "StepWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def windows(self, warmup_share: float = 0.2) -> list[tuple[float, float]]:
        return steady_windows(self.lines, warmup_share)


def steady_windows(lines: list[tuple[float, dict]], warmup_share: float = 0.2) -> list[tuple[float, float]]:
    """(start, end) of every span between consecutive step lines of one epoch, after the warm-up."""
    if len(lines) < 2:
        return []
    last = max(rec["update"] for _, rec in lines)
    out = []
    for (t0, a), (t1, b) in zip(lines, lines[1:]):
        if a["epoch"] == b["epoch"] and a["update"] >= warmup_share * last:
            out.append((t0, t1))
    return out
