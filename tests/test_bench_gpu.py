"""`python -m bench.gpu.lent --rehearse`: the GPU suite's code paths on the CPU as the loan runs them, so
they cannot rot while no GPU is at hand. Every phase is measured (positive, finite headline numbers), skipped with a reason, or
recorded with its traceback; a short budget skips late phases and still writes valid outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gpu.runner import Phase, Suite, headline_problems

ROOT = Path(__file__).resolve().parents[1]


def test_the_rehearsal_runs_every_phase_as_the_loan_would_with_dali_and_ffcv_hidden(tmp_path):
    """The loan's command on this CPU (`bench.gpu.lent --rehearse`): the GPU plan printed, the
    photos and 64 px photos converted, every phase with a child run at tiny size, and nothing of
    DALI or ffcv imported anywhere (bench/gpu/bare hides them from the suite and its children)."""
    from fastmix.data.synth import write_imagefolder
    photos = write_imagefolder(tmp_path / "photos", 3, {"big": 2}, sizes=[(160, 120)])  # x 9 train copies: 6 updates
    small = write_imagefolder(tmp_path / "small", 3, {"64": 2}, sizes=[(64, 64)])
    out = tmp_path / "results"
    # generous budget: CI machines are slow and shared (the default is the 150 s the plan is made for)
    run = subprocess.run([sys.executable, "-m", "bench.gpu.lent", "--rehearse", "--budget-s", "1500", "--out", str(out),
                          "--images", str(photos), "--small-images", str(small),
                          "--repeats", "10"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "plan for a budget of 500 s (on a GPU)" in run.stdout and "DALI and ffcv hidden" in run.stdout
    record = json.loads((out / "gpu.json").read_text())
    assert headline_problems(record) == []
    phases = record["phases"]
    assert [p["phase"] for p in record["plan"]] == list(phases)
    for name in ("environment", "ceilings", "matrix", "cost", "loaders", "t4_fit", "end_to_end", "compiled"):
        assert phases[name]["status"] == "ok", (name, phases[name])
    assert phases["memory"]["status"] == "skipped" and "CUDA" in phases["memory"]["reason"]
    hidden = "hidden by the rehearsal"
    packages = phases["environment"]["result"]["packages"]
    assert packages["ffcv"] == packages["nvidia-dali"] == "not installed"
    loaders = phases["loaders"]["result"]
    assert {b: hidden in why for b, why in loaders["skipped_backends"].items()} == \
        {"dali-gpu": True, "dali-cpu": True, "opencv": True, "ffcv": True}
    assert hidden in phases["t4_fit"]["result"]["loader_note"]
    cells = phases["matrix"]["result"]["cells"]
    assert {(c["layout"], c["precision"]) for c in cells} == {(lay, p) for lay in ("nchw", "channels_last")
                                                              for p in ("fp32", "bf16")}
    assert all(c["p10_s"] <= c["median_s"] <= c["p90_s"] for c in cells)
    assert json.loads((out / "calibration.json").read_text())["efficiency"]
    assert phases["end_to_end"]["result"]["updates"] >= 6
    # the layout comes down from the matrix, so each t4_fit child compiles its model once
    for row in phases["t4_fit"]["result"]["rows"]:
        assert row["fits"] and row["compilations"] == 1 and row["layout_from"].startswith("matrix"), row
    # compiled: t4_fit's configuration, with the photos' class count (before: the profiler's 100)
    compiled = phases["compiled"]["result"]["cells"]
    assert [c["compile"] for c in compiled] == [False, True] and compiled[1]["compile_s"] > 0
    assert all(c["num_classes"] == 3 and c["batch"] == 4 for c in compiled), compiled
    # 224 px (here 8 px) rows and 64 px rows stay apart: before, the 64 px rows were appended to the
    # same list, relabelled, and the headline took the 64 px rate
    main, small_rows = loaders["rows"], loaders["small_rows"]
    assert {r["set"] for r in main} == {"main"} and {r["set"] for r in small_rows} == {"small"}
    assert [r["backend"] for r in main] == ["nvjpeg", "pil-wds", "resident", "synthetic"]
    assert [r["backend"] for r in small_rows] == ["nvjpeg", "pil-wds"]
    head = loaders["headline"]
    assert head["nvjpeg img/s"] == main[0]["images_per_s"] and head["nvjpeg img/s at 64 px"] == small_rows[0]["images_per_s"]
    assert not any(k.startswith(("resident", "synthetic")) and "64 px" in k for k in head)
    assert loaders["images"] == "photos" and all(r["images"] == "photos" for r in main + small_rows)
    assert {"matrix.png", "cost.png", "loaders.png"} <= set(record["suite"]["charts"])
    assert len(list(out.iterdir())) <= 8
    summary = (out / "summary.md").read_text()
    assert "## Training-step matrix" in summary and "## Loaders" in summary and "### At 64 px" in summary


def test_a_phase_that_raises_is_recorded_and_the_run_goes_on(tmp_path):
    def broken(ctx):
        raise RuntimeError("cuDNN exploded")

    class Ctx:
        results: dict = {}
    phases = [Phase("first", lambda ctx: {"headline": {"x": 1.0}}, 1, 1, ""),
              Phase("broken", broken, 1, 1, ""),
              Phase("after", lambda ctx: {"headline": {"seen": float(len(ctx.results))}}, 1, 1, "")]
    record = Suite(phases, Ctx(), tmp_path, budget_s=60, smoke=True).run()
    assert [p["status"] for p in record["phases"].values()] == ["ok", "error", "ok"]
    assert "cuDNN exploded" in record["phases"]["broken"]["error"]
    assert "Traceback" in record["phases"]["broken"]["traceback"]
    assert record["phases"]["after"]["result"]["headline"]["seen"] == 2.0  # it saw the earlier records
    assert json.loads((tmp_path / "gpu.json").read_text())["phases"]["broken"]["status"] == "error"


def test_the_record_check_catches_empty_and_fake_numbers():
    bad = {"phases": {"a": {"status": "ok", "result": {"headline": {"img/s": 0}}},
                      "b": {"status": "ok", "result": {"headline": {"t": float("nan")}}},
                      "c": {"status": "skipped", "reason": ""},
                      "d": {"status": "error", "traceback": ""},
                      "e": {"status": "ok", "result": {}}}}
    assert len(headline_problems(bad)) == 5


def test_images_convert_without_ffcv_on_a_bare_gpu_machine(tmp_path, monkeypatch):
    """A bare GPU machine has no ffcv: the suite converts to shards only, instead of failing every
    phase that needs the converted photos."""
    from types import SimpleNamespace

    from bench.gpu import data as gpu_data
    monkeypatch.setattr(gpu_data, "unavailable", lambda b: "ffcv does not import" if b == "ffcv" else None)
    ctx = SimpleNamespace(data=None, images=None, small_images=None, smoke=True, work=tmp_path, repeat=2)
    data = gpu_data.prepare_data(ctx)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"] and not manifest["splits"]["train"]["beton"]
    assert not list(data.glob("ffcv/*.beton"))


def test_charts_pass_over_a_measured_phase_without_rows(tmp_path):
    """memory is `ok` with no rows on a GPU where no cell reported its peak: before the fix the chart
    called max() on nothing and the run ended without its charts."""
    from bench.gpu import report
    record = {"suite": {"started": "2026-12-04"},
              "phases": {name: {"status": "ok", "result": {"rows": []}} for name in ("memory", "cost")}}
    assert report.charts(record, tmp_path) == []


HIDDEN_CHECK = """
import importlib.metadata as m
for name in ("ffcv", "ffcv.libffcv", "nvidia.dali", "nvidia.dali.backend"):
    try:
        __import__(name)
        print("imported", name)
    except ImportError as e:
        print("hidden" if "rehearsal" in str(e) else repr(e))
print(sorted(d.metadata["Name"] for d in m.distributions() if d.metadata["Name"].lower().startswith(("ffcv", "nvidia-dali"))))
"""


def test_a_child_of_the_rehearsal_cannot_import_dali_or_ffcv(tmp_path):
    """The environment every child of a rehearsed suite gets (the suite's, through child_env)."""
    from bench.gpu.children import child_env
    from bench.gpu.lent import suite_env
    run = subprocess.run([sys.executable, "-c", HIDDEN_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=child_env(tmp_path, suite_env("tag", rehearse=True)))
    assert run.stdout.split("\n")[:5] == ["hidden"] * 4 + ["[]"], run.stdout + run.stderr
