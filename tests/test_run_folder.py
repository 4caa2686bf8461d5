"""tools/train.py keeps what it did not mean to replace (issue 21): `--set` values are used (items 1),
a folder holding a run is refused without --resume / --overwrite and --overwrite removes only the
trainer's files (7), a resume with other settings lists them and stops unless allowed (11), and
Ctrl-C stops with one line and exit code 130 (12)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmix.train import runfolder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402  (tools/train.py)

# the cpu-smoke recipe made tiny; RandAugment off (its Pillow/timm clash is issue 21 item 2, not this)
TINY = ["--recipe", "cpu-smoke", "--backend", "pil-wds", "--batch-size", "8", "--micro-batch", "4",
        "--set", "model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}", "--set", "image_size=32",
        "--set", "workers=0", "--set", "crop_scale=[0.5, 1.0]", "--set", "rand_augment=null"]


def train(capsys, data, out, *extra) -> tuple[int, str, str]:
    rc = train_tool.main([*TINY, "--data", str(data), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def config(*argv):
    return train_tool.config(train_tool.parse_args(list(argv)))


def test_set_values_are_used_and_nulls_pass_through():
    """Before the fix the unset flags' None was merged over --set: epochs stayed 3, micro_batch 16."""
    cfg = config("--recipe", "cpu-smoke", "--set", "epochs=10", "--set", "batch_size=24", "--set", "micro_batch=12",
                 "--set", "rand_augment=null", "--set", "precision=bf16", "--set", "compile=true")
    assert (cfg.epochs, cfg.batch_size, cfg.micro_batch, cfg.precision, cfg.compile) == (10, 24, 12, "bf16", True)
    assert cfg.rand_augment is None and config("--recipe", "cpu-smoke").rand_augment is not None
    # a flag that agrees with --set is fine; flags alone still work
    assert config("--recipe", "cpu-smoke", "--epochs", "7", "--set", "epochs=7").epochs == 7
    assert config("--recipe", "cpu-smoke", "--epochs", "5").epochs == 5
    with pytest.raises(ValueError, match="--epochs 4 and --set epochs=10 disagree"):
        config("--recipe", "cpu-smoke", "--epochs", "4", "--set", "epochs=10")


def test_default_run_folder_is_per_recipe_and_model():
    assert config("--recipe", "cpu-smoke").out == "runs/cpu-smoke-convmixer_256_8"
    assert config("--recipe", "t4", "--model", "convmixer_1536_20").out == "runs/t4-convmixer_1536_20"
    assert config("--recipe", "t4", "--model", "convmixer_768_32").out == "runs/t4-convmixer_768_32"
    assert config("--recipe", "t4", "--out", "elsewhere").out == "elsewhere"
    assert config("--recipe", "t4", "--set", "out=there").out == "there"


def plant_finished_run(out: Path) -> dict:
    """A finished run's files (as bytes to compare) and two files the trainer never writes."""
    out.mkdir(parents=True)
    planted = {"last.pt": b"the 46 % run", "best.pt": b"the 46 % run's best",
               "epochs.csv": b"epoch,top1\n0,46.0\n", "notes.txt": b"mine", "weights-from-elsewhere.pt": b"theirs"}
    for name, data in planted.items():
        (out / name).write_bytes(data)
    return planted


def test_a_folder_holding_a_run_is_refused_then_overwritten_keeping_foreign_files(flat_converted, tmp_path, capsys):
    data, _, _ = flat_converted
    out = tmp_path / "run"
    planted = plant_finished_run(out)
    rc, _, err = train(capsys, data, out, "--epochs", "1")
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in planted} == planted  # nothing touched

    rc, stdout, err = train(capsys, data, out, "--epochs", "1", "--overwrite")
    assert rc == 0, err
    assert f"done: {out}" in stdout
    for name in ("notes.txt", "weights-from-elsewhere.pt"):
        assert (out / name).read_bytes() == planted[name]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0  # the new run's
    with open(out / "epochs.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]

    # --overwrite removes the trainer's files only (a foreign one of any name stays)
    (out / "summary.json").write_text("{}")
    removed = runfolder.clear(out)
    assert set(removed) >= {"last.pt", "best.pt", "epochs.csv", "summary.json", "config.yaml"}
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "weights-from-elsewhere.pt"]


