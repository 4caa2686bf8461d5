"""Cost model: analytic FLOPs vs torch's counter, the report's Table 2, the catalog, scaling of
predictions, the CLI, and telemetry without NVML (calibration: tests/test_calibration.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmix.devices.catalog import load_catalog, lookup
from fastmix.perf.cost import Efficiency, predict_run, predict_step, reproduce_report
from fastmix.model.flops import convmixer_ops, counted_flops, totals
from fastmix.model.convmixer import VARIANTS, create_model, num_params
from fastmix.devices.telemetry import Telemetry, device_info

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_analytic_flops_match_torch_flop_counter(name):
    res, batch = (32, 4) if name == "convmixer_256_8" else (224, 2)
    with torch.device("meta"):  # shapes only: no memory, no compute
        model, x = create_model(name, num_classes=100), torch.randn(batch, 3, res, res)
    t = totals(convmixer_ops(VARIANTS[name], res, 100))
    forward = counted_flops(model, x, train=False, fix_grouped_backward=False) / batch
    train = counted_flops(model, x) / batch
    assert forward == pytest.approx(t.fwd_model_flops, rel=0.01)
    assert train == pytest.approx(t.train_model_flops, rel=0.01)
    assert t.params == num_params(model)
    # torch's own conv-backward formula counts depthwise weight gradients as dense convs
    assert counted_flops(model, x, fix_grouped_backward=False) / batch > 5 * t.train_model_flops


@pytest.mark.parametrize("name,factor", [("convmixer_768_32", 16), ("convmixer_1536_20", 27)])
def test_documented_stock_counter_overcount(name, factor):
    """docs/cost.md's "16x / 27x": torch's stock FlopCounterMode over true training FLOPs, the truth
    written out here by hand (not from fastmix/model/flops.py): per image, the stem conv
    2*n*h*3*p^2, per block the depthwise 2*n*h*k^2 and the pointwise 2*n*h^2, the head 2*h*classes;
    training = 3x forward less the stem's input gradient."""
    from torch.utils.flop_counter import FlopCounterMode
    c = VARIANTS[name]
    with torch.device("meta"):
        model, x = create_model(name, num_classes=100), torch.randn(2, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    n, h = (224 // c.patch) ** 2, c.dim
    stem = 2 * n * h * 3 * c.patch ** 2
    forward = stem + c.depth * (2 * n * h * c.kernel ** 2 + 2 * n * h * h) + 2 * h * 100
    assert round(counter.get_total_flops() / 2 / (3 * forward - stem)) == factor
    text = " ".join((ROOT / "docs" / "cost.md").read_text().split())  # the page wraps lines
    assert "16× the true training FLOPs of 768/32 and 27× for 1536/20" in text


def test_the_reports_table_2_under_its_own_convention():
    rows = {r["model"]: r for r in reproduce_report()}
    assert f"{rows['convmixer_768_32']['flops']:.2g}" == "7.5e+18"
    assert f"{rows['convmixer_1536_20']['flops']:.2g}" == "1.9e+19"
    assert rows["convmixer_768_32"]["T4_hours"] == pytest.approx(420, rel=0.01)
    # corrected: 2 FLOPs per multiply-add and the depthwise convs: > 2x the report's count
    corrected = totals(convmixer_ops(VARIANTS["convmixer_768_32"], 224, 1000)).train_model_flops * 1.28e6 * 100
    assert corrected / rows["convmixer_768_32"]["flops"] == pytest.approx(2 * 20.68 / 19.55, rel=0.02)


def test_catalog_is_sane_and_overridable(tmp_path):
    catalog = load_catalog()
    assert {"t4", "v100", "a10g", "l4", "a100-40gb", "a100-80gb", "h100", "h200", "cpu"} <= set(catalog)
    for dev in catalog.values():
        assert dev.fp32 > 0 and dev.bandwidth_gbs > 0 and dev.memory_gb > 0 and dev.price_per_hour > 0
        assert dev.source
        for tensor in (dev.fp16_tensor, dev.bf16_tensor):
            assert tensor is None or tensor >= dev.fp32
    assert catalog["t4"].bf16_tensor is None and not catalog["t4"].supports("bf16")
    assert catalog["h100"].peak_tflops("bf16") > catalog["a100-80gb"].peak_tflops("bf16") > catalog["t4"].peak_tflops("fp16")
    assert lookup(catalog, "Tesla T4").key == "t4" and lookup(catalog, "NVIDIA H100 80GB HBM3").key == "h100"
    with pytest.raises(KeyError, match="not in the catalog"):
        lookup(catalog, "NVIDIA L40S")
    user = tmp_path / "mine.yaml"
    user.write_text("t4: {price_per_hour: 0.2}\nmi300x: {name: AMD MI300X, fp32: 163, fp16_tensor: 1307, "
                    "bf16_tensor: 1307, bandwidth_gbs: 5300, memory_gb: 192, price_per_hour: 4}\n")
    mine = load_catalog(user)
    assert mine["t4"].price_per_hour == 0.2 and mine["t4"].fp16_tensor == 65 and "mi300x" in mine
    user.write_text("broken: {name: x, fp32: 1}\n")
    with pytest.raises(ValueError, match="missing"):
        load_catalog(user)


def test_predictions_scale_as_they_must():
    t4 = load_catalog()["t4"]
    base = predict_run("convmixer_768_32", t4, "fp16", 64, 32, train_images=128_000, epochs=10)
    assert predict_run("convmixer_768_32", t4, "fp16", 64, 32, train_images=128_000, epochs=20)["hours"] == \
        pytest.approx(2 * base["hours"])
    assert predict_run("convmixer_768_32", t4, "fp16", 64, 32, train_images=256_000, epochs=10)["hours"] == \
        pytest.approx(2 * base["hours"], rel=1e-3)
    assert base["dollars"] == pytest.approx(base["hours"] * t4.price_per_hour)
    steps = [predict_step("convmixer_768_32", b, "fp16", t4)["step_s"] for b in (8, 16, 32, 64)]
    assert steps == sorted(steps)
    for small, big in zip(steps, steps[1:]):  # more images per step, never more time per image
        assert small < big <= 2 * small * (1 + 1e-9)
    assert predict_step("convmixer_1536_20", 32, "fp16", t4)["step_s"] > steps[2]
    h100 = load_catalog()["h100"]
    assert predict_run("convmixer_768_32", h100, "bf16", 64, 64, 128_000, 10)["hours"] < base["hours"]


def test_telemetry_degrades_cleanly_without_nvml(monkeypatch):
    import pynvml

    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    with Telemetry() as tel:
        pass
    summary = tel.summary()
    assert summary["available"] is False and "NVML unavailable" in summary["reason"]
    assert device_info()["available"] is False


def cli(tool, *args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], capture_output=True, text=True,
                          timeout=300)


def test_estimate_cost_cli(tmp_path):
    table = cli("estimate_cost.py")
    assert table.returncode == 0, table.stderr
    assert "convmixer_768_32 | t4 | fp16 | 32" in table.stdout and "h100" in table.stdout
    cli("estimate_cost.py", "--json", str(tmp_path / "l4.json"), "--model", "convmixer_768_32", "--gpu", "l4")
    rows = json.loads((tmp_path / "l4.json").read_text())
    assert rows[0]["gpu"] == "l4" and rows[0]["precision"] == "bf16" and rows[0]["hours"] > 0
    report = cli("estimate_cost.py", "--reproduce-report").stdout
    assert "7.5e+18" in report and "| 417 |" in report and "Corrected" in report
    bad = cli("estimate_cost.py", "--gpu", "tpu-v9")
    assert bad.returncode == 2 and "unknown GPU" in bad.stderr
    assert cli("profile_gpu.py", "--help").returncode == 0


def test_telemetry_samples_and_summarizes_what_nvml_reports(monkeypatch):
    """The sampling thread against a stand-in NVML (no GPU here): values, spread, throttle share."""
    import time
    from types import SimpleNamespace

    import pynvml
    clocks = iter(range(1000, 100000, 10))
    fake = {"nvmlInit": lambda: None, "nvmlDeviceGetHandleByIndex": lambda i: "gpu0",
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=97, memory=60),
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: pynvml.nvmlClocksEventReasonSwPowerCap,
            "nvmlDeviceGetClockInfo": lambda h, kind: next(clocks) if kind == pynvml.NVML_CLOCK_SM else 1593,
            "nvmlDeviceGetPowerUsage": lambda h: 69_500, "nvmlDeviceGetTemperature": lambda h, kind: 71,
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=9e9, total=16e9)}
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    with Telemetry(interval_s=0.01) as tel:
        time.sleep(0.2)
    s = tel.summary()
    assert s["available"] and s["samples"] >= 5
    assert s["power_w"]["median"] == 69.5 and s["gpu_util"]["median"] == 97 and s["temperature_c"]["max"] == 71
    assert s["sm_clock_mhz"]["min"] == 1000 and s["sm_clock_mhz"]["max"] > 1000
    assert s["memory_used_gb"]["median"] == 9.0 and s["throttle_share"] == {"power cap": 1.0}


