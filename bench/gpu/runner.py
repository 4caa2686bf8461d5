"""Budget-aware phases: run in order of value, skip what would not fit, stop what overruns.

Before each phase the clock is checked against its planned time; a phase that would not fit what
is left of the budget is recorded as skipped with the reason. A phase runs under a deadline (the
budget's end, less a reserve for writing the outputs): past it, SIGALRM stops the phase, which is
recorded as `stopped at deadline` with whatever it had measured (`ctx.partial`). SIGTERM and
SIGINT stop the running phase the same way and end the run. A phase that raises is recorded with
its traceback and the run goes on. The outputs (`write(record)`) are rewritten after every phase
and once more on a stop, so an interrupted run keeps everything it measured.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STOPPED_AT_DEADLINE = "stopped at deadline"


class Stop(BaseException):
    """Raised in the main thread by a signal. A BaseException, so a phase's own `except Exception`
    (one failed cell, one failed loader) does not swallow it."""

    def __init__(self, why: str, signum: int | None = None):
        super().__init__(why)
        self.why, self.signum = why, signum


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable            # run(ctx) -> dict with a "headline" of positive measured numbers
    estimate_s: float        # planned seconds on an H200 (the plan in docs/gpu.md)
    smoke_estimate_s: float  # planned seconds for --smoke on a 2-core CPU
    what: str                # one line for the summary
    children: bool = False   # runs child processes: the parent frees its CUDA memory first


def free_device_memory() -> None:
    """Hand the parent's cached CUDA blocks back before a child process needs the GPU."""
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


RETRY_S = 0.5  # a dropped Stop is raised again this soon


@contextmanager
def stop_signals():
    """SIGALRM (the deadline), SIGTERM and SIGINT raise Stop in the main thread while entered.

    Python prints and drops an exception raised while the main thread runs a finalizer (a
    `__del__`, a weakref callback): a Stop raised there is lost and the phase runs on. So every
    Stop re-arms the timer, and SIGALRM raises it again every RETRY_S until the phase catches it
    and disarms the timer. The signal's number is kept in the list this yields."""
    received: list[int] = []

    def again(why: str, signum: int | None):  # whoever catches the Stop calls disarm()
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        raise Stop(why, signum)

    def deadline(signum, frame):
        if received:
            again(f"stopped by {signal.Signals(received[0]).name}", received[0])
        again(STOPPED_AT_DEADLINE, None)

    def interrupted(signum, frame):
        received[:] = received or [signum]
        again(f"stopped by {signal.Signals(received[0]).name}", received[0])
    old = {s: signal.signal(s, h) for s, h in ((signal.SIGALRM, deadline), (signal.SIGTERM, interrupted),
                                               (signal.SIGINT, interrupted))}
    try:
        yield received
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in old.items():
            signal.signal(s, h)


def disarm() -> None:
    """A Stop was caught: no retry may fire into what the catcher does next (killing a child, saving)."""
    signal.setitimer(signal.ITIMER_REAL, 0)


STOPS = {signal.SIGALRM, signal.SIGTERM, signal.SIGINT}


