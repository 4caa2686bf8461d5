"""Shared test data: small synthetic sources made by fastmix.synth (no ../shared, no downloads)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastmix.convert import ConvertConfig, convert
from fastmix.synth import QUIRKS, write_imagefolder

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
