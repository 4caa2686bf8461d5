"""A 2 x 2 kernel x patch sweep on a tiny CIFAR-format dataset: runs to completion, writes the CSV
and the four-panel PNG, and a rerun trains nothing (an interrupted cell resumes)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cifar_format import convert_cifar, smooth_split, write_cifar10
from fastmix.perf import sweep
from fastmix.train.recipe import load_recipe
from fastmix.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sweep as sweep_tool  # noqa: E402  (tools/sweep.py)

RECIPE = dict(backend="resident", workers=1, device="cpu", precision="fp32", channels_last="off",
              model="convmixer_256_8", model_overrides={"dim": 16, "depth": 1}, batch_size=8, micro_batch=8,
              epochs=2, image_size=32, crop_ratio=1.0, crop_scale=[0.5, 1.0], rand_augment=None, mixup=0.0,
              cutmix=0.0, reprob=0.0, lr=0.01)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    tarball = write_cifar10(root / "cifar-10-python.tar.gz", smooth_split(40, 10, 0), smooth_split(20, 10, 1))
    convert_cifar(tarball, root / "data")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "data": str(root / "data")}))
    return path


def test_two_by_two_sweep_then_a_rerun_trains_nothing(recipe, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    args = ["--recipe", str(recipe), "--grid", "kernel=3,5", "--grid", "patch=4,8", "--out", str(out)]
    assert sweep_tool.main(args) == 0
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["cell", "kernel", "patch", *sweep.RESULT_COLUMNS]
    assert [(r["kernel"], r["patch"]) for r in rows] == [("3", "4"), ("3", "8"), ("5", "4"), ("5", "8")]
    for r in rows:
        assert r["status"] == "trained" and r["epochs"] == "2"
        assert 0 <= float(r["final_top1"]) <= 100 and r["final_train_top1"] != ""  # no mixup: logged
        assert float(r["epoch_time_s"]) > 0 and float(r["predicted_epoch_s"]) > 0
        assert r["predicted_on"].startswith("cpu")
        config = json.loads((Path(r["out"]) / "summary.json").read_text())["config"]
        assert config["model_overrides"] == {"dim": 16, "depth": 1, "kernel": int(r["kernel"]), "patch": int(r["patch"])}
    # kernel changes the depthwise weights only (dim x k^2 more); a smaller patch means 4x the tokens
    params = {(r["kernel"], r["patch"]): int(r["params"]) for r in rows}
    assert params["5", "4"] - params["3", "4"] == 16 * (25 - 9)
    flops = {(r["kernel"], r["patch"]): float(r["fwd_gflops_per_image"]) for r in rows}
    assert flops["3", "4"] > flops["3", "8"]
    png = Image.open(out / "sweep.png")
    assert png.format == "PNG" and png.size == (990, 675)

    # Rerun: every cell is found finished, nothing trains.
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished cell was trained again"))
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/last.pt")}
    assert sweep_tool.main(args) == 0
    with open(out / "sweep.csv") as f:
        again = list(csv.DictReader(f))
    assert [r["status"] for r in again] == ["done before"] * 4
    assert [r["final_top1"] for r in again] == [r["final_top1"] for r in rows]
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/last.pt")}

    # A cell interrupted after its last checkpoint (no summary.json) resumes, with no epoch left to train.
    monkeypatch.undo()
    (out / "cells" / "kernel=5_patch=8" / "summary.json").unlink()
    rows = sweep.run_sweep(load_recipe(str(recipe)), sweep.parse_grid(["kernel=3,5", "patch=4,8"]), out)
    assert [r["status"] for r in rows] == ["done before"] * 3 + ["resumed"]

    # Other settings for a finished cell are refused, not silently mixed.
    assert sweep_tool.main([*args, "--set", "epochs=3"]) == 2


def test_grid_errors_are_clear():
    with pytest.raises(sweep.SweepError, match="'kernal' is neither a model field"):
        sweep.parse_grid(["kernal=3,5"])
    with pytest.raises(sweep.SweepError, match="expected field=v1,v2"):
        sweep.parse_grid(["kernel"])
    assert sweep.parse_grid(["lr=0.01,0.05", "act=gelu,relu"]) == {"lr": [0.01, 0.05], "act": ["gelu", "relu"]}


def test_a_repeated_axis_is_refused():
    with pytest.raises(sweep.SweepError, match="'kernel' is already an axis"):
        sweep.parse_grid(["kernel=3,5", "kernel=7"])


@pytest.mark.parametrize("grid, words", [
    (["kernel=3,abc"], ["kernel=abc", "model_overrides.kernel", "'abc'"]),
    (["act=gelu,tanh"], ["act=tanh", "'tanh'", "gelu, relu"]),
    (["lr=0.01,fast"], ["lr=fast", "lr", "'fast'"]),
    (["epochs=2,0"], ["epochs=0", "epochs", "> 0"]),
    (["model=convmixer_256_8,convmixer_9"], ["model=convmixer-9", "'convmixer_9'"]),
])
def test_every_cell_is_checked_before_the_first_trains(recipe, tmp_path, monkeypatch, capsys, grid, words):
    """The bad value sits in the last cell: the sweep is refused in one line, and nothing trains."""
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a cell trained before the grid was checked"))
    out = tmp_path / "sweep"
    args = ["--recipe", str(recipe), "--grid", "patch=4,8", *[a for g in grid for a in ("--grid", g)], "--out", str(out)]
    assert sweep_tool.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: cell ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()


def test_a_bf16_cell_on_a_cpu_is_predicted_at_bf16_or_says_there_is_no_prediction(recipe, tmp_path, monkeypatch, capsys):
    """A cell that trained in bf16 on a CPU never crashes the sweep in its prediction (it used to raise
    "CPU has no bf16 tensor cores" after the cell had trained): with AVX512-BF16 it is predicted at
    bf16, on a CPU whose bf16 peak is unknown (AMX) the row says so in one line."""
    from fastmix.devices.catalog import load_catalog
    out = tmp_path / "sweep"
    grid = sweep.parse_grid(["precision=bf16"])
    base = load_recipe(str(recipe), epochs=1)
    flags = {"avx512": frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}),
             "amx": frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})}
    monkeypatch.setattr(sweep, "present_device", lambda cat: load_catalog(host_flags=flags["avx512"])["cpu"])
    [row] = sweep.run_sweep(base, grid, out)
    assert row["status"] == "trained" and row["predicted_epoch_s"] > 0
    assert row["predicted_on"].startswith("cpu bf16 (")
    fp32 = sweep.predict_epoch(base, sweep.ConvMixerConfig(256, 8, 5, 2), "fp32", 40, 10, None)[0]
    assert row["predicted_epoch_s"] != fp32  # predicted for the precision that ran, not fp32
    capsys.readouterr()

    monkeypatch.setattr(sweep, "present_device", lambda cat: load_catalog(host_flags=flags["amx"])["cpu"])
    [row] = sweep.run_sweep(base, grid, out)
    assert row["status"] == "done before" and row["predicted_epoch_s"] is None
    assert row["predicted_on"].startswith("no prediction: the catalog gives CPU") and "no bf16 peak" in row["predicted_on"]
    assert f"sweep: precision=bf16: {row['predicted_on']}" in capsys.readouterr().out.splitlines()
    with open(out / "sweep.csv") as f:
        assert next(csv.DictReader(f))["predicted_epoch_s"] == ""


def test_ctrl_c_in_a_cell_is_one_line_and_exit_130(recipe, tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "fit", interrupted)
    rc = sweep_tool.main(["--recipe", str(recipe), "--grid", "kernel=3,5", "--out", str(tmp_path / "sweep")])
    assert rc == 130
    assert capsys.readouterr().err.splitlines() == ["sweep: interrupted; rerun the same command to continue"]
