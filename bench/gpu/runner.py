"""Budget-aware phases: run in order of value, skip what would not fit, keep what was measured.

Before each phase the clock is checked against its estimate; a phase that would overrun the
budget is recorded as skipped with the reason. A phase that raises is recorded with its
traceback and the run goes on. `gpu.json` is rewritten after every phase (atomically), so an
interrupted run keeps everything it measured.
"""
from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable            # run(ctx) -> dict with a "headline" of positive measured numbers
    estimate_s: float        # planned seconds on an H100 (the plan in README)
    smoke_estimate_s: float  # planned seconds for --smoke on a 2-core CPU
    what: str                # one line for the summary


class Suite:
    def __init__(self, phases: list[Phase], ctx, out: Path, budget_s: float, smoke: bool):
        self.phases, self.ctx, self.out = phases, ctx, Path(out)
        self.budget_s, self.smoke = budget_s, smoke
        self.record = {"suite": {"budget_s": budget_s, "smoke": smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                       "plan": [{"phase": p.name, "estimate_s": self.estimate(p), "what": p.what} for p in phases],
                       "phases": {}}

    def estimate(self, phase: Phase) -> float:
        return phase.smoke_estimate_s if self.smoke else phase.estimate_s

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.ctx.results = self.record["phases"]
        for phase in self.phases:
            left = self.budget_s - (time.perf_counter() - start)
            if self.estimate(phase) > left:
                self._save(phase.name, {"status": "skipped", "estimate_s": self.estimate(phase),
                                        "reason": f"would not fit: planned {self.estimate(phase):.0f} s, "
                                                  f"{max(0.0, left):.0f} s of the {self.budget_s:.0f} s budget left"})
                continue
            t0 = time.perf_counter()
            with tqdm(total=1, desc=f"{phase.name:<12}", bar_format="{desc} {elapsed} {postfix}", disable=None) as bar:
                try:
                    result = phase.run(self.ctx)
                    entry = ({"status": "skipped", "reason": result["skipped"]} if "skipped" in result
                             else {"status": "ok", "result": result})
                except Exception as e:  # recorded, and the next phase still runs
                    entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                bar.set_postfix_str(entry["status"])
                bar.update()
            entry.update(duration_s=round(time.perf_counter() - t0, 2), estimate_s=self.estimate(phase))
            self._save(phase.name, entry)
        self.record["suite"]["total_s"] = round(time.perf_counter() - start, 2)
        self._write()
        return self.record

    def _save(self, name: str, entry: dict) -> None:
        self.record["phases"][name] = entry
        self._write()

    def _write(self) -> None:
        path = self.out / "gpu.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def headline_problems(record: dict) -> list[str]:
    """What is wrong with a suite record: a phase that is neither measured (a non-empty headline of
    positive, finite numbers) nor skipped with a reason nor an error with its traceback."""
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
        elif status == "skipped":
            if not entry.get("reason"):
                problems.append(f"{name}: skipped without a reason")
        elif status == "error":
            if "Traceback" not in entry.get("traceback", ""):
                problems.append(f"{name}: error without a traceback")
        else:
            problems.append(f"{name}: unknown status {status!r}")
    return problems
