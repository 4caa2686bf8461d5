"""Shared test data: small synthetic sources made by fastmix.data.synth (no ../shared, no downloads)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastmix.data.convert import ConvertConfig, convert
from fastmix.data.synth import QUIRKS, write_imagefolder

SIZES = [(500, 375), (200, 150), (375, 500), (640, 480)]  # 640 > max_side 512: re-encoded
QUIRKS_AT = {k: "train" for k in QUIRKS} | {"cmyk": "val"}


def small_config(source, out, **kw) -> ConvertConfig:
    kw = {"num_classes": 4, "shard_size": 7, "workers": 2} | kw
    return ConvertConfig(source=str(source), out=str(out), **kw)


@pytest.fixture(scope="session")
def imagefolder_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "imagefolder"
    write_imagefolder(root, 5, {"train": 5, "val": 2}, quirks=QUIRKS_AT, seed=1, sizes=SIZES)
    return root


@pytest.fixture(scope="session")
def converted(imagefolder_source, tmp_path_factory) -> tuple[Path, dict]:
    """The small ImageFolder source (first 4 of 5 classes) converted once, both formats."""
    out = tmp_path_factory.mktemp("converted")
    return out, convert(small_config(imagefolder_source, out))


FLAT_CLASSES, FLAT_TRAIN, FLAT_VAL = 3, 13, 4


def kill_when_exists(proc, path: Path, timeout: float = 600) -> None:
    """SIGKILL `proc` as soon as `path` appears (or it exits, or `timeout` passes)."""
    import os
    import signal
    import time
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def flat_color(i: int) -> tuple[int, int, int]:
    """Image id -> a flat colour that survives JPEG, crops, flips and resizes (ids < 256)."""
    return 16 * (i % 16) + 8, 16 * (i // 16) + 8, 128


def ids_of(images) -> list[int]:
    """Recover each flat image's id from its mean colour (the inverse of flat_color)."""
    import torch
    from loaders.common import MEAN, STD
    x = images.float() * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    rgb = x.mean(dim=(2, 3))
    low, high = ((rgb[:, 0] - 8) / 16).round().long(), ((rgb[:, 1] - 8) / 16).round().long()
    return (high * 16 + low).tolist()


@pytest.fixture(scope="session")
def flat_converted(tmp_path_factory):
    """Flat-colour images whose colour encodes a global id: (converted dir, source, id -> label)."""
    from PIL import Image
    from fastmix.data.synth import class_wnids, jpeg_bytes
    root = tmp_path_factory.mktemp("flat")
    src, label_of, i = root / "src", {}, 0
    sizes = [(96, 72), (72, 96), (120, 90), (64, 64), (200, 100)]
    for split, n in (("train", FLAT_TRAIN), ("val", FLAT_VAL)):
        for label, wnid in enumerate(class_wnids(FLAT_CLASSES)):
            (src / split / wnid).mkdir(parents=True)
            for k in range(n):
                img = Image.new("RGB", sizes[i % len(sizes)], flat_color(i))
                (src / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(jpeg_bytes(img, quality=95))
                label_of[i] = label
                i += 1
    out = root / "out"
    convert(small_config(src, out, num_classes=FLAT_CLASSES, shard_size=10))
    return out, src, label_of
