"""bench.tta through its command line on generated data: one curve per backend, the table's time to
target, a backend that cannot run here skipped with its reason, resumable per backend, and a rerun
with other settings refused instead of mixing results."""
from __future__ import annotations

import json

import pytest

from bench import tta

SETS = ["--set", "model_overrides={dim: 16, depth: 1, kernel: 3, patch: 4}", "--set", "image_size=32",
        "--set", "batch_size=8", "--set", "micro_batch=8", "--set", "workers=0", "--set", "precision=fp32",
        "--set", "channels_last=off"]


def args(data, out, backends, *extra):
    return ["--data", str(data), "--out", str(out), "--backends", backends, "--periods", "2",
            "--period-updates", "2", "--device", "cpu", *SETS, *extra]


def test_curves_table_skip_and_resume(converted, tmp_path, capsys):
    data, _ = converted
    out = tmp_path / "tta"
    assert tta.main(args(data, out, "pil-wds,nvjpeg")) == 0
    assert "time budget" not in capsys.readouterr().out  # the recipe's (tiny64) would refit the periods
    result = json.loads((out / "tta.json").read_text())
    run = result["backends"]["pil-wds"]
    assert run["status"] == "done" and [p["epoch"] for p in run["periods"]] == [1.0, 2.0]
    walls = [p["wall_s"] for p in run["periods"]]
    assert walls[0] >= run["startup_s"] and walls == sorted(walls)
    assert all(p["loader_free_images_per_s"] > 0 for p in run["periods"])
    assert result["backends"]["nvjpeg"] == {"status": "skipped", "reason": "decodes on a GPU"}
    assert result["target_top1"] == int(max(p["top1"] for p in run["periods"]))
    assert (out / "tta.png").stat().st_size > 0
    table = (out / "tta.md").read_text()
    assert "| pil-wds | " in table and "| nvjpeg | skipped: decodes on a GPU" in table

    # a second backend later: the finished one is kept, not trained again
    capsys.readouterr()
    assert tta.main(args(data, out, "pil-wds,resident")) == 0
    assert "pil-wds: already measured (done), kept" in capsys.readouterr().out
    again = json.loads((out / "tta.json").read_text())
    assert again["backends"]["pil-wds"] == run and again["backends"]["resident"]["status"] == "done"

    # other settings into the same folder: refused, nothing replaced
    assert tta.main(args(data, out, "pil-wds").__add__(["--set", "lr=0.5"])) == 2
    assert "other settings" in capsys.readouterr().err
    assert json.loads((out / "tta.json").read_text()) == again


def test_time_to_target_and_defaults():
    periods = [{"wall_s": 10.0, "top1": 5.0}, {"wall_s": 20.0, "top1": 12.0}, {"wall_s": 30.0, "top1": 11.0}]
    assert tta.time_to(periods, 12.0) == 20.0 and tta.time_to(periods, 13.0) is None
    result = {"backends": {"a": {"status": "done", "periods": periods},
                           "b": {"status": "done", "periods": [{"wall_s": 5.0, "top1": 9.7}]},
                           "c": {"status": "skipped", "reason": "x"}}}
    assert tta.target_top1(result, None) == 9.0 and tta.target_top1(result, 3.0) == 3.0


@pytest.mark.parametrize("flag", ["--periods", "--period-updates", "--budget-s"])
def test_non_positive_counts_refused(flag, capsys):
    with pytest.raises(SystemExit) as e:
        tta.parse_args(["--data", "x", flag, "0"])
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("key, flag", [("epochs=3", "--periods"), ("time_budget_min=5", "--budget-s"),
                                       ("backend=pil", "--backends")])
def test_a_set_of_what_the_benchmark_sets_is_refused(key, flag, tmp_path, capsys):
    """--set epochs=3 was overwritten by --periods without a word; now it is refused, naming the flag."""
    assert tta.main(["--data", str(tmp_path), "--out", str(tmp_path / "tta"), "--device", "cpu",
                     "--set", key]) == 2
    err = capsys.readouterr().err
    assert f"--set {key.split('=')[0]}: bench.tta sets it (use {flag})" in err
    assert not (tmp_path / "tta").exists()
