"""time_budget_min: the trainer measures an update and an evaluation here, then runs the most
epochs (up to the recipe's) that fit; the choice is saved and a resume keeps it."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from fastmix.train.budget import epochs_within

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


def run(data, out, *extra):
    return train_tool.main([*TINY, "--data", str(data), "--out", str(out), *extra])


def test_the_budget_picks_the_epochs_through_the_cli(flat_converted, tmp_path, capsys):
    """From the front door: a budget too small for two epochs runs one; a generous one runs the
    recipe's epochs; both say what they measured. A resume keeps the choice."""
    data, _, _ = flat_converted
    assert run(data, tmp_path / "small", "--epochs", "6", "--set", "time_budget_min=0.001") == 0
    out = capsys.readouterr().out
    assert "time budget 0.001 min: 1 epochs fit" in out
    small = yaml.safe_load((tmp_path / "small" / "config.yaml").read_text())
    assert small["config"]["epochs"] == 1 and small["time_budget"]["epochs"] == 1
    assert set(small["time_budget"]["update_s"]) == {"32"} and small["time_budget"]["eval_s"] > 0

    assert run(data, tmp_path / "big", "--epochs", "2", "--set", "time_budget_min=60") == 0
    assert "2 epochs fit" in capsys.readouterr().out
    big = yaml.safe_load((tmp_path / "big" / "config.yaml").read_text())
    assert big["config"]["epochs"] == 2
    # the resume does not measure again, and is not refused for "epochs 1 -> 6"
    assert run(data, tmp_path / "small", "--epochs", "6", "--set", "time_budget_min=0.001", "--resume") == 0
    assert "time budget" not in capsys.readouterr().out
    assert torch.load(tmp_path / "small" / "last.pt", weights_only=True)["config"]["epochs"] == 1
    again = yaml.safe_load((tmp_path / "small" / "config.yaml").read_text())  # rewritten by the resume
    assert again["time_budget"] == small["time_budget"]
