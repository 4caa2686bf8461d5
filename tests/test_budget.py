"""time_budget_min: the trainer measures an update and an evaluation here, plans the most updates
(whole epochs up to the recipe's, then a cut last one) that fit, re-plans after the first epoch
from its measured time, and ends inside the budget; the plan is saved and a resume keeps it."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml

from fastmix.train import budget
from fastmix.train.budget import epochs_within, updates_within

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402  (tools/train.py)
from test_run_folder import TINY  # noqa: E402


def test_epochs_within_counts_each_epochs_own_cost():
    # 10 s per epoch, evaluations 2 s: 5 epochs take 60 s, 6 take 72 s
    assert epochs_within(65.0, 9, lambda k, e: 10.0, 2.0) == 5
    assert epochs_within(65.0, 3, lambda k, e: 10.0, 2.0) == 3  # never more than the recipe's
    assert epochs_within(1.0, 9, lambda k, e: 10.0, 2.0) == 1   # at least one
    # a ramp: early epochs are cheap only when the run is long enough to ramp
    ramp = lambda k, e: 5.0 if k < e // 2 else 10.0  # noqa: E731
    assert epochs_within(40.0, 9, ramp, 0.0) == 5  # 5+5+10+10+10 = 40


def test_updates_within_fills_the_budget_with_a_cut_last_epoch(monkeypatch):
    monkeypatch.setattr(budget, "LOADER_COST_UPDATES", 6)
    monkeypatch.setattr(budget, "MIN_LAST_EPOCH", 0.2)
    one = lambda k, e: 1.0  # noqa: E731  (1 s an update; 10 updates, 6 timed, an evaluation of 2 s: 18 s an epoch)
    assert updates_within(54.0, 9, 10, one, 2.0) == (3, 10)   # three whole epochs, exactly
    assert updates_within(60.0, 9, 10, one, 2.0) == (3, 10)   # 6 s left: not one update after a 4th's costs
    assert updates_within(70.0, 9, 10, one, 2.0) == (4, 8)    # 16 s left: 8 updates + timing + evaluation
    assert updates_within(70.0, 3, 10, one, 2.0) == (3, 10)   # never more epochs than the recipe's
    assert updates_within(1.0, 9, 10, one, 2.0) == (1, 10)    # at least one whole epoch where none fits
    assert updates_within(12.0, 9, 10, one, 2.0) == (1, 4)    # ... or a cut one where 20 % of it fits
    # after the first epoch (over; the budget is what is left): 40 s buys two more whole epochs,
    # 48 s two more and a fourth cut to 4 updates (48 - 36 - 6 - 2)
    assert updates_within(40.0, 9, 10, one, 2.0, done=1) == (3, 10)
    assert updates_within(48.0, 9, 10, one, 2.0, done=1) == (4, 4)


def test_epoch_updates_cuts_only_the_last_epoch():
    record = {"last_epoch_updates": 7}
    assert [budget.epoch_updates(record, k, 3, 10) for k in range(3)] == [10, 10, 7]
    assert budget.total_updates(record, 3, 10) == 27 and budget.total_updates(None, 3, 10) == 30


def run(data, out, *extra, started=None):
    return train_tool.main([*TINY, "--data", str(data), "--out", str(out), *extra], started=started)


def test_the_budget_picks_the_epochs_through_the_cli(flat_converted, tmp_path, capsys):
    """From the front door: a budget too small for two epochs runs one; a generous one runs the
    recipe's epochs; both say what they measured. A resume keeps the choice."""
    data, _, _ = flat_converted
    assert run(data, tmp_path / "small", "--epochs", "6", "--set", "time_budget_min=0.001") == 0
    out = capsys.readouterr().out
    assert "time budget 0.001 min: 1 epochs = " in out
    small = yaml.safe_load((tmp_path / "small" / "config.yaml").read_text())
    assert small["config"]["epochs"] == 1 and small["time_budget"]["epochs"] == 1
    assert set(small["time_budget"]["update_s"]) == {"32"} and small["time_budget"]["eval_s"] > 0

    assert run(data, tmp_path / "big", "--epochs", "2", "--set", "time_budget_min=60") == 0
    out = capsys.readouterr().out
    assert "time budget 60 min: 2 epochs = " in out
    assert "time budget: the recipe's 2 epochs take about " in out and "the rest is not used" in out  # said
    big = yaml.safe_load((tmp_path / "big" / "config.yaml").read_text())
    assert big["config"]["epochs"] == 2
    # the resume does not measure again, and is not refused for "epochs 1 -> 6"
    assert run(data, tmp_path / "small", "--epochs", "6", "--set", "time_budget_min=0.001", "--resume") == 0
    assert "time budget" not in capsys.readouterr().out
    assert torch.load(tmp_path / "small" / "last.pt", weights_only=True)["config"]["epochs"] == 1
    again = yaml.safe_load((tmp_path / "small" / "config.yaml").read_text())  # rewritten by the resume
    assert again["time_budget"] == small["time_budget"]