def test_a_run_stopped_in_its_first_epoch_is_not_a_run(tmp_path):
    (tmp_path / "epochs.csv").write_text("epoch,top1\n")
    assert runfolder.run_files(tmp_path) == []
    runfolder.check(tmp_path, resume=False, overwrite=False)


def test_resume_with_other_settings_lists_them_and_needs_allow_changes(flat_converted, tmp_path, capsys):
    data, _, _ = flat_converted
    out = tmp_path / "run"
    rc, _, err = train(capsys, data, out, "--epochs", "1")
    assert rc == 0, err
    before, lr = (out / "last.pt").read_bytes(), torch.load(out / "last.pt", weights_only=True)["config"]["lr"]
    changed = ["--epochs", "2", "--set", "lr=0.5", "--micro-batch", "2", "--set", "workers=1"]
    rc, _, err = train(capsys, data, out, "--resume", *changed)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "micro_batch: 4 -> 2" in err and f"lr: {lr!r} -> 0.5" in err and "epochs: 1 -> 2" in err
    assert "workers" not in err and "--allow-changes" in err  # workers change no result: free
    assert (out / "last.pt").read_bytes() == before

    with pytest.warns(UserWarning, match="micro_batch: 4 -> 2"):
        rc, _, err = train(capsys, data, out, "--resume", "--allow-changes", *changed)
    assert rc == 0, err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["lr"] == 0.5
    # the new lr is the schedule's peak, not the one restored with the optimizer's state
    assert all(g["initial_lr"] == 0.5 for g in state["optimizer"]["param_groups"])


def test_ctrl_c_stops_with_one_line_and_exit_130(flat_converted, tmp_path):
    data, _, _ = flat_converted
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools/train.py"), *TINY, "--data", str(data), "--out", str(out),
           "--epochs", "200", "--set", "workers=2"]
    # its own process group, signalled as a terminal's Ctrl-C signals it: loader workers included
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"] + 1  # epochs count from 1 on screen and in the CSV
    assert last == f"train: interrupted; rerun with --resume to continue ({out}/last.pt holds epoch {epoch})"
    assert "done:" not in stdout


# a pil worker hands a batch over as a file descriptor from its resource-sharing thread; here the
# parent connects for it and hangs up at once, as a parent interrupted mid-fetch does
HANG_UP = """
import os, socket, sys
from multiprocessing import resource_sharer
if sys.argv[1] == "worker":
    from loaders.pil import _worker_init
    _worker_init(0)
r, _ = os.pipe()
resource_sharer.DupFd(r)
s = socket.socket(socket.AF_UNIX)
s.connect(resource_sharer._resource_sharer._address)
s.close()
resource_sharer._resource_sharer.stop(timeout=30)  # serves that connection first, then joins: no race
"""


