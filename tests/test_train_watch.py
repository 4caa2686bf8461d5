"""Watching a run (issue 28): progress lines in a log file, TensorBoard events that read back as
epochs.csv, records that hold each epoch once after kill -9 and --resume (issue 26 item 14), and
an fp16 run whose gradients stay non-finite stops (issue 27 item 9)."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import kill_when_exists
from fastmix.train import progress, stepstats
from fastmix.train.runlog import EPOCH_FIELDS, ROUNDING, RunLog, steps_until
from fastmix.train.trainer import NonFiniteLoss, Trainer
from test_train import rows, tiny

ROOT = Path(__file__).resolve().parents[1]
# the cpu-smoke recipe made tiny, on the synthetic loader (no decode: many cheap updates)
TINY = ["--recipe", "cpu-smoke", "--batch-size", "8", "--micro-batch", "8",
        "--set", "model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}", "--set", "image_size=32",
        "--set", "workers=0", "--set", "crop_scale=[0.5, 1.0]", "--set", "rand_augment=null"]
LINE = re.compile(r"^epoch (\d+)/(\d+)  update (\d+)/(\d+)  loss \S+  lr \S+  \d+ img/s  wait [\d.]+ %  ETA \d+:\d\d$")


def train_cmd(data, out, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "tools/train.py"), *TINY, "--data", str(data), "--out", str(out), *extra]


def test_a_log_file_gets_a_progress_line_every_interval(flat_converted, tmp_path):
    """stdout and stderr to files, as under nohup: with log_every beyond the epoch, lines still come
    every progress_every_s (here 0.2 s; 30 by default), timed as they reach the file. Before: the
    tqdm bar, silenced off a terminal, and nothing until the epoch's line."""
    data, _, _ = flat_converted
    log, err = tmp_path / "log.txt", tmp_path / "err.txt"
    cmd = train_cmd(data, tmp_path / "run", "--epochs", "2", "--backend", "pil-wds", "--batch-size", "2",
                    "--micro-batch", "2", "--set", "image_size=64", "--set", "log_every=1000",
                    "--set", "progress_every_s=0.2")
    seen = []  # (seconds, line) as each complete line appears in the file
    with log.open("w") as out, err.open("w") as errors:
        proc = subprocess.Popen(cmd, stdout=out, stderr=errors, stdin=subprocess.DEVNULL)
        deadline = time.time() + 600
        while time.time() < deadline:
            done = proc.poll() is not None
            lines = log.read_text().split("\n")[:-1]
            seen += [(time.monotonic(), line) for line in lines[len(seen):]]
            if done:
                break
            time.sleep(0.02)
    assert proc.returncode == 0, err.read_text()
    updates = [(t, LINE.match(line)) for t, line in seen if LINE.match(line)]
    per_epoch = int(updates[0][1].group(4))
    assert per_epoch == 39 // 2
    for epoch in (1, 2):
        mine = [(t, m) for t, m in updates if m.group(1) == str(epoch)]
        done = [int(m.group(3)) for _, m in mine]
        assert done[0] == 1 and done == sorted(done), done  # the first update, then by time
        # no silence longer than the interval (plus room for one update on a loaded machine) from the
        # first update's line to the epoch's own line: how many lines that takes depends on the speed
        ended = next(t for t, line in seen if line.startswith(f"epoch {epoch}/2  loss"))
        times = [t for t, _ in mine] + [ended]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) < 0.2 + 5, gaps
    assert sum(line.startswith("epoch 2/2  loss") for _, line in seen) == 1  # the epoch's own line
    assert "\r" not in err.read_text() and "it/s" not in err.read_text()  # no bar as well


def test_progress_on_a_terminal_is_the_bar_alone(capsys):
    bar = progress.Progress(0, 3, 10, enabled=True, every_s=0.0, terminal=True)
    assert not bar.overdue()
    bar.advance()
    bar.show(1, progress.fields(2.5, 1e-3, 100.0, 0.02), line=True)
    bar.close()
    assert capsys.readouterr().out == ""
    lines = progress.Progress(0, 3, 10, enabled=True, every_s=0.0, terminal=False)
    assert lines.bar is None and lines.overdue()
    lines.show(5, progress.fields(None, 1e-3, 100.0, None), line=True)
    out = capsys.readouterr().out
    assert out.startswith("epoch 1/3  update 5/10  loss nan  lr 1.00e-03  100 img/s  wait n/a  ETA ")
    quiet = progress.Progress(0, 3, 10, enabled=False, every_s=0.0, terminal=False)  # rank > 0
    quiet.show(5, progress.fields(1.0, 1e-3, 1.0, 0.0), line=True)
    assert not quiet.overdue() and capsys.readouterr().out == ""


def events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_events_read_back_as_epochs_csv(flat_converted, tmp_path):
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, epochs=3, log_every=2, ema=True, ema_decay=0.9))
    trainer.fit()
    assert trainer.log.title.startswith("ConvMixer-16/2 k3 p4 GELU on ")  # curves.png's title: the model that ran
    acc = events(tmp_path)
    table = rows(tmp_path)
    per_epoch = trainer.updates_per_epoch
    compared = 0
    for field in EPOCH_FIELDS:
        values = [r[field] for r in table]
        if "" in values:
            assert f"epoch/{field}" not in acc.Tags()["scalars"]  # nothing measured, no curve
            continue
        got = scalars(acc, f"epoch/{field}")
        assert [s for s, _ in got] == [per_epoch * (k + 1) for k in range(3)], field  # step: updates
        tolerance = 10 ** -ROUNDING.get(field, 4) if field != "lr" else 1e-3 * float(values[0] or 1)
        assert [v for _, v in got] == pytest.approx([float(v) for v in values], rel=1e-4, abs=tolerance), field
        compared += 1
    assert compared >= 15
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars(acc, "update/loss")] == [r["update"] for r in steps]
    assert [v for _, v in scalars(acc, "update/loss")] == pytest.approx([r["loss"] for r in steps], rel=1e-5)
    assert {"update/lr", "update/images_per_s", "update/mfu", "update/data_wait_share"} <= set(acc.Tags()["scalars"])
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model_overrides:" in text and "precision: fp32" in text


