"""The CPU training loop at its limit, checked without timing anything: compute threads survive
ffcv (whose import sets torch to one thread), the loader's cost is measured without changing the
run, every epoch prints one line to a plain stdout, a wall-clock budget stops fit(), and the
channels_last probe on a CPU is small and says what it chose."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmix.train import loadercost, speed
from fastmix.train.trainer import Trainer
from test_train import tiny

ROOT = Path(__file__).resolve().parents[1]


def test_compute_threads_survive_importing_ffcv():
    """ffcv/pipeline/compiler.py calls torch.set_num_threads(1) at import: a fresh process shows it,
    and compute_threads puts the setting back (before the fix every ffcv/opencv run used 1 core)."""
    code = ("import torch; torch.set_num_threads(2); import ffcv; after_import = torch.get_num_threads(); "
            "from fastmix.train import speed; n = speed.compute_threads(2); "
            "print(after_import, n, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    after_import, n, now = map(int, out.stdout.split())
    assert after_import == 1  # what ffcv does; if it ever stops, the workaround is harmless
    assert n == now == 2


def test_trainer_keeps_its_threads_with_the_opencv_loader(converted, tmp_path):
    data, _ = converted
    threads = 2
    trainer = Trainer(tiny(data, tmp_path, backend="opencv", threads=threads, epochs=1, max_steps_per_epoch=2))
    assert torch.get_num_threads() == threads == trainer.threads
    torch.set_num_threads(1)  # as ffcv's Loader does at every iter(): the epoch must undo it
    trainer.fit()
    assert torch.get_num_threads() == threads


def test_loader_cost_is_recorded_and_leaves_the_run_unchanged(flat_converted, tmp_path, capsys):
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, epochs=1))
    trainer.train_epoch(0)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][0].items()}
    steps = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    seconds = loadercost.loader_free_seconds(trainer.net, trainer.model, trainer.optimizer, trainer._last_batch,
                                             trainer.accum_steps, trainer.precision, trainer.device)
    assert seconds > 0
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0, msg=k)
    for k, v in trainer.optimizer.state_dict()["state"][0].items():
        torch.testing.assert_close(v, moments[k], rtol=0, atol=0, msg=k)
    assert steps == []  # the run's optimizer did not step (its hooks, e.g. an EMA's, saw nothing)
    assert loadercost.slowdown(90.0, 100.0) == pytest.approx(0.1) and loadercost.slowdown(90.0, None) is None


def test_every_epoch_prints_one_line_and_the_csv_counts_from_one(flat_converted, tmp_path):
    """Through the CLI with stdout a pipe (no terminal): the epoch lines and a formatted summary."""
    data, _, _ = flat_converted
    cmd = [sys.executable, "tools/train.py", "--recipe", "cpu-smoke", "--data", str(data), "--out", str(tmp_path),
           "--epochs", "2", "--set", "model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}",
           "--set", "image_size=32", "--set", "batch_size=8", "--set", "micro_batch=8", "--set", "workers=0",
           "--set", "channels_last=off", "--set", "backend=pil-wds", "--device", "cpu"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ") and "val top-1" in line]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    for line in lines:
        for part in ("loss ", "val top-1 ", "top-5 ", "img/s", "wait ", "loader cost "):
            assert part in line, (part, line)
    assert "best val top-1" in out.stdout and "{" not in out.stdout.split("done:")[1]
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # a loader cost is a positive figure, or empty where timing noise swamped it (loadercost.cost)
    assert all(float(r["loader_free_images_per_s"]) > 0 for r in rows)
    assert all(r["loader_slowdown"] == "" or float(r["loader_slowdown"]) > 0 for r in rows)
    assert all(0 <= float(r["data_wait_share"]) <= 1 and float(r["wall_s"]) > 0 for r in rows)


def test_budget_stops_fit_after_the_epoch_that_crosses_it(flat_converted, tmp_path):
    data, _, _ = flat_converted
    summary = Trainer(tiny(data, tmp_path, epochs=5)).fit(budget_s=1e-6)
    assert [int(r["epoch"]) for r in summary["epochs"]] == [1]


def test_channels_last_probe_on_a_cpu_is_small_and_says_what_it_chose(capsys):
    from fastmix.model.convmixer import create_model
    model = create_model("convmixer_256_8", num_classes=4, dim=8, depth=1, kernel=3, patch=4)
    seen = []
    real = speed.time_train_steps

    def spy(net, x, precision, steps=5, warmup=2):
        seen.append((x.shape[0], steps))
        return real(net, x, precision, steps, warmup)
    speed.time_train_steps, saved = spy, speed.time_train_steps
    try:
        chosen, timings = speed.choose_channels_last(model, "auto", torch.device("cpu"), "fp32", 512, 16)
    finally:
        speed.time_train_steps = saved
    assert seen == [(speed.CPU_PROBE_BATCH, 2)] * 2
    text = capsys.readouterr().out
    assert "timing 2 training steps per memory format at batch 32" in text
    assert f"channels_last auto: {'on' if chosen else 'off'}" in text and set(timings) == {"channels_last", "contiguous"}