@pytest.mark.parametrize("role", ["worker", "plain"])
def test_a_loader_worker_stays_quiet_when_its_parent_hangs_up(role):
    """The traceback CI printed under the Ctrl-C line, reproduced without a race: a plain process
    prints it (so the check can fail), a pil loader worker does not."""
    err = subprocess.run([sys.executable, "-c", HANG_UP, role], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stderr
    assert ("BrokenPipeError" in err or "ConnectionResetError" in err) == (role == "plain"), err


def test_runs_without_out_never_collide_and_resume_continues_the_latest(flat_converted, tmp_path, capsys, monkeypatch):
    """Before: the second run of a recipe and model was refused (the one default folder)."""
    data, _, _ = flat_converted
    monkeypatch.chdir(tmp_path)
    argv = [*TINY, "--data", str(data), "--epochs", "1"]
    for _ in range(2):
        assert train_tool.main(argv) == 0, capsys.readouterr().err
    base = tmp_path / "runs" / "cpu-smoke-convmixer_256_8"
    runs = sorted(base.iterdir())
    assert len(runs) == 2 and all((r / "last.pt").is_file() for r in runs)
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", runs[-1].name)
    latest = tmp_path / "runs" / "latest"
    assert latest.resolve() == runs[-1].resolve()
    assert f"run folder: runs/cpu-smoke-convmixer_256_8/{runs[-1].name}" in capsys.readouterr().out
    # evaluate's help example names a checkpoint that a run without --out leaves
    example = re.search(r"tools/evaluate.py --checkpoint (\S+)", (ROOT / "tools/evaluate.py").read_text()).group(1)
    assert (tmp_path / example).is_file(), example

    runs[0].joinpath("last.pt").touch()  # newer on disk, older by name: the name decides
    rc = train_tool.main([*TINY, "--data", str(data), "--epochs", "2", "--resume", "--allow-changes"])
    assert rc == 0, capsys.readouterr().err
    with open(runs[-1] / "epochs.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert len(list(base.iterdir())) == 2  # no third folder

    # --out stays exact; --resume with no run of this recipe and model says so in one line
    rc = train_tool.main([*TINY, "--data", str(data), "--epochs", "1", "--model", "convmixer_768_32", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "runs/cpu-smoke-convmixer_768_32" in err, err
    assert not (tmp_path / "runs" / "cpu-smoke-convmixer_768_32").exists()


def test_latest_link_falls_back_to_a_file_and_leaves_foreign_things_alone(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r" / "20260101-000000"
    run.mkdir(parents=True)
    link = tmp_path / "runs" / "latest"
    assert runfolder.point_latest(link, run) is None and link.is_symlink()
    assert runfolder.read_latest(link).resolve() == run.resolve()
    monkeypatch.setattr(os, "symlink", lambda *a, **k: (_ for _ in ()).throw(OSError("no symlinks here")))
    assert runfolder.point_latest(link, run) is None and link.is_file() and not link.is_symlink()
    assert runfolder.read_latest(link).resolve() == run.resolve()
    link.unlink()
    link.mkdir()  # the user's own folder named latest
    assert "left as it is" in runfolder.point_latest(link, run) and link.is_dir()


def test_a_budget_resume_with_other_epochs_is_listed_and_applied(flat_converted, tmp_path, capsys):
    """A time budget chose 1 epoch; --resume --epochs 2 --allow-changes ran 1 epoch and said
    "done", with the change neither applied nor reported. Now it is a change like any other."""
    data, _, _ = flat_converted
    out = tmp_path / "run"
    budget = ["--set", "time_budget_min=0.001"]
    rc, _, err = train(capsys, data, out, "--epochs", "3", *budget)
    assert rc == 0, err
    assert torch.load(out / "last.pt", weights_only=True)["config"]["epochs"] == 1
    rc, _, err = train(capsys, data, out, "--epochs", "2", *budget, "--resume")
    assert rc == 1 and "epochs: 1 -> 2" in err and "--allow-changes" in err, err
    with pytest.warns(UserWarning, match="epochs: 1 -> 2"):
        rc, _, err = train(capsys, data, out, "--epochs", "2", *budget, "--resume", "--allow-changes")
    assert rc == 0, err
    with open(out / "epochs.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    # the recipe's epochs again: the budget's choice is kept, nothing to list
    rc, _, err = train(capsys, data, tmp_path / "again", "--epochs", "3", *budget)
    rc, _, err = train(capsys, data, tmp_path / "again", "--epochs", "3", *budget, "--resume")
    assert rc == 0 and "epochs" not in err, err


def test_a_default_run_folder_under_a_file_is_one_line(flat_converted, tmp_path, capsys, monkeypatch):
    data, _, _ = flat_converted
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    rc = train_tool.main([*TINY, "--data", str(data)])
    err = capsys.readouterr().err
    assert rc == 2 and "runs is a file" in err and "Traceback" not in err
    assert (tmp_path / "runs").read_text() == "not a folder"