def test_a_budget_of_seconds_is_planned_replanned_and_kept(flat_converted, tmp_path, capsys, monkeypatch):
    """Through tools/train.py with a tiny model: the plan comes from the update timed here, it is
    re-planned after the first epoch at each size of its ramp from that epoch's measured seconds
    (sizes never going back down), the schedule spans the
    updates the re-plan bought (the one-cycle lr ends at 0), and the command ends inside its budget.
    Epochs of a second on a shared 2-core machine vary by more than a half-hour run's epochs do:
    the re-plan's slack is 15 % here (3 % as shipped)."""
    monkeypatch.setattr(budget, "REPLAN_SLACK", 0.15)
    data, _, _ = flat_converted
    budget_s, started = 24.0, time.time()
    assert run(data, tmp_path / "run", "--epochs", "200", "--set", f"time_budget_min={budget_s / 60}",
               "--set", "image_size=48", "--set", "progressive={start: 32, until: 0.75}", started=started) == 0
    elapsed = time.time() - started
    out = capsys.readouterr().out
    assert f"time budget {budget_s / 60:g} min: " in out
    assert elapsed <= budget_s, f"the run took {elapsed:.1f} s of a {budget_s:.0f} s budget:\n{out}"
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["time_budget"]
    assert set(record["update_s"]) == {"32", "40", "48"} and min(record["update_s"].values()) > 0  # measured here
    assert record["replan"]["measured_train_s"] > 0 and record["first_plan"]["updates"] > 0
    assert record["model"] == {"dim": 16, "depth": 2, "kernel": 3, "patch": 4}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    used = summary["time_budget_used"]
    assert used["updates"] == used["planned_updates"] == record["updates"] == summary["updates"]
    assert used["epochs"] == record["epochs"] == len(summary["epochs"]) > 1
    assert used["wall_s"] <= budget_s
    assert float(summary["epochs"][-1]["lr"]) == 0.0  # the one-cycle schedule ended where the re-plan did
    # a 32 -> 40 -> 48 px ramp: each size re-planned after its first epoch; sizes never went back
    sizes = [int(row["image_size"]) for row in summary["epochs"]]
    assert sizes == sorted(sizes) == record["sizes"] and sizes[0] == 32
    by_size = [r for r in record["replans"] if not r.get("trim")]
    assert [r["size"] for r in by_size] == sorted(set(sizes))[:len(by_size)]
    assert len(by_size) >= 2 and "time budget re-planned after epoch 1 (its 32 px" in out
    if len(sizes) >= 3 and sizes[-2] == sizes[-3]:  # the epoch before the last, not a first: it cut the last
        assert record["replans"][-1]["trim"] and record["replans"][-1]["after_epoch"] == len(sizes) - 1
        assert "time budget: the last epoch cut to " in out


def test_a_first_epoch_cut_to_the_budget_is_not_replanned_into_a_whole_one():
    """A budget under one epoch cut the first (only) epoch; a re-plan that added a second would count
    the first as whole (total updates, schedule, sizes) and the one-cycle would never end."""
    from types import SimpleNamespace
    record = {"epochs": 1, "last_epoch_updates": 80, "updates": 80, "update_s": {"32": 0.01}}
    trainer = SimpleNamespace(cfg=SimpleNamespace(epochs=1), budget=record, updates_per_epoch=100)
    again = budget.replan(trainer, {"train_s": 1.0, "eval_s": 0.1}, time.time())
    assert again["epochs"] == 1 and again["last_epoch_updates"] == 80 and "kept" in again["replan"]
    assert budget.used({"epochs": 3, "update_s": {}}, 10, 3, 5.0)["planned_updates"] is None  # an older record


