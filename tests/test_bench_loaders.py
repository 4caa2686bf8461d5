"""The loader benchmark's fields mean what they say: cores used within the machine's cores, the
workers argument apart from the CPU count, cores-to-feed computed (not rounded to zero)."""
from __future__ import annotations

import os
from argparse import Namespace

import pytest

from bench.loaders import measure, verdicts


def row(**kw):
    return {"backend": "ffcv", "image_size": 224, "images_per_s": 500.0, "cpu_cores_used": 2.0,
            "model_images_per_s": 0.35, **kw}


def test_cores_to_feed_is_the_model_rate_over_the_per_core_loader_rate():
    rows = [row(), row(backend="dali-cpu", images_per_s=1000.0, cpu_cores_used=1.0, model_images_per_s=3000.0)]
    verdicts(rows, cpu_count=2)
    # 0.35 img/s / (500 img/s / 2 cores) = 0.0014 cores: small, but not 0.0
    assert rows[0]["cores_to_feed_model"] == pytest.approx(0.0014)
    assert rows[0]["bound"] == "compute-bound"
    assert rows[1]["cores_to_feed_model"] == pytest.approx(3.0) and rows[1]["bound"] == "loader-bound"


def test_more_cores_than_the_machine_has_is_refused():
    with pytest.raises(ValueError, match="51.5 cores used on a 2-core machine"):
        verdicts([row(backend="synthetic", cpu_cores_used=51.5)], cpu_count=2)


def test_a_fast_loader_is_measured_over_a_long_enough_window(flat_converted):
    """The synthetic loader finishes an epoch in microseconds; the window is stretched to
    min_seconds so CPU-time ticks cannot inflate the cores used."""
    data, _, _ = flat_converted
    args = Namespace(batch_size=8, device="cpu", workers=1, dtype="float32", imagefolder=None, epochs=1,
                     min_seconds=0.5)
    r = measure("synthetic", str(data), 32, args)
    assert r["seconds"] >= 0.5 and r["epochs"] > 1
    assert 0 <= r["cpu_cores_used"] <= (os.cpu_count() or 1) * 1.05


@pytest.mark.parametrize("backend", ["opencv", "ffcv"])
def test_stage_breakdown_times_every_stage_and_compares_with_pil(backend, converted):
    """bench.stages on the .beton readers: every stage timed, and the fast path's output close to
    torchvision's PIL RandomResizedCrop of the same bytes and boxes (a channel swap, a misplaced
    crop or a missing resize would land far below 30 dB)."""
    pytest.importorskip("ffcv")
    import cv2
    import torch

    from bench.stages import measure_stages
    threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        row = measure_stages(backend, str(converted[0]), 64, batch=8, repeats=1)
    finally:  # measure_stages pins this process to one thread
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    us = row["us_per_image"]
    assert {"read", "decode", "crop/resize", "flip", "collate", "convert+normalize"} <= set(us)
    assert all(v >= 0 for v in us.values()) and us["decode"] > 0
    assert row["psnr_vs_pil_db"] > 30, row
