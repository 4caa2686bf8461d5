"""What a review of the CUDA paths found, each shown on the CPU (issue 14): loaders that free
abandoned epochs, no host syncs per update, compilations counted, telemetry that degrades per
metric, per-rank DALI seeds, a start-up out-of-memory retry, and installs that keep a platform torch."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from loaders import make_loader


@pytest.mark.parametrize("backend", ["ffcv", "opencv", "dali", "nvjpeg"])
def test_abandoned_epochs_leave_no_threads_behind(flat_converted, backend):
    """Take one batch per epoch and drop the rest, as max_steps_per_epoch does (the trainer
    closes the epoch's generator). Before the fix ffcv grew 3 -> 7 threads over five epochs."""
    out, _, _ = flat_converted
    loader = make_loader(backend, out, "train", batch_size=4, image_size=32, workers=2, last_batch="drop")
    counts = []
    for epoch in range(5):
        loader.set_epoch(epoch)
        batches = iter(loader)
        next(batches)
        batches.close()
        counts.append(threading.active_count())
    # A leak adds a thread per abandoned epoch (ffcv before the fix: +1 each epoch). nvjpeg's
    # file-reading pool may start its second (last) thread in any epoch: at most one more.
    assert counts[-1] - counts[1] <= 1, counts


def stand_in_nvml(monkeypatch, fail: dict | None = None):
    """Two GPUs as NVML numbers them; `fail` maps an NVML function to the error code it raises."""
    import pynvml
    fail = fail or {}
    gpus = {"nvml0": ("GPU-aaaa", "NVIDIA A100", 300_000), "nvml1": ("GPU-bbbb", "Tesla T4", 70_000)}

    def refusing(name, fn):
        def call(*args):
            if name in fail:
                raise pynvml.NVMLError(fail[name])
            return fn(*args)
        return call
    fake = {"nvmlInit": lambda: None,
            "nvmlDeviceGetHandleByIndex": lambda i: f"nvml{i}",
            "nvmlDeviceGetHandleByUUID": lambda u: next(h for h, g in gpus.items() if g[0] == u),
            "nvmlDeviceGetName": lambda h: gpus[h][1], "nvmlSystemGetDriverVersion": lambda: "525.147.05",
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: gpus[h][2], "nvmlDeviceGetMaxClockInfo": lambda h, k: 1590,
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=97, memory=60),
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0,
            "nvmlDeviceGetClockInfo": lambda h, kind: 1500, "nvmlDeviceGetPowerUsage": lambda h: gpus[h][2] // 2,
            "nvmlDeviceGetTemperature": lambda h, kind: 71,
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=9e9, total=16e9)}
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, refusing(name, fn))
    return pynvml


def sample_briefly(index=0):
    from fastmix.devices.telemetry import Telemetry
    with Telemetry(index, interval_s=0.01) as tel:
        time.sleep(0.1)
    return tel.summary()


def test_telemetry_watches_the_gpu_torch_means_not_nvmls_index(monkeypatch):
    """CUDA device 0 is NVML's GPU 1 here (CUDA_VISIBLE_DEVICES=1, or a different order): found
    by the UUID torch reports. Before the fix NVML's index 0 (the A100) was watched."""
    import torch

    from fastmix.devices.telemetry import device_info
    stand_in_nvml(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid="bbbb"))
    info = device_info(0)
    assert info["name"] == "Tesla T4" and info["power_limit_w"] == 70 and info["found_by"] == "uuid"
    s = sample_briefly(0)
    assert s["samples"] > 0 and s["power_w"]["median"] == 35 and s["found_by"] == "uuid"


def test_telemetry_degrades_per_metric_and_device_info_never_raises(monkeypatch):
    """An old driver without clock-event reasons and a vGPU without power readings: the other
    metrics are still sampled, the missing ones are named. Before the fix the sampler thread
    died on the first call (summary: samples 0) and device_info raised."""
    import pynvml

    from fastmix.devices.telemetry import device_info
    stand_in_nvml(monkeypatch, {"nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                                "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NOT_SUPPORTED,
                                "nvmlDeviceGetEnforcedPowerLimit": pynvml.NVML_ERROR_NOT_SUPPORTED})
    s = sample_briefly()
    assert s["samples"] >= 3 and s["sm_clock_mhz"]["median"] == 1500 and s["gpu_util"]["median"] == 97
    assert set(s["unsupported"]) == {"throttle", "power_w"} and "power_w" not in s
    assert "Not Supported" in s["unsupported"]["power_w"]
    info = device_info()
    assert info["name"] == "NVIDIA A100" and info["power_limit_w"] is None
    assert list(info["unsupported"]) == ["power_limit_w"]
    stand_in_nvml(monkeypatch, {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST})
    assert device_info()["available"] is False and "GPU is lost" in device_info()["reason"]
    lost = sample_briefly()
    assert lost["samples"] == 0 and "GPU is lost" in lost["error"]