class Suite:
    def __init__(self, phases: list[Phase], ctx, out: Path, budget_s: float, smoke: bool,
                 write: Callable[[dict], None] | None = None, reserve_s: float | None = None):
        self.phases, self.ctx, self.out = phases, ctx, Path(out)
        self.budget_s, self.smoke = budget_s, smoke
        self.write = write or self._write_json
        # time kept back at the end for summary.md and the charts
        self.reserve_s = reserve_s if reserve_s is not None else min(10.0, 0.05 * budget_s)
        self.signum: int | None = None
        self.record = {"suite": {"budget_s": budget_s, "smoke": smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                       "plan": [{"phase": p.name, "estimate_s": self.estimate(p), "what": p.what} for p in phases],
                       "phases": {}}

    def estimate(self, phase: Phase) -> float:
        return phase.smoke_estimate_s if self.smoke else phase.estimate_s

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        end = start + self.budget_s - self.reserve_s
        self.ctx.results = self.record["phases"]
        with stop_signals() as received:
            for phase in self.phases:
                try:
                    self._run_phase(phase, end)
                except Stop as s:  # a signal between phases (while saving): the run still ends well
                    disarm()
                    self.signum = s.signum if s.signum else self.signum
                self.signum = self.signum or (received[0] if received else None)  # also a Stop that was dropped
                if self.signum:
                    break
            disarm()
            held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # the last save is not cut short
        try:
            self.record["suite"]["total_s"] = round(time.perf_counter() - start, 2)
            if self.signum:
                self.record["suite"]["stopped_by"] = signal.Signals(self.signum).name
            self._save_all()
        finally:  # a signal that came meanwhile now meets the handlers from before the suite
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return self.record

    def _run_phase(self, phase: Phase, end: float) -> None:
        left = end - time.perf_counter()
        if self.estimate(phase) > left:
            self._save(phase.name, {"status": "skipped", "estimate_s": self.estimate(phase),
                                    "reason": f"would not fit: planned {self.estimate(phase):.0f} s, "
                                              f"{max(0.0, left):.0f} s of the {self.budget_s:.0f} s budget left"})
            return
        if phase.children:
            free_device_memory()
        t0 = time.perf_counter()
        self.ctx.deadline, self.ctx.partial = time.monotonic() + (end - t0), {}
        print(f"{phase.name:<12} planned {self.estimate(phase):.0f} s, limit {end - t0:.0f} s", flush=True)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, end - time.perf_counter()))
            result = phase.run(self.ctx)
            signal.setitimer(signal.ITIMER_REAL, 0)
            entry = ({"status": "skipped", "reason": result["skipped"]} if "skipped" in result
                     else {"status": "ok", "result": result})
        except Stop as s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.signum = s.signum
            entry = {"status": "stopped", "reason": f"{s.why} after {time.perf_counter() - t0:.0f} s "
                                                    f"(limit {end - t0:.0f} s)", "partial": self.ctx.partial}
        except Exception as e:  # recorded, and the next phase still runs
            signal.setitimer(signal.ITIMER_REAL, 0)
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        entry.update(duration_s=round(time.perf_counter() - t0, 2), estimate_s=self.estimate(phase))
        print(f"{phase.name:<12} {entry['status']} in {entry['duration_s']:.1f} s", flush=True)
        self._save(phase.name, entry)

    def _save(self, name: str, entry: dict) -> None:
        self.record["phases"][name] = entry
        self._save_all()

    def _save_all(self) -> None:
        self.write(self.record)

    def _write_json(self, record: dict) -> None:
        write_json(self.out / "gpu.json", record)


def write_json(path: Path, obj) -> None:
    """Atomically: a reader (or a kill) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def headline_problems(record: dict) -> list[str]:
    """What is wrong with a suite record: a phase that is neither measured (a non-empty headline of
    positive, finite numbers) nor skipped or stopped with a reason nor an error with its traceback."""
    problems = []
    for name, entry in record["phases"].items():
        status = entry.get("status")
        if status == "ok":
            head = entry["result"].get("headline") or {}
            if not head:
                problems.append(f"{name}: no headline numbers")
            for key, value in head.items():
                if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                    problems.append(f"{name}: headline {key} = {value!r} is not a positive finite number")
        elif status in ("skipped", "stopped"):
            if not entry.get("reason"):
                problems.append(f"{name}: {status} without a reason")
            if status == "stopped" and not isinstance(entry.get("partial"), dict):
                problems.append(f"{name}: stopped without its partial record")
        elif status == "error":
            if "Traceback" not in entry.get("traceback", ""):
                problems.append(f"{name}: error without a traceback")
        else:
            problems.append(f"{name}: unknown status {status!r}")
    return problems
