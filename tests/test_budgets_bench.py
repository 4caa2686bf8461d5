"""bench.budgets through its CLI: each budget runs tools/train.py timed from outside and
tools/evaluate.py on its best.pt; the table, JSON and PNG come from those records; a finished
budget is kept on a rerun and stays in the table; the benchmark's own keys, a run of other
settings at the same budget and a stopped run's folder are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ["backend=pil-wds", "batch_size=8", "micro_batch=4", "model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}",
        "image_size=32", "workers=0", "crop_scale=[0.5, 1.0]", "rand_augment=null"]


def bench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    sets = [x for s in SETS for x in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "bench.budgets", "--recipe", "cpu-smoke", *sets, *args], cwd=cwd,
                          capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_budgets_run_score_and_resume(flat_converted, tmp_path):
    data, _, _ = flat_converted
    out = tmp_path / "out"
    r = bench(tmp_path, "--data", str(data), "--minutes", "0.25,0.15", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    result = json.loads((out / "budgets.json").read_text())
    rows = result["budgets"]
    assert [row["minutes"] for row in rows] == [0.15, 0.25]  # sorted
    for row in rows:
        folder = out / f"{row['minutes']:g}min"
        command = json.loads((folder / "command.json").read_text())
        scored = json.loads((folder / "evaluate.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        assert command["rc"] == 0 and f"time_budget_min={row['minutes']:g}" in command["argv"]
        assert row["top1"] == scored["top1"] and row["updates"] == summary["updates"] > 0
        assert row["command_s"] == command["wall_s"] and row["unused_s"] == round(60 * row["minutes"] - command["wall_s"], 1)
        assert summary["config"]["time_budget_min"] == row["minutes"]
        # checkpoints stay in the runs folder, never in OUT
        assert not list(folder.glob("*.pt")) and (tmp_path / "runs/bench/budgets/runs" / folder.name / "best.pt").is_file()
    assert rows[0]["updates"] < rows[1]["updates"]  # more time bought more updates
    assert (out / "budgets.png").stat().st_size > 0 and "| 0.25 min |" in (out / "budgets.md").read_text()

    again = bench(tmp_path, "--data", str(data), "--minutes", "0.15", "--out", str(out))
    assert again.returncode == 0 and "0.15min: already run" in again.stdout
    assert len(json.loads((out / "budgets.json").read_text())["budgets"]) == 2  # the 0.25 min row stays
    other = bench(tmp_path, "--data", str(data), "--minutes", "0.15", "--set", "seed=1", "--out", str(out))
    assert other.returncode == 2 and "a run of other settings" in other.stderr  # not reported as this one

    refused = bench(tmp_path, "--data", str(data), "--minutes", "1", "--set", "time_budget_min=3", "--out", str(out))
    assert refused.returncode == 2 and "bench.budgets sets it" in refused.stderr
    (tmp_path / "runs/bench/budgets/runs/0.2min").mkdir()  # a stopped run's folder: not run over
    stopped = bench(tmp_path, "--data", str(data), "--minutes", "0.2", "--out", str(out))
    assert stopped.returncode == 2 and "without a finished record" in stopped.stderr


def test_publishing_needs_publish(tmp_path):
    r = bench(tmp_path, "--replot", "--out", str(ROOT / "bench" / "results" / "tiny64-budgets"))
    assert r.returncode == 2 and "--publish" in r.stderr
