"""Cores to feed (bench/feed.py) and the stage residual (bench/stages.py): the arithmetic the
README tables rest on, on hand-made rows."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import feed, stages
from fastmix.devices.catalog import load_catalog
from fastmix.perf.cost import Efficiency, predict_step


def loader_rows():
    row = {"image_size": 224, "images_per_s": 600.0, "cpu_cores_used": 2.0}
    return {"rows": [{**row, "backend": "ffcv"}, {**row, "backend": "ffcv-fulldecode", "variant_of": "ffcv"},
                     {**row, "backend": "pil:mmap", "variant_of": "pil"}, {**row, "backend": "synthetic"},
                     {**row, "backend": "pil", "images_per_s": 200.0, "image_size": 160}]}


def test_per_core_rates_skip_the_befores_and_synthetic():
    rates = feed.per_core_rates(loader_rows(), Path("x.json"))
    assert rates == {("ffcv", 224): 300.0, ("pil", 160): 100.0}


def test_a_row_without_cores_is_refused():
    with pytest.raises(ValueError, match="x.json: row ffcv at 224 px"):
        feed.per_core_rates({"rows": [{"backend": "ffcv", "image_size": 224, "images_per_s": 5.0,
                                       "cpu_cores_used": 0.0}]}, Path("x.json"))


def test_cores_to_feed_is_the_training_rate_over_the_loader_rate_per_core():
    catalog = load_catalog()
    rates = feed.per_core_rates(loader_rows(), Path("x.json"))
    rows = feed.table("convmixer_768_32", 64, [224, 160], rates, {}, Efficiency(), catalog)
    assert {r["gpu"] for r in rows} == set(catalog) - {"cpu"}
    h100 = next(r for r in rows if r["gpu"] == "h100" and r["image_size"] == 224)
    train = predict_step("convmixer_768_32", 64, "fp16", catalog["h100"], image_size=224)["images_per_s"]
    assert h100["cores_to_feed"] == {"ffcv": pytest.approx(train / 300.0, rel=1e-3)}
    # an uncalibrated rate comes with its range, and the cores to feed the fast end of it
    low, high = (64 / s for s in reversed(predict_step("convmixer_768_32", 64, "fp16", catalog["h100"],
                                                       image_size=224)["range_s"]))
    assert h100["train_images_per_s_range"] == [pytest.approx(low, abs=0.1), pytest.approx(high, abs=0.1)]
    assert low < train < high and h100["cores_to_feed_at_fastest"] == {"ffcv": pytest.approx(high / 300.0, rel=1e-3)}
    assert f"| {train:.0f} ({low:.0f}–{high:.0f}) |" in feed.markdown(rows)
    t4_160 = next(r for r in rows if r["gpu"] == "t4" and r["image_size"] == 160)
    assert set(t4_160["cores_to_feed"]) == {"pil"}  # no ffcv row at 160: no cell, not a guess
    measured = feed.table("convmixer_768_32", 64, [224], rates, {("t4", 224): 600.0}, Efficiency(), catalog)
    t4 = next(r for r in measured if r["gpu"] == "t4")
    assert t4["cores_to_feed"]["ffcv"] == 2.0 and t4["train_rate_source"].startswith("measured")
    assert "| NVIDIA T4 | 224 | fp16 | 600 (measured) | 2.0 |" in feed.markdown(measured)


def test_hand_off_is_what_the_loader_spent_beyond_its_stages():
    staged = [{"backend": "ffcv", "image_size": 224,
               "us_per_image": {"read": 10.0, "decode": 900.0, "crop/resize": 500.0, "flip": 20.0, "collate": 0.0,
                                "convert+normalize": 300.0, "decode_full_for_reference": 1234.0}}]
    rows = [{"backend": "ffcv", "image_size": 224, "images_per_s": 1000.0, "cpu_cores_used": 2.0,
             "workers": 2, "decode_limit_images_per_s": 2000.0}]
    stages.with_loader_rows(staged, rows)
    s = staged[0]
    assert s["loader_cpu_us_per_image"] == 2000.0  # 2 cores / 1000 img/s
    assert s["us_per_image"]["hand-off+other"] == 2000.0 - 1730.0  # the reference field is not a stage
    assert s["decode_limit_us_per_image"] == 1000.0


def test_benchmark_names_say_which_loader_and_which_before():
    from bench.loaders import ffcv_side, side_variant, variant_of
    assert ffcv_side("ffcv@320") == 320 and ffcv_side("ffcv@256:mmap") == 256
    assert ffcv_side("ffcv") is None and ffcv_side("pil:mmap") is None
    assert side_variant("data/x/", 320) == "data/x-ffcv320"
    assert variant_of("ffcv-fulldecode") == "ffcv" and variant_of("pil:mmap") == "pil"
    assert variant_of("ffcv@320") == "ffcv@320"  # a storage choice a user can pick, not a before