def test_tensorboard_false_writes_no_events(flat_converted, tmp_path):
    data, _, _ = flat_converted
    Trainer(tiny(data, tmp_path, epochs=1, tensorboard=False)).fit()
    assert (tmp_path / "epochs.csv").is_file() and not (tmp_path / "tensorboard").exists()


def test_epochs_csv_rounds_its_floats(tmp_path):
    log = RunLog(tmp_path, enabled=True)
    log.epoch({"epoch": 1, "train_loss": 2.123456789, "eval_loss": 2.0, "top1": 100 / 3, "top5": 200 / 3,
               "lr": 0.00123456789, "images_per_s": 251.98765, "mfu": 0.312345678, "data_wait_share": 0.0123456,
               "epoch_time_s": 12.3456789, "wall_s": 12.3456789, "image_size": 32, "nonfinite_skipped": 0,
               "scaler_skipped": 0}, 3)
    (row,) = rows(tmp_path)
    assert (row["train_loss"], row["top1"], row["top5"], row["lr"]) == ("2.1235", "33.33", "66.67", "0.001235")
    assert (row["images_per_s"], row["mfu"], row["data_wait_share"], row["epoch_time_s"]) == \
        ("252.0", "0.3123", "0.0123", "12.35")
    assert row["ema_top1"] == ""


def test_killed_and_resumed_run_holds_each_epoch_once(converted, tmp_path):
    """kill -9 after epoch 1's checkpoint, while epoch 2 writes its steps; --resume. Before the fix
    steps.jsonl kept the killed epoch 2's lines and the resumed epoch 2 wrote them again."""
    data, _ = converted
    out = tmp_path / "run"
    cmd = train_cmd(data, out, "--epochs", "3", "--backend", "pil-wds", "--batch-size", "4", "--micro-batch", "4",
                    "--set", "log_every=1")
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = out / "steps.jsonl"

    def epoch2_started() -> bool:
        return steps.is_file() and '"epoch": 2' in steps.read_text()
    deadline = time.time() + 600
    while not epoch2_started() and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL
    killed = torch.load(out / "last.pt", weights_only=False)
    assert killed["epoch"] == 0, "the kill must land inside epoch 2"
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in steps.read_text().splitlines()]
    updates = [r["update"] for r in records]
    assert updates == sorted(set(updates)) == list(range(1, updates[-1] + 1)), updates
    assert [r["epoch"] for r in rows(out)] == ["1", "2", "3"]
    acc = events(out)  # the killed epoch's events are purged on reading
    assert [s for s, _ in scalars(acc, "update/loss")] == updates
    assert [int(v) for _, v in scalars(acc, "epoch/epoch")] == [1, 2, 3]


def test_steps_until_drops_later_epochs_and_a_cut_line(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"epoch": 1, "update": 1}\n{"epoch": 2, "update": 2}\n{"epoch": 1, "upd')
    assert steps_until(path, 1) == ['{"epoch": 1, "update": 1}\n']
    assert steps_until(path, 0) == []


def test_stats_count_scaler_skips_at_scale_one_or_less():
    stats = stepstats.UpdateStats(torch.device("cpu"))
    one, zero, loss = torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.0)
    for scale in (65536.0, 2.0):  # the scaler finding its scale: not a streak
        stats.add(loss, torch.tensor(float("inf")), zero, one, torch.tensor(scale))
    assert stats.read()["max_scaler_in_row"] == 0
    for scale in (1.0, 0.5):
        stats.add(loss, torch.tensor(float("nan")), zero, one, torch.tensor(scale))
    stats.new_epoch()  # the streak goes on across epochs
    stats.add(loss, torch.tensor(float("nan")), zero, one, torch.tensor(0.25))
    read = stats.read()
    assert read["scaler_in_row"] == read["max_scaler_in_row"] == 3
    stats.add(loss, torch.tensor(1.0), zero, zero, torch.tensor(0.25))  # a step taken ends it
    assert stats.read()["scaler_in_row"] == 0
    with pytest.raises(NonFiniteLoss, match="GradScaler skipped 3 updates in a row"):
        stepstats.check_streaks(read, 3, "update 5")


def test_fp16_run_with_finite_loss_and_nan_gradients_stops(flat_converted, tmp_path):
    """Every gradient NaN, the loss finite: the GradScaler skips and halves its scale forever.
    Before: the run trained to its end without one update and exit code 0."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, precision="fp16", epochs=5, max_nonfinite=3, log_every=100))
    assert trainer.scaler.is_enabled()
    trainer.scaler._init_scale = 4.0  # 4 -> 2 -> 1: three skips, then the streak counts
    trainer.model.stem[0].weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"GradScaler skipped \d+ updates in a row at a loss scale <= 1"):
        trainer.fit()
    assert trainer.updates < 5 * trainer.updates_per_epoch
