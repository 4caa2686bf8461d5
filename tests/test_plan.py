"""The planner's arithmetic against hand-computed cases, and its CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastmix.devices.catalog import Device
from fastmix.perf import plan
from fastmix.perf.memory import GB, device_training_memory

ROOT = Path(__file__).resolve().parents[1]
# Stand-in step times (s) per resolution for micro-batch 16 and 64, and their ranges
STEP = {(16, 128): 0.1, (16, 224): 0.3, (64, 128): 0.4, (64, 224): 1.2}


def fake_predict(model, batch, precision, gpu, eff, size, num_classes):
    s = STEP[(batch, size)]
    return {"step_s": s, "range_s": (s / 2, 2 * s), "range_source": "test", "efficiency_source": "test"}


def gpu(memory_gb: float) -> Device:
    return Device("g", "G", fp32=10, fp16_tensor=100, bf16_tensor=None, bandwidth_gbs=500, memory_gb=memory_gb,
                  price_per_hour=2.0)


def test_epoch_schedule():
    assert plan.epoch_sizes(4, [128, 224]) == [128, 128, 224, 224]
    assert plan.epoch_sizes(10, [128, 160, 192, 224]) == [128] * 3 + [160] * 2 + [192] * 3 + [224] * 2
    assert plan.epoch_sizes(3, [224]) == [224] * 3
    with pytest.raises(ValueError, match="do not fit"):
        plan.epoch_sizes(2, [128, 160, 224])


def test_plan_arithmetic_by_hand(monkeypatch):
    monkeypatch.setattr(plan, "predict_step", fake_predict)
    rates = {"pil": {160: 100.0, 224: 50.0}}  # images/s per core
    # plenty of memory: the whole batch of 64 is one micro-batch
    r = plan.plan_gpu("convmixer_1024_20_ks9_p14", gpu(1000), epochs=4, sizes=[128, 224], batch=64,
                      train_images=6400, cores=2, loader_rates=rates)
    assert (r["micro_batch"], r["accum_steps"], r["steps_per_epoch"], r["precision"]) == (64, 1, 100, "fp16")
    hours = (2 * 100 * 0.4 + 2 * 100 * 1.2) / 3600          # 2 epochs at 128 px, 2 at 224 px
    assert r["hours"] == pytest.approx(hours)
    assert r["hours_range"] == pytest.approx((hours / 2, 2 * hours))
    assert r["dollars"] == pytest.approx(2.0 * hours) and r["dollars_range"][1] == pytest.approx(4.0 * hours)
    # GPU eats 64/0.4 = 160 img/s at 128 px (pil rate there: the 160-px one, 100/core) -> 1.6 cores;
    # 64/1.2 = 53.3 img/s at 224 px at 50/core -> 1.07 cores; the worst epoch decides
    assert r["loader"]["pil"]["cores_needed"] == pytest.approx(1.6)
    assert r["loader"]["pil"]["keeps_up"] is True
    # at the fast end of the range (step 0.2 s at 128 px): 320 img/s -> 3.2 cores, more than the 2
    assert r["loader"]["pil"]["cores_needed_at_fastest"] == pytest.approx(3.2)
    assert plan.verdict(r["loader"]["pil"]) == "tight" and "1.6 (≤3.2) tight" in plan.markdown([r])
    four = plan.plan_gpu("convmixer_1024_20_ks9_p14", gpu(1000), 4, [128, 224], batch=64, train_images=6400,
                         cores=4, loader_rates=rates)
    assert plan.verdict(four["loader"]["pil"]) == "ok"
    one_core = plan.plan_gpu("convmixer_1024_20_ks9_p14", gpu(1000), 4, [128, 224], batch=64, train_images=6400,
                             cores=1, loader_rates=rates)
    assert one_core["loader"]["pil"]["keeps_up"] is False and plan.verdict(one_core["loader"]["pil"]) == "TOO FEW"
    # memory between what 16 and 32 images need at 224 px (with a DALI pool per size): micro 16 x 4
    need16, need32 = (device_training_memory("convmixer_1024_20_ks9_p14", m, "fp16", 224, loader="dali",
                                             resolutions=[128, 224])["total"] for m in (16, 32))
    r = plan.plan_gpu("convmixer_1024_20_ks9_p14", gpu((need16 + need32) / 2 / GB), 4, [128, 224], batch=64,
                      train_images=6401, cores=2)
    assert (r["micro_batch"], r["accum_steps"], r["steps_per_epoch"]) == (16, 4, 401)
    assert r["hours"] == pytest.approx((2 * 401 * 0.1 + 2 * 401 * 0.3) / 3600)
    assert plan.plan_gpu("convmixer_1536_20", gpu(0.5), 4, [224], batch=64)["fits"] is False


def test_loader_rates_and_sizes_beyond_the_measured(tmp_path):
    f = tmp_path / "loaders.json"
    f.write_text(json.dumps({"rows": [{"backend": "pil", "image_size": 224, "images_per_s": 300, "cpu_cores_used": 2},
                                      {"backend": "synthetic", "image_size": 224, "images_per_s": 1e7,
                                       "cpu_cores_used": 51}]}))
    rates = plan.load_loader_rates(f)
    assert rates == {"pil": {224: 150.0}}
    assert plan.per_core_rate(rates["pil"], 128) == 150.0
    assert plan.per_core_rate(rates["pil"], 448) == pytest.approx(150.0 / 4)
    f.write_text("{}")
    with pytest.raises(ValueError, match="not a bench.loaders result"):
        plan.load_loader_rates(f)


def test_plan_cli_for_every_imagenet_variant(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "estimate_cost.py"), "--plan", "--epochs", "8",
                          "--progressive", "128:160:192:224", "--cores", "4", "--json", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    models = json.loads((tmp_path / "plan.json").read_text())
    assert len(models) == 3
    assert f"Loader rates per core: {ROOT / 'bench/results/loaders-cpu2.json'}" in out.stdout
    for rows in models.values():
        t4 = next(r for r in rows if r["gpu"] == "t4")
        assert t4["fits"] and t4["micro_batch"] * t4["accum_steps"] == 64
        assert t4["hours_range"][0] < t4["hours"] < t4["hours_range"][1] and set(t4["per_size"]) == {"128", "160", "192", "224"}
        assert "cores_needed" in t4["loader"]["ffcv"]
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "estimate_cost.py"), "--plan", "--progressive", "a:b"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--progressive" in bad.stderr
