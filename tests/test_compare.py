"""tools/compare.py through its command line on tiny real runs (tools/train.py, tools/sweep.py,
bench.tta on generated data): the table, the PNG, labels, resumed wall-clock, one-line errors."""
from __future__ import annotations

import contextlib
import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import compare as compare_tool  # noqa: E402  (tools/compare.py)
import sweep as sweep_tool  # noqa: E402  (tools/sweep.py)
import train as train_tool  # noqa: E402  (tools/train.py)
from bench import tta  # noqa: E402
TINY = ["--set", "model_overrides={dim: 16, depth: 1, kernel: 3, patch: 4}", "--set", "image_size=32",
        "--set", "batch_size=8", "--set", "micro_batch=8", "--set", "workers=0", "--set", "channels_last=off",
        "--set", "max_steps_per_epoch=2"]


def main_of(tool, *args) -> subprocess.CompletedProcess:
    """A command line's main() run in this process (each subprocess would import torch again), its
    exit code and output as a subprocess's."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tool.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def train(data, out, *extra) -> Path:
    done = main_of(train_tool, "--recipe", "cpu-smoke", "--backend", "pil-wds", "--data", data, "--out", out,
                   "--epochs", "2", *TINY, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(out)


def compare(*args) -> subprocess.CompletedProcess:
    return main_of(compare_tool, *args)


def table_rows(stdout: str) -> dict[str, dict]:
    """The markdown table back as {run label: {column: cell}}."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {r["run"]: r for r in rows}


def epochs(out: Path) -> list[dict]:
    with open(out / "epochs.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_runs(flat_converted, tmp_path_factory):
    data, _, _ = flat_converted
    root = tmp_path_factory.mktemp("runs")
    return data, train(data, root / "base"), train(data, root / "faster", "--set", "lr=0.02")


def test_two_runs_give_a_table_and_a_png(two_runs, tmp_path):
    _, base, faster = two_runs
    done = subprocess.run([sys.executable, str(ROOT / "tools/compare.py"), str(base), str(faster), "--out",
                           str(tmp_path / "c.png")], capture_output=True, text=True, timeout=600)  # as typed
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert set(rows) == {"base", "faster"}
    # the settings that differ: lr only (each run's own out folder is not a setting to compare)
    head = done.stdout.splitlines()[0]
    assert "| lr |" in head and "out" not in head and "data" not in head and "dim" not in head
    assert rows["faster"]["lr"] == "0.02" and rows["base"]["lr"] == "0.005"
    for name, out in (("base", base), ("faster", faster)):
        csv_rows = epochs(out)
        assert rows[name]["epochs done"] == str(len(csv_rows)) == "2"
        assert rows[name]["final top-1"] == f"{float(csv_rows[-1]['top1']):.1f} %"
        best = max(float(r["top1"]) for r in csv_rows)
        assert rows[name]["best top-1"].startswith(f"{best:.1f} % (epoch ")
        assert rows[name]["img/s"] == f"{float(csv_rows[1]['images_per_s']):.0f}"  # the epoch after the first
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000 and image.info["Software"] == "fastmix tools/compare.py"
    # a rerun replaces its own picture
    assert compare(base, faster, "--out", tmp_path / "c.png").returncode == 0


def test_sweep_cells_and_tta_backends_are_runs(two_runs, tmp_path):
    data, base, _ = two_runs
    sweep = main_of(sweep_tool, "--recipe", "cpu-smoke", "--data", data, "--out", tmp_path / "sweep",
                "--grid", "lr=0.01", *TINY, "--set", "backend=pil-wds", "--set", "epochs=2")
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    measured = main_of(tta, "--recipe", "cpu-smoke", "--data", data, "--out", tmp_path / "tta", "--backends",
                       "pil-wds", "--periods", "2", "--period-updates", "2", "--device", "cpu", *TINY[:-2])
    assert measured.returncode == 0, measured.stdout + measured.stderr
    done = compare(base, tmp_path / "sweep", tmp_path / "tta", "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert set(rows) == {"base", "lr=0.01", "pil-wds"}
    assert rows["lr=0.01"]["lr"] == "0.01" and rows["pil-wds"]["epochs done"] == "2"


def test_labels_are_distinct_and_a_link_is_one_run(two_runs, tmp_path):
    _, base, faster = two_runs
    for parent in ("x", "y"):
        shutil.copytree(base, tmp_path / parent / "run")
    (tmp_path / "latest").symlink_to(faster)
    done = compare(tmp_path / "x" / "run", tmp_path / "y" / "run", faster, tmp_path / "latest",
                   "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert set(table_rows(done.stdout)) == {"x/run", "y/run", "faster"}
    # a folder of runs (what tools/train.py makes without --out: one subfolder per start) is each of them
    for start in ("20261204-010000", "20261204-020000"):
        shutil.copytree(base, tmp_path / "cpu-smoke" / start)
    done = compare(tmp_path / "cpu-smoke", "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert list(table_rows(done.stdout)) == ["20261204-010000", "20261204-020000"]


def test_a_resumed_run_keeps_counting_wall_clock(two_runs, tmp_path):
    data, base, _ = two_runs
    resumed = tmp_path / "resumed"
    shutil.copytree(base, resumed)
    train(data, resumed, "--resume", "--epochs", "3", "--allow-changes")
    walls = [float(r["wall_s"]) for r in epochs(resumed)]
    assert walls[2] < walls[1], "the trainer's wall_s restarts on resume; this test relies on it"
    done = compare(resumed, "--out", tmp_path / "c.png", "--target-top1", "0")
    assert done.returncode == 0, done.stderr
    row = table_rows(done.stdout)["resumed"]
    # the wall column says the whole run: the first call's time plus the resumed call's
    assert row["wall"] == f"{walls[1] + walls[2]:.0f} s"
    assert row["time to 0 %"] == f"{walls[0]:.0f} s"


def test_what_is_not_a_run_is_refused_in_one_line(two_runs, tmp_path):
    _, base, _ = two_runs
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    rows = epochs(broken)
    rows[0]["top1"] = "lots"
    with open(broken / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "tta").mkdir()
    (tmp_path / "tta" / "tta.json").write_text("{\"settings\": {}}")
    cases = [(tmp_path / "empty", "not a run folder"), (tmp_path / "missing", "no such file or folder"),
             (broken, "epochs.csv: row 1, top1: 'lots' is not a number"),
             (tmp_path / "tta", "tta.json: not a bench.tta result")]
    for path, words in cases:
        done = compare(base, path, "--out", tmp_path / "c.png")
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and words in done.stderr and str(path) in done.stderr, done.stderr
        assert not (tmp_path / "c.png").exists()


def test_a_file_compare_did_not_write_is_kept_unless_overwrite(two_runs, tmp_path):
    _, base, _ = two_runs
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(mine)
    before = mine.read_bytes()
    done = compare(base, "--out", mine)
    assert done.returncode == 2 and "was not written by tools/compare.py" in done.stderr
    assert mine.read_bytes() == before
    assert compare(base, "--out", mine, "--overwrite").returncode == 0
    assert mine.read_bytes() != before
    assert compare(base, "--out", tmp_path / "c.txt").returncode == 2