def test_each_size_replans_from_its_own_first_epoch_and_sizes_never_go_back(monkeypatch):
    """A 40 -> 48 -> 56 px ramp whose first plan timed 56 px 20 % slow (as the bf16 VM's did): the
    re-plan after the first 56 px epoch uses 56 px's own ratio and buys more epochs; the epochs
    still to come stay at 56 px although a longer ramp would start them lower."""
    from types import SimpleNamespace
    from fastmix.train.recipe import TrainConfig
    monkeypatch.setattr(budget, "REPLAN_SLACK", 0.0)
    monkeypatch.setattr(budget, "END_S", 0.0)
    cfg = TrainConfig(epochs=9, image_size=56, progressive={"start": 40, "until": 0.75}, time_budget_min=1.0)
    update_s = {"40": 0.01, "48": 0.015, "56": 0.02}  # 100 updates an epoch: 1, 1.5, 2 s + timing
    sizes = budget._sizes(cfg, 9)
    assert sizes == [40, 40, 40, 48, 48, 48, 56, 56, 56]
    record = {"epochs": 9, "last_epoch_updates": 100, "updates_per_epoch": 100, "updates": 900,
              "sizes": sizes, "update_s": update_s, "most_epochs": 30, "budget_total_s": 60.0}
    trainer = SimpleNamespace(cfg=cfg, budget=record, updates_per_epoch=100, started=time.time() - 20.0,
                              model=None, dist=SimpleNamespace(world_size=1, is_main=True,
                                                               gather=lambda v: [v]))
    monkeypatch.setattr(trainer, "cfg", cfg)
    first = budget.replan(trainer, {"train_s": 0.01 * 106, "eval_s": 0.5}, trainer.started, epoch=0)
    assert first["replans"][0]["ratio"] == 1.0 and first["done_epochs"] == 1
    trainer.budget, trainer.cfg = first, TrainConfig(**{**cfg.to_dict(), "epochs": first["epochs"]})
    at56 = first["sizes"].index(56)
    # the first 56 px epoch took 0.8x its timing: the 56 px epochs to come are cheaper than planned
    again = budget.replan(trainer, {"train_s": 0.8 * 0.02 * 106, "eval_s": 0.5}, trainer.started, epoch=at56)
    assert again["ratios"] == {"40": 1.0, "56": 0.8} and len(again["replans"]) == 2
    assert again["replan"] == first["replans"][0] and again["first_plan"] == first["first_plan"]
    assert again["sizes"][:at56 + 1] == first["sizes"][:at56 + 1]
    assert all(s == 56 for s in again["sizes"][at56:])  # never back to 48 px
    assert again["sizes"] == sorted(again["sizes"])
    assert again["updates"] > first["updates"]  # 56 px was cheaper than timed: more of it fits
    assert budget.size_at(SimpleNamespace(budget=again, cfg=trainer.cfg), len(again["sizes"]) - 1) == 56