def test_predictions_carry_ranges_and_name_their_calibration(tmp_path, monkeypatch):
    from fastmix.perf import cost
    cat = load_catalog()
    monkeypatch.setattr(cost, "CALIBRATIONS", tmp_path)
    cost.default_spread.cache_clear()
    p = predict_step("convmixer_768_32", 32, "fp16", cat["t4"])
    lo, hi = p["range_s"]
    assert p["efficiency_source"] == "defaults (uncalibrated)" and "at least x/÷1.5" in p["range_source"]
    assert lo < p["step_s"] < hi and hi / lo > 1.5 ** 2 * 0.99   # every class spread x/÷ 1.5
    # a packaged T4 calibration: used for the T4 only, named, range = +/- its held-out error;
    # its op timings spread the GEMM class x/÷ sqrt(0.4 / 0.1) = 2 for uncalibrated devices
    rows = [{"key": "pointwise:nchw", "ideal_s": e, "measured_s": 1.0} for e in (0.1, 0.2, 0.4)]
    (tmp_path / "t4.json").write_text(json.dumps({
        "op_efficiency": {"pointwise:nchw": {"efficiency": 0.5, "overhead_s": 0.0}}, "held_out_error": 0.1,
        "catalog_entry": "t4", "op_measurements": rows}))
    cost.default_spread.cache_clear()
    t4 = predict_step("convmixer_768_32", 32, "fp16", cat["t4"])
    assert t4["efficiency_source"].endswith("t4.json") and "held-out" in t4["range_source"]
    assert t4["range_s"] == pytest.approx((0.9 * t4["step_s"], 1.1 * t4["step_s"]))
    assert t4["step_s"] != p["step_s"]
    l4 = predict_step("convmixer_768_32", 32, "bf16", cat["l4"])
    assert l4["efficiency_source"] == "defaults (uncalibrated)" and "t4 (3 op timings)" in l4["range_source"]
    assert cost.default_spread()[0]["gemm"] == pytest.approx(2.0)
    explicit = predict_step("convmixer_768_32", 32, "fp16", cat["t4"], Efficiency())
    assert explicit["step_s"] == pytest.approx(p["step_s"])
    cost.default_spread.cache_clear()
