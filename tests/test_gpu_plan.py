"""The GPU suite's plan against its budget (issue 27), simulated through the real Suite on a clock
that each phase advances by its planned seconds (times an overrun) instead of running: every phase
runs when each meets its estimate; at +20 % only the last may be cut, and what ran is recorded."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bench.gpu import plan, runner
from bench.gpu.runner import Phase, Suite, headline_problems


class Clock:
    """time for bench.gpu.runner: stands still until a phase advances it."""

    def __init__(self):
        self.now = 1000.0
        self.strftime = time.strftime

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter


def simulate(monkeypatch, tmp_path, overrun: float, smoke: bool = False) -> dict:
    clock = Clock()
    monkeypatch.setattr(runner, "time", clock)

    def taking(seconds):
        def run(ctx):
            clock.now += seconds
            return {"headline": {"seconds": seconds}}
        return run
    phases = [Phase(name, taking(overrun * est), est, est, "") for name, est in plan.estimates(smoke)]
    budget = plan.SMOKE_BUDGET_S if smoke else plan.BUDGET_S
    # as bench.gpu's main: the start-up (importing torch) comes off the budget before the suite starts
    suite = Suite(phases, SimpleNamespace(work=tmp_path), tmp_path, budget - plan.STARTUP_S, smoke,
                  reserve_s=plan.reserve_s(budget))
    return suite.run()


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_phase_runs_when_each_meets_its_estimate(monkeypatch, tmp_path, smoke):
    record = simulate(monkeypatch, tmp_path, 1.0, smoke)
    assert {n: e["status"] for n, e in record["phases"].items()} == {n: "ok" for n, *_ in plan.PLAN}
    assert sum(est for _, est in plan.estimates(smoke)) <= plan.PLANNED_SHARE * (
        plan.SMOKE_BUDGET_S if smoke else plan.BUDGET_S)


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_at_twenty_percent_over_only_the_last_phase_may_be_cut(monkeypatch, tmp_path, smoke):
    record = simulate(monkeypatch, tmp_path, 1.2, smoke)
    names = [n for n, *_ in plan.PLAN]
    statuses = {n: e["status"] for n, e in record["phases"].items()}
    assert list(statuses) == names  # every phase is in the record: run, or skipped with its reason
    assert all(statuses[n] == "ok" for n in names[:-1]), statuses
    for name in names[:-1]:  # what ran is recorded with the time it took
        entry = record["phases"][name]
        assert entry["duration_s"] == pytest.approx(1.2 * entry["estimate_s"])
    last = record["phases"][names[-1]]
    assert last["status"] == "ok" or last["reason"].startswith("would not fit"), last
    assert headline_problems(record) == []


def test_the_suite_runs_the_plan_in_its_order_with_its_estimates():
    from bench.gpu.__main__ import PHASES
    assert [(p.name, p.estimate_s, p.smoke_estimate_s) for p in PHASES] == [(n, g, s) for n, g, s, _ in plan.PLAN]


def test_the_lent_command_prints_the_gpu_plan():
    lines = plan.plan_lines()
    assert lines[0].startswith(f"plan for a budget of {plan.BUDGET_S:.0f} s (on a GPU)")
    assert [ln.split()[0] for ln in lines[2:-1]] == [n for n, *_ in plan.PLAN]


def test_help_states_the_budgets_the_suite_uses():
    """--help said "60 with --smoke" while --smoke ran (and summary.md said) 120 s."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for module in ("bench.gpu", "bench.gpu.lent"):
        run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        text = " ".join(run.stdout.split())
        assert f"default {plan.BUDGET_S:.0f};" in text and f"{plan.SMOKE_BUDGET_S:.0f} with --smoke" in text, module