def test_the_epoch_before_the_last_moves_the_last_cut_by_the_time_lost_or_gained(monkeypatch):
    """Epochs drift after their size's re-plan (the 45-minute run's 56 px epochs ran up to 12 % slow
    and it ended 11 s past its budget): after the epoch before the last, the last epoch's cut comes
    from the clock and that epoch's own rate; the epoch count stays, so the schedule still ends
    with the run; between one update and a whole epoch."""
    from types import SimpleNamespace
    from fastmix.train.recipe import TrainConfig
    monkeypatch.setattr(budget, "REPLAN_SLACK", 0.0)
    monkeypatch.setattr(budget, "END_S", 0.0)
    cfg = TrainConfig(epochs=4, image_size=48, time_budget_min=1.0)
    record = {"epochs": 4, "last_epoch_updates": 50, "updates_per_epoch": 100, "updates": 350,
              "sizes": [48] * 4, "update_s": {"48": 0.01}, "ratios": {"48": 1.0}, "most_epochs": 30,
              "budget_total_s": 60.0, "replans": [{"after_epoch": 1, "size": 48}]}

    now = time.time()
    monkeypatch.setattr(budget.time, "time", lambda: now)  # the clock stands still: exact arithmetic

    def trainer_at(elapsed: float):
        return SimpleNamespace(cfg=cfg, budget=dict(record), updates_per_epoch=100, started=now - elapsed,
                               model=None, dist=SimpleNamespace(world_size=1, is_main=True, gather=lambda v: [v]))
    # epoch 3 of 4 ran at 0.1 s an update (its 106 updates: 10.6 s); 60 - 48 - 0.5 = 11.5 s left
    late = budget.trim_last(trainer_at(48.0), 2, train_s=10.6, eval_s=0.5)
    assert late["epochs"] == 4 and late["last_epoch_updates"] == 100  # 115 - 6 fit: capped at a whole epoch
    assert late["updates"] == 300 + 100 and late["replans"][-1]["trim"] and late["done_epochs"] == 3
    early = budget.trim_last(trainer_at(54.95), 2, train_s=10.6, eval_s=0.5)  # 4.55 s left: 45 - 6 updates
    assert early["last_epoch_updates"] == 39 and early["updates"] == 339 and early["epochs"] == 4
    gone = budget.trim_last(trainer_at(59.9), 2, train_s=10.6, eval_s=0.5)  # no time left: one update
    assert gone["last_epoch_updates"] == 1

    # the last epoch at a new size: that size's timing by its ratio, times this size's drift since
    ramp = {**record, "sizes": [40, 40, 40, 48], "update_s": {"40": 0.05, "48": 0.1}, "ratios": {"40": 1.0}}
    t = trainer_at(48.0)
    t.budget = ramp
    moved = budget.trim_last(t, 2, train_s=10.6, eval_s=0.5)  # 40 px ran 2x its timing: 48 px is taken as 0.2 s
    assert moved["last_epoch_updates"] == int(11.5 / 0.2) - 6 and moved["sizes"] == [40, 40, 40, 48]


def test_after_epoch_trims_before_the_last_rebuilds_the_schedule_and_a_resume_keeps_its_plan(monkeypatch):
    """after_epoch() from the trainer's side: after the epoch before the last (not a size's first) it
    re-cuts the last epoch and rebuilds the one-cycle schedule to the new total; a resumed run
    (start_epoch > 0) keeps its plan."""
    from types import SimpleNamespace
    from fastmix.train.recipe import TrainConfig
    monkeypatch.setattr(budget, "REPLAN_SLACK", 0.0)
    monkeypatch.setattr(budget, "END_S", 0.0)
    now = time.time()
    monkeypatch.setattr(budget.time, "time", lambda: now)
    cfg = TrainConfig(epochs=4, image_size=48, time_budget_min=1.0, lr=0.01, schedule="onecycle")
    record = {"epochs": 4, "last_epoch_updates": 100, "updates_per_epoch": 100, "updates": 400,
              "sizes": [48] * 4, "update_s": {"48": 0.01}, "ratios": {"48": 1.0}, "replan": {"after_epoch": 1},
              "replans": [{"after_epoch": 1, "size": 48, "ratio": 1.0}]}
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def trainer(start_epoch: int):
        return SimpleNamespace(cfg=cfg, budget=dict(record), updates_per_epoch=100, started=now - 55.0, model=None,
                               start_epoch=start_epoch, optimizer=optimizer, updates=300, schedule=None,
                               dist=SimpleNamespace(world_size=1, is_main=True, gather=lambda v: [v]))
    t = trainer(0)  # 4.5 s left at 0.1 s an update (epoch 3's 106 updates in 10.6 s): 45 - 6
    assert budget.after_epoch(t, 2, train_s=10.6, eval_s=0.5)
    assert t.budget["last_epoch_updates"] == 39 and t.budget["replans"][-1]["trim"] and t.cfg.epochs == 4
    assert t.schedule is not None and t.schedule.total_updates == 339  # one-cycle ends at the new last update
    resumed = trainer(3)
    assert not budget.after_epoch(resumed, 2, train_s=10.6, eval_s=0.5) and resumed.budget == record