@pytest.fixture(scope="module")
def identical_images(tmp_path_factory):
    """Eight copies of one non-symmetric gradient photo (2 classes): two ranks read the same
    pixels, so any difference between their batches comes from their random draws."""
    import numpy as np
    from PIL import Image

    from conftest import small_config
    from fastmix.data.convert import convert
    from fastmix.data.synth import class_wnids, jpeg_bytes
    root = tmp_path_factory.mktemp("identical")
    y, x = np.mgrid[0:60, 0:80]
    photo = jpeg_bytes(Image.fromarray(np.stack([x * 3, y * 4, (x * y) % 256], -1).astype(np.uint8)), quality=95)
    for split, n in (("train", 4), ("val", 1)):
        for wnid in class_wnids(2):
            (root / "src" / split / wnid).mkdir(parents=True)
            for k in range(n):
                (root / "src" / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(photo)
    convert(small_config(root / "src", root / "out", num_classes=2, formats=("wds",)))
    return root / "out"


def test_dali_ranks_draw_their_own_augmentations(identical_images):
    """Before the fix every rank seeded DALI alike and drew the same crops and flips."""
    import torch
    first = [next(iter(make_loader("dali", identical_images, "train", batch_size=4, image_size=32, workers=1,
                                   rank=rank, world_size=2)))[0] for rank in (0, 1)]
    assert not torch.equal(first[0], first[1])
    again = next(iter(make_loader("dali", identical_images, "train", batch_size=4, image_size=32, workers=1,
                                  rank=0, world_size=2)))[0]
    assert torch.equal(first[0], again)  # and a rank's own draws stay reproducible


@pytest.mark.parametrize("split", ["train", "val"])
def test_nvjpeg_batched_crop_resize_matches_torchvision_per_image(converted, split):
    """The batched geometry (one roi_align for the batch) against the per-image torchvision
    transforms it replaced, with the same random draws: crops, flips, the val resize + center
    crop. They differ only in the filter (box vs triangle): mean |diff| 1.2 / 255 measured."""
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from loaders.geometry import resized_crop_boxes
    out, _ = converted
    loader = make_loader("nvjpeg", out, split, batch_size=8, image_size=64, workers=1)
    cfg, decoded = loader.cfg, decode_jpeg(loader._read(range(8)), mode=ImageReadMode.RGB)
    batched = loader._crop_resize(decoded, np.random.default_rng(0))
    rng, reference = np.random.default_rng(0), []
    if cfg.is_train:  # the same draws: every crop box, then every flip
        boxes = resized_crop_boxes([i.shape[1] for i in decoded], [i.shape[2] for i in decoded], cfg.scale, cfg.ratio, rng)
        flips = rng.random(len(decoded)) < 0.5
    for k, img in enumerate(decoded):
        if cfg.is_train:
            x1, y1, x2, y2 = boxes[k].tolist()
            ref = F.resized_crop(img, y1, x1, y2 - y1, x2 - x1, [64, 64], antialias=True)
            reference.append(F.horizontal_flip(ref) if flips[k] else ref)
        else:
            reference.append(F.center_crop(F.resize(img, cfg.resize_to, antialias=True), [64, 64]))
    diff = (batched - torch.stack(reference).float()).abs()
    assert batched.shape == (8, 3, 64, 64) and diff.mean() < 2.5, float(diff.mean())


def test_dali_build_follows_torchs_cuda(monkeypatch):
    import importlib.metadata

    from loaders import dali
    assert dali.dali_package("12.4") == ("nvidia-dali-cuda120", "dali-cuda12")
    assert dali.dali_package("12.8")[0] == "nvidia-dali-cuda120"
    assert dali.dali_package("13.0") == ("nvidia-dali-cuda130", "dali")
    assert dali.dali_package(None)[0] == "nvidia-dali-cuda130"  # CPU-only torch: CI's pin
    with pytest.raises(ValueError, match="CUDA 11.8: DALI 2.x ships for CUDA 12 and 13 only"):
        dali.dali_package("11.8")
    import torch
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a T4 host on driver R535-R560, CI's DALI installed
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.4.0" if name == "nvidia-dali-cuda130" else real(name + "-not-installed"))
    with pytest.warns(UserWarning, match="nvidia-dali-cuda130 is installed but torch is built for CUDA 12.4: "
                                         "pip install nvidia-dali-cuda120"):
        dali.check_dali_build()


def test_installing_fastmix_keeps_the_installed_torch():
    """pip, offline, against this environment's torch: only fastmix itself would be installed, for
    the base package and the ffcv extra (torch is a floor, never a pin or a CUDA build)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for target in (".", ".[ffcv]"):
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--no-index",
                              "--quiet", "--report", "-", target], cwd=root, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert [i["metadata"]["name"] for i in json.loads(run.stdout)["install"]] == ["fastmix"], target
