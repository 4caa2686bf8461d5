"""A real learning check: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10
classes) written as an ImageFolder of JPEGs, converted by tools/convert_subset.py, and learned
by a small ConvMixer through the FFCV and DALI (CPU) loaders to >= 95 % val top-1."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from fastmix.train.recipe import TrainConfig
from fastmix.data.synth import class_wnids
from fastmix.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def write_digits(root: Path, size: int = 32) -> None:
    """Every 5th image (in a seeded order) to val, the rest to train; upsampled, RGB JPEGs."""
    digits = load_digits()
    wnids = class_wnids(10)
    for k, i in enumerate(np.random.default_rng(0).permutation(len(digits.target))):
        split, wnid = ("val" if k % 5 == 0 else "train"), wnids[digits.target[i]]
        pixels = (digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        (root / split / wnid).mkdir(parents=True, exist_ok=True)
        img.save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=95)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "src")
    cmd = [sys.executable, str(ROOT / "tools/convert_subset.py"), "--source", str(root / "src"),
           "--out", str(root / "data"), "--num-classes", "10", "--shard-size", "500"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return root / "data"


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_small_convmixer_learns_digits(digits, tmp_path, backend):
    cfg = TrainConfig(data=str(digits), out=str(tmp_path), backend=backend, workers=2, device="cpu",
                      precision="fp32", channels_last="off", model="convmixer_256_8",
                      model_overrides={"dim": 64, "depth": 4, "kernel": 5, "patch": 2},
                      batch_size=32, micro_batch=32, epochs=8, image_size=32, lr=0.01,
                      # digits are not mirror-symmetric and too small for RandAugment's crops
                      crop_scale=(0.6, 1.0), hflip=False, rand_augment=None, mixup=0, cutmix=0, reprob=0)
    summary = Trainer(cfg).fit()
    last = summary["epochs"][-1]
    assert float(last["top1"]) >= 95.0, summary["epochs"]
    assert summary["augmentations"] == {"random-resized-crop": "cpu"}


def write_digits_cifar(path: Path, size: int = 32) -> Path:
    """The same digits and split as write_digits, as a CIFAR-10-format tarball (32 px, RGB)."""
    from cifar_format import write_cifar10
    digits = load_digits()
    splits = {"train": ([], []), "val": ([], [])}
    for k, i in enumerate(np.random.default_rng(0).permutation(len(digits.target))):
        pixels = (digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        images, labels = splits["val" if k % 5 == 0 else "train"]
        images.append(np.asarray(img))
        labels.append(int(digits.target[i]))
    as_arrays = {s: (np.stack(x), np.array(y)) for s, (x, y) in splits.items()}
    return write_cifar10(path, as_arrays["train"], as_arrays["val"], names=[f"digit_{d}" for d in range(10)])


def test_digits_as_cifar_learn_through_the_resident_loader(tmp_path):
    """The CIFAR path end to end on real data: tarball -> convert_subset -> resident loader ->
    >= 95 % val top-1; then tools/evaluate.py on the run's checkpoints reproduces the trainer's
    own val top-1 (best.pt) and EMA top-1 (last.pt --ema) exactly. Patch 4 on the 4x-upsampled
    digits is one source pixel per patch. The training time is printed (pytest -s), not asserted:
    speed belongs to benchmarks."""
    import time
    tarball = write_digits_cifar(tmp_path / "digits-python.tar.gz")
    cmd = [sys.executable, str(ROOT / "tools/convert_subset.py"), "--source", str(tarball),
           "--out", str(tmp_path / "data"), "--formats", "wds", "--workers", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    start = time.perf_counter()
    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), backend="resident", workers=2,
                      device="cpu", precision="fp32", channels_last="off", model="convmixer_256_8",
                      model_overrides={"dim": 64, "depth": 4, "kernel": 3, "patch": 4},
                      batch_size=32, micro_batch=32, epochs=6, image_size=32, crop_ratio=1.0, lr=0.01,
                      crop_scale=(0.6, 1.0), hflip=False, rand_augment=None, mixup=0, cutmix=0, reprob=0,
                      ema=True, ema_decay=0.99)
    summary = Trainer(cfg).fit()
    elapsed = time.perf_counter() - start
    last = summary["epochs"][-1]
    assert float(last["top1"]) >= 95.0, summary["epochs"]
    assert float(last["train_top1"]) >= 90.0, summary["epochs"]  # no mixup: train accuracy is logged
    assert summary["augmentations"] == {"random-resized-crop": "cpu"}
    print(f"digits through the resident loader: {elapsed:.0f} s for {cfg.epochs} epochs, top-1 {last['top1']}")

    sys.path.insert(0, str(ROOT / "tools"))
    import evaluate as evaluate_tool
    best = evaluate_tool.main(["--checkpoint", str(tmp_path / "run/best.pt"), "--data", str(tmp_path / "data"),
                               "--device", "cpu", "--workers", "1"])
    assert best["top1"] == summary["best_top1"] and best["eval_images"] == 360
    ema = evaluate_tool.main(["--checkpoint", str(tmp_path / "run/last.pt"), "--data", str(tmp_path / "data"),
                              "--device", "cpu", "--workers", "1", "--ema"])
    assert ema["top1"] == float(last["ema_top1"]) and ema["ema"] is True
