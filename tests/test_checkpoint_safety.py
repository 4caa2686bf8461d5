"""Nothing read from a checkpoint runs as code (issue 21, item 14): fastmix's own checkpoints load
with torch.load(weights_only=True); a file whose unpickling would call a function is refused by
tools/evaluate.py and by --resume with one line naming it, and nothing in it runs;
--trust-checkpoint is the one way to unpickle fully."""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmix.model.convmixer import create_model
from fastmix.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import evaluate as evaluate_tool  # noqa: E402  (tools/evaluate.py)
from test_run_folder import TINY  # noqa: E402


class Planted:
    """Unpickling this calls os.system: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted_checkpoint(path: Path, marker: Path) -> Path:
    model = create_model("convmixer_256_8", num_classes=3).state_dict()
    torch.save({"model": model, "config": {"model": "convmixer_256_8"}, "rng": [Planted(marker)]}, path)
    return path


def test_evaluate_refuses_a_file_that_would_run_code(flat_converted, tmp_path, capsys):
    data, _, _ = flat_converted
    marker = tmp_path / "ran"
    path = planted_checkpoint(tmp_path / "downloaded.pt", marker)
    assert evaluate_tool.main(["--checkpoint", str(path), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "refused" in err[0] and "system" in err[0], err
    assert "--trust-checkpoint" in err[0]
    assert not marker.exists()


def test_resume_refuses_a_planted_last_pt(flat_converted, tmp_path):
    data, _, _ = flat_converted
    marker, out = tmp_path / "ran", tmp_path / "run"
    out.mkdir()
    planted_checkpoint(out / "last.pt", marker)
    done = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), *TINY, "--data", str(data), "--out", str(out),
                           "--epochs", "1", "--resume"], capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert str(out / "last.pt") in lines[0] and "refused" in lines[0]
    assert not marker.exists()


def test_own_checkpoints_load_with_weights_only(flat_converted, tmp_path):
    from fastmix.train.trainer import Trainer
    from test_train import tiny
    data, _, _ = flat_converted
    Trainer(tiny(data, tmp_path, epochs=1, ema=True, precision="fp16")).fit()  # scaler and EMA state too
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # no allowlist, no fallback
    assert state["epoch"] == 0 and state["ema"] is not None
    rng = state["rng"][0]
    checkpoint.set_rng_state(rng)
    a = (np.random.rand(3), random.random(), torch.rand(2))
    checkpoint.set_rng_state(rng)
    assert np.array_equal(a[0], np.random.rand(3)) and a[1] == random.random() and torch.equal(a[2], torch.rand(2))


def test_checkpoints_from_before_read_without_running_code(tmp_path):
    """Files written before RNG states were tensors hold numpy arrays: read through numpy's array
    globals alone, no full unpickling."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"rng": [state]}, tmp_path / "old.pt")
    loaded = checkpoint.load(tmp_path / "old.pt")["rng"][0]
    checkpoint.set_rng_state(loaded)
    x = np.random.rand(2)
    np.random.set_state(state["numpy"])
    assert np.array_equal(x, np.random.rand(2))


def test_trust_checkpoint_reads_a_file_with_python_objects(flat_converted, tmp_path, capsys):
    """A timm training checkpoint holds its argparse.Namespace: refused unless trusted."""
    data, _, _ = flat_converted
    path = tmp_path / "timm-train.pth"
    torch.save({"state_dict": create_model("convmixer_256_8", num_classes=3).state_dict(),
                "args": argparse.Namespace(lr=0.01)}, path)
    argv = ["--checkpoint", str(path), "--data", str(data), "--model", "convmixer_256_8", "--backend", "pil-wds",
            "--image-size", "32", "--workers", "0", "--device", "cpu", "--precision", "fp32"]
    assert evaluate_tool.main(argv) == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    result = evaluate_tool.main([*argv, "--trust-checkpoint"])
    assert result["eval_images"] == 12 and result["kind"] == "state_dict"


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_trained_checkpoints_evaluate_without_trust(flat_converted, tmp_path, name):
    """The trainer's own files need no --trust-checkpoint."""
    from fastmix.train.trainer import Trainer
    from test_train import tiny
    data, _, _ = flat_converted
    Trainer(tiny(data, tmp_path / "run", epochs=1)).fit()
    result = evaluate_tool.main(["--checkpoint", str(tmp_path / "run" / name), "--data", str(data),
                                 "--workers", "0", "--device", "cpu"])
    assert result["kind"] == "fastmix checkpoint" and result["eval_images"] == 12
