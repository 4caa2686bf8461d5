"""Calibration predicts what it did not measure (leave-one-out on this CPU), and refuses to fit
nothing. CPU timings are noisy on a shared 2-core machine: the models are small, torch runs one
thread (no spinning barrier between two threads fighting other processes for cores), and the
bound is set from measurements with margin (see FACTOR)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastmix.devices.catalog import load_catalog
from fastmix.model.convmixer import ConvMixerConfig
from fastmix.perf import profiler
from fastmix.perf.calibration import run_calibration
from fastmix.perf.cost import Efficiency, predict_step
from fastmix.perf.opbench import OpCase, back_to_back_seconds, op_calibration
from fastmix.perf.profiler import ProfileSpec, build_step, calibrate

# Measured on the shared 2-core machine at load average 6-10 (3 other engineers' jobs): the
# op-level calibration's held-out predictions were 0.95x-2.0x the measured step (2-22 % off in
# a calmer run), the end-to-end one's within 0.6x-1.7x. A factor of 2.5 either way keeps the
# tests green under that load. The uncalibrated defaults predict 0.1x-0.45x (0.44x at load 3.6,
# 0.14x at load 8: load stretches the measurement, not the defaults), so the factor alone cannot
# tell a calibration from the defaults; each held-out prediction must also be much closer than
# the defaults' (`closer`), which a calibration returning the defaults fails by construction.
# On a quiet machine see bench/calibration.py (goal: 15 %).
FACTOR = 2.5
TINY = ConvMixerConfig(192, 4, kernel=7, patch=2, act="relu")   # not a registered variant


def within(predicted: float, measured: float) -> bool:
    return abs(math.log(predicted / measured)) < math.log(FACTOR)


def closer(predicted: float, default: float, measured: float) -> bool:
    """The calibrated prediction's error (log scale) is at most half the uncalibrated one's.
    Half, not merely less: a fit that ignores its timings (every efficiency 0.5) came out 55 %
    low against the defaults' 65 % and must fail too."""
    return abs(math.log(predicted / measured)) < abs(math.log(default / measured)) / 2
CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def measured_step(batch: int, size: int) -> float:
    step, _ = build_step(ProfileSpec("convmixer_256_8", batch, size, "fp32", "off"), CPU, config=TINY)
    return back_to_back_seconds(step, CPU, reps=2)


def op_level_attempt(cpu) -> list[tuple]:
    """One calibration on isolated ops at batches 2 and 6 (32 px), then whole steps measured at
    another batch, and at another batch and resolution: (case, predicted, default, measured)."""
    cal = op_calibration([OpCase(TINY, 32, b) for b in (2, 6)], CPU, cpu, reps=5)
    assert {"depthwise:k7:nchw", "pointwise:nchw", "activation:relu:nchw", "optimizer"} <= set(cal["op_efficiency"])
    eff = Efficiency(ops=cal["op_efficiency"], step_overhead_s=cal["step_overhead_s"],
                     overhead_per_op_s=cal["overhead_per_op_s"], source="op-level")
    rows = []
    for batch, size in [(4, 32), (12, 48)]:  # the second: ops, not fixed costs, dominate
        measured = measured_step(batch, size)
        rows.append(((batch, size), predict_step(TINY, batch, "fp32", cpu, eff, size)["step_s"],
                     predict_step(TINY, batch, "fp32", cpu, Efficiency(), size)["step_s"], measured))
    return rows


def test_op_level_calibration_predicts_held_out_steps(one_thread):
    """Up to three tries, each calibrating afresh and measuring afresh; one where every held-out
    step is within FACTOR and much closer than the defaults passes. A load spike between the op
    timings and the step timings failed this once in CI (each ran in a different spell of the
    shared machine); a calibration that ignores its timings fails every try by construction."""
    cpu = load_catalog()["cpu"]
    tries = []
    for _ in range(3):
        rows = op_level_attempt(cpu)
        tries.append(rows)
        if all(within(p, m) and closer(p, d, m) for _, p, d, m in rows):
            return
    pytest.fail(f"no try predicted the held-out steps (case, predicted, default, measured): {tries}")


