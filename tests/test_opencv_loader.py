"""The opencv backend (loaders/opencv_loader.py): its resize stands in for PIL's antialiased
bilinear, its DCT-scaled decode keeps the crop's pixels, its batches do not depend on the
thread count, and a damaged sample is named. Every-backend checks (exactly once, labels,
sharding, val agreement, crop geometry, abandoned epochs) are in test_loaders, test_loader_geometry
and test_gpu_ready."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ffcv")
cv2 = pytest.importorskip("cv2")

from loaders import make_loader  # noqa: E402
from loaders.opencv_loader import resize_into  # noqa: E402


def texture(h: int, w: int) -> np.ndarray:
    """Photo-like detail up to near the Nyquist limit: what a shrink aliases if unfiltered."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3))
    for _ in range(12):
        f, angle, phase = rng.uniform(0.05, 0.45), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi, 3)
        wave = x * np.cos(angle) + y * np.sin(angle)
        img += np.sin(2 * np.pi * f * wave[..., None] + phase) * rng.uniform(5, 15)
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("factor", [0.8, 1.1, 1.5, 1.9])
def test_resize_is_close_to_pils_antialiased_bilinear(factor):
    """Within 1.25x plain bilinear already matches PIL; beyond, the Gaussian before it does the
    antialiasing. Plain bilinear at 1.5x / 1.9x is far off on the same texture (shown below)."""
    out = 96
    src = texture(round(out * factor), round(out * factor * 1.1))
    reference = np.asarray(Image.fromarray(src).resize((out, out), Image.BILINEAR))
    dst = np.empty((out, out, 3), np.uint8)
    resize_into(src, dst)
    plain = cv2.resize(src, (out, out), interpolation=cv2.INTER_LINEAR)
    assert psnr(dst, reference) > 35, (psnr(dst, reference), psnr(plain, reference))
    if factor > 1.25:
        assert psnr(dst, reference) > psnr(plain, reference) + 5


def test_flip_writes_the_mirror():
    src = texture(150, 170)
    plain, mirrored = np.empty((64, 64, 3), np.uint8), np.empty((64, 64, 3), np.uint8)
    resize_into(src, plain)
    resize_into(src, mirrored, flip=True)
    assert np.array_equal(mirrored, plain[:, ::-1])


def test_scaled_decode_keeps_the_crop(converted):
    """A crop twice the output decodes at 1/2 scale; its pixels match the full decode's crop."""
    out, _ = converted
    loader = make_loader("opencv", out, "train", image_size=64, workers=1)
    store = loader.store
    i = int(np.argmax(store.heights * store.widths))
    h, w = int(store.heights[i]), int(store.widths[i])
    scaled, d = loader._decode(i, h, w)
    full, one = loader._decode(i, 100, 100)
    assert (d, one) == (4, 1) and scaled.shape[:2] == (-(-h // 4), -(-w // 4))
    a, b = np.empty((64, 64, 3), np.uint8), np.empty((64, 64, 3), np.uint8)
    resize_into(scaled, a)
    resize_into(full, b)
    assert np.abs(a.astype(int) - b).mean() < 3  # levels of 255: the same picture


def test_batches_do_not_depend_on_the_thread_count(flat_converted):
    out, _, _ = flat_converted
    runs = []
    for workers in (1, 3):
        loader = make_loader("opencv", out, "train", batch_size=8, image_size=32, workers=workers)
        loader.set_epoch(2)
        runs.append([(x, y) for x, y in loader])
    assert len(runs[0]) == len(runs[1])
    for (xa, ya), (xb, yb) in zip(*runs):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_an_undecodable_sample_is_named(converted, tmp_path):
    from fastmix.data.beton import StoredImages
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    beton = out / "ffcv" / "train.beton"
    store = StoredImages(beton)
    victim = int(np.flatnonzero(store.is_jpeg)[0])
    data = bytearray(beton.read_bytes())
    p = int(store.offsets[victim])
    data[p:p + int(store.sizes[victim])] = bytes(int(store.sizes[victim]))  # zeros: no JPEG markers
    beton.write_bytes(bytes(data))
    loader = make_loader("opencv", out, "train", batch_size=4, image_size=32, workers=1, train=False)
    with pytest.raises(ValueError, match=f"train.beton: sample {victim} is not a decodable JPEG"):
        for _ in loader:
            pass


def test_an_abandoned_epoch_stops_its_work(flat_converted):
    """Closing the epoch early cancels the batches not started and waits for the running ones:
    nothing decodes after close() returns (without the wait, the two running batches would
    still be inside their 0.3 s here)."""
    import time
    out, _, _ = flat_converted
    loader = make_loader("opencv", out, "train", batch_size=2, image_size=32, workers=2)
    started, finished, make = [], [], loader._batch

    def slow(ids, seed):
        started.append(seed)
        time.sleep(0.3)
        result = make(ids, seed)
        finished.append(seed)
        return result
    loader._batch = slow
    batches = iter(loader)
    next(batches)
    batches.close()
    assert len(finished) == len(started) < len(loader)
    time.sleep(0.5)
    assert len(started) == len(finished)  # nothing cancelled started later
