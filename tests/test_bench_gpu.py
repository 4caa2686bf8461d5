"""`python -m bench.gpu --smoke`: the GPU suite's code paths on the CPU, so it cannot rot while no GPU
is at hand. Every phase is measured (positive, finite headline numbers), skipped with a reason, or
recorded with its traceback; a short budget skips late phases and still writes valid outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gpu.runner import Phase, Suite, headline_problems

ROOT = Path(__file__).resolve().parents[1]


def smoke(out: Path, *extra: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(out), *extra], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "summary.md").is_file()
    return json.loads((out / "gpu.json").read_text())


def test_smoke_run_measures_every_phase(tmp_path):
    # every phase but `environment`: --phases without it works (the cost phase used to need it)
    phases = "ceilings,matrix,memory,cost,loaders,t4_fit,end_to_end,compiled"
    record = smoke(tmp_path, "--budget-s", "1500", "--phases", phases)  # generous: CI machines are slow and shared
    assert headline_problems(record) == []
    phases = record["phases"]
    assert [p["phase"] for p in record["plan"]] == list(phases)
    for name in ("ceilings", "matrix", "cost", "loaders", "t4_fit", "end_to_end", "compiled"):
        assert phases[name]["status"] == "ok", (name, phases[name])
    assert phases["memory"]["status"] == "skipped" and "CUDA" in phases["memory"]["reason"]
    cells = phases["matrix"]["result"]["cells"]
    assert {(c["layout"], c["precision"]) for c in cells} == {(lay, p) for lay in ("nchw", "channels_last")
                                                              for p in ("fp32", "bf16")}
    assert all(c["p10_s"] <= c["median_s"] <= c["p90_s"] for c in cells)
    assert phases["compiled"]["result"]["cells"][0]["compile_s"] > 0
    assert json.loads((tmp_path / "calibration.json").read_text())["efficiency"]
    assert phases["end_to_end"]["result"]["updates"] >= 6
    # the layout comes down from the matrix, so each t4_fit child compiles its model once (before:
    # two compiled channels_last probes, then training: 3 graphs)
    for row in phases["t4_fit"]["result"]["rows"]:
        assert row["fits"] and row["compilations"] == 1 and row["layout_from"].startswith("matrix"), row
    # no --images: every loader verdict says it was measured on synthetic JPEGs
    loaders = phases["loaders"]["result"]
    assert {"resident", "synthetic"} <= {r["backend"] for r in loaders["rows"]}
    assert loaders["images"] == "synthetic" and all(r["images"] == "synthetic" for r in loaders["rows"])
    assert all(f["images"] == "synthetic" for r in loaders["rows"] for f in r.get("feeds", {}).values())
    for chart in record["suite"]["charts"]:
        assert (tmp_path / chart).stat().st_size > 0
    assert {"matrix.png", "cost.png", "loaders.png"} <= set(record["suite"]["charts"])
    summary = (tmp_path / "summary.md").read_text()
    assert "## Training-step matrix" in summary and "## Loaders" in summary
    assert "SYNTHETIC images" in summary and "synthetic: yes" in summary


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