def test_end_to_end_calibration_leave_one_out(tmp_path, one_thread):
    """Calibrate on one configuration (profiler breakdown), predict two held-out ones."""
    specs = [ProfileSpec("convmixer_256_8", 4, 32, "fp32", "off"), ProfileSpec("convmixer_256_8", 8, 32, "fp32", "off"),
             ProfileSpec("convmixer_256_8", 4, 48, "fp32", "off")]
    result = run_calibration(specs, tmp_path, steps=4, warmup=2, device="cpu", with_ceilings=False)
    held_out = [r for r in result["predictions"] if not r["calibration"]]
    assert len(held_out) == 2
    for r in held_out:
        assert within(r["predicted_s"], r["measured_s"]), r
        assert closer(r["predicted_s"], r["uncalibrated_s"], r["measured_s"]), r
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["held_out_error"] == pytest.approx(max(abs(r["error"]) for r in held_out))
    assert saved["environment"]["torch"] == torch.__version__ and saved["catalog_entry"] == "cpu"
    assert (tmp_path / "predicted_vs_measured.png").stat().st_size > 0
    assert "| configuration |" in (tmp_path / "predicted_vs_measured.md").read_text()
    eff = Efficiency.load(tmp_path / "calibration.json")
    assert eff.values == result["efficiency"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a fastmix calibration"):
        Efficiency.load(tmp_path / "bad.json")
    p = predict_step("convmixer_256_8", 8, "fp32", load_catalog()["cpu"], eff, 32)
    assert p["range_s"][0] < p["step_s"] < p["range_s"][1] and "held-out" in p["range_source"]


def test_calibrate_refuses_an_empty_breakdown():
    """torch.compile's kernels are not aten:: ops: the breakdown is all zeros. No silent defaults."""
    m = {"spec": ProfileSpec("convmixer_256_8", 4, 32, "fp32", "off").__dict__, "precision": "fp32",
         "median_s": 0.1, "breakdown_s": {"gemm": 0.0, "depthwise": 0.0, "elementwise": 0.0, "optimizer": 0.0,
                                          "other": 0.2}}
    with pytest.raises(RuntimeError, match="no time to any op class"):
        calibrate(m, load_catalog()["cpu"])


def test_unknown_gpu_is_measured_not_a_key_error(monkeypatch):
    """A GPU missing from the catalog: its ceilings stand in for peaks, marked "peak unknown"."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA RTX PRO 9999")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a: type("P", (), {"total_memory": 48e9})())
    measured = {"fp32": 50.0, "fp16": 400.0, "bf16": 390.0}
    monkeypatch.setattr(profiler, "ceilings", lambda dev, prec: {"matmul_tflops": measured[prec], "copy_gbs": 1500.0})
    with pytest.warns(UserWarning, match="not in the device catalog"):
        dev, known = profiler.device_entry(torch.device("cuda"))
    assert not known and dev.key == "nvidia-rtx-pro-9999" and "peak unknown" in dev.source
    assert (dev.fp32, dev.fp16_tensor, dev.bf16_tensor, dev.bandwidth_gbs, dev.memory_gb) == (50, 400, 390, 1500, 48)
    assert profiler.device_entry(CPU)[1]


def test_sweeps_are_pooled_into_one_measurement_per_spec():
    """bench.calibration measures every configuration in several sweeps: their steps pool into one
    median, and the derived rates follow the pooled median, not the first sweep's."""
    first = {"spec": {"batch": 4}, "times_s": [1.0, 1.2, 1.1], "median_s": 1.1, "mfu": 0.2,
             "model_flops_per_step": 2e12, "max_memory_allocated_gb": 3.0}
    second = {**first, "times_s": [2.0, 2.2, 2.1], "median_s": 2.1, "max_memory_allocated_gb": 3.5}
    m = profiler.pooled([first, second])
    assert m["steps"] == 6 and m["sweeps"] == 2 and m["median_s"] == pytest.approx(1.6)
    assert m["images_per_s"] == pytest.approx(4 / 1.6) and m["achieved_tflops"] == pytest.approx(2 / 1.6)
    assert m["mfu"] == pytest.approx(0.2 * 1.1 / 1.6) and m["max_memory_allocated_gb"] == 3.5
    assert m["p10_s"] == 1.0 and m["p90_s"] == 2.2


def test_each_spec_pools_its_own_sweeps():
    """The sweeps run every spec in turn; spec i's measurement pools spec i's runs only."""
    from fastmix.perf.calibration import measured_in_sweeps
    specs = [ProfileSpec("convmixer_256_8", b, 32, "fp32", "off") for b in (1, 2, 3)]
    order = []

    def fake(k, i, s):
        order.append((k, i))
        t = float(s.batch) + k / 10  # spec's batch, sweep in the decimals
        return {"spec": {"batch": s.batch}, "times_s": [t], "median_s": t, "mfu": 0.1, "model_flops_per_step": 1e9}
    got = measured_in_sweeps(specs, 2, fake)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [m["times_s"] for m in got] == [[1.0, 1.1], [2.0, 2.1], [3.0, 3.1]]


def test_ops_are_timed_round_robin_over_the_cases():
    from fastmix.perf.opbench import round_robin
    assert round_robin([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]) == ["a1", "b1", "c1", "a2", "c2", "a3"]
