"""The default recipe's augmentations on every backend that runs on a CPU (issue 21 item 2).

timm's severest posterize keeps 0 bits, which Pillow 13 refuses ("bits must be between 1 and 8"):
pil and pil-wds crashed under every recipe but cifar10. Every RandAugment op now runs at both
ends of its magnitude range, and one epoch trains on each backend with the t4 recipe's
RandAugment, random erasing and mixup/cutmix (tiny model and images)."""
from __future__ import annotations

import copy
import importlib.util
import math
import re

import numpy as np
import pytest
from PIL import Image

from fastmix.train.recipe import load_recipe
from fastmix.train.trainer import Trainer
from loaders.common import LoaderConfig
from loaders.pil import pil_transform
from test_train import rows, tiny

T4 = load_recipe("t4")
CPU_BACKENDS = ["pil", "pil-wds", "ffcv", "opencv", "dali", "nvjpeg", "resident", "synthetic"]


def at_magnitude(policy: str, m: int) -> str:
    """The policy with its magnitude set to `m` and no magnitude noise (every op at one level)."""
    policy = re.sub(r"-mstd[0-9.]+", "", policy)
    return re.sub(r"-m[0-9.]+", f"-m{m}", policy) if re.search(r"-m[0-9]", policy) else f"{policy}-m{m}"


def rand_augment_of(policy: str):
    cfg = LoaderConfig(data="unused", split="train", image_size=32, rand_augment=policy)
    (ra,) = [t for t in pil_transform(cfg).transforms if type(t).__name__ == "RandAugment"]
    return ra


@pytest.mark.parametrize("policy", [T4.rand_augment, "rand-m9-n2"])  # increasing and timm's original ops
@pytest.mark.parametrize("magnitude", [0, 10])
def test_every_rand_augment_op_runs_at_both_ends_of_its_range(policy, magnitude):
    """Before: PosterizeIncreasing at 10 (the t4 policy, reached through its mstd noise) and
    Posterize at 0 raised inside Pillow 13. At 0 bits the image is black, as Pillow <= 12, TF and
    torchvision make it (the reference reproduction's augmentation)."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    ra = rand_augment_of(at_magnitude(policy, magnitude))
    for op in ra.ops:
        op = copy.copy(op)
        op.prob = 1.0
        out = op(img)
        assert out.size == img.size and out.mode == "RGB", op.name
        if op.name.startswith("Posterize") and op.level_fn(op.magnitude, op.hparams)[0] == 0:
            assert np.asarray(out).max() == 0, op.name
    assert any(op.name.startswith("Posterize") for op in ra.ops)


def test_the_t4_recipe_augments_everything_it_can():
    assert T4.rand_augment and T4.reprob > 0 and T4.mixup > 0 and T4.cutmix > 0


def runnable(backend: str) -> bool:
    needs = {"ffcv": "ffcv", "opencv": "cv2", "dali": "nvidia.dali"}.get(backend)
    try:
        return needs is None or importlib.util.find_spec(needs) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.skipif(not runnable(b), reason=f"{b}: not installed"))
                                     for b in CPU_BACKENDS])
def test_one_epoch_with_the_recipe_augmentations(backend, flat_converted, tmp_path):
    """One epoch (39 images, batches of 8) with the t4 recipe's RandAugment, erasing and
    mixup/cutmix; pil and pil-wds also at the policy's magnitude ceiling (10, which the recipe's
    mstd noise reaches now and then) so that posterize's 0-bit case surely comes up."""
    data, src, _ = flat_converted
    policies = [T4.rand_augment] + [at_magnitude(T4.rand_augment, 10) + "-n4"] * backend.startswith("pil")
    for k, policy in enumerate(policies):
        out = tmp_path / str(k)
        summary = Trainer(tiny(data, out, backend=backend, epochs=1, workers=1, imagefolder=str(src),
                               rand_augment=policy, reprob=T4.reprob, mixup=T4.mixup, cutmix=T4.cutmix)).fit()
        (row,) = rows(out)
        assert math.isfinite(float(row["train_loss"])) and summary["updates"] == summary["updates_per_epoch"] >= 4
