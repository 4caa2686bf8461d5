"""A stored label that is not one of the data's classes stops every backend in one line naming its
file (shard and member, or .beton and sample index), before a batch reaches the model. Before: the
run went on to `RuntimeError: index 9 is out of bounds` inside mixup, naming nothing. The `pil`
backend takes its labels from the class folders' order in classes.json, so it has none to damage."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FLAT_CLASSES
from loaders import make_loader

ROOT = Path(__file__).resolve().parents[1]
BAD = 9  # with FLAT_CLASSES = 3


def copy_of(flat_converted, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(flat_converted[0], data)
    return data


def damage_cls(data: Path, text: bytes, shard: str = "train-00001.tar", k: int = 3) -> str:
    """Overwrite the k-th .cls of `shard` in place (a one-digit label: the tar stays readable)."""
    tar = data / "wds" / shard
    with tarfile.open(tar) as t:
        member = [m for m in t.getmembers() if m.name.endswith(".cls")][k]
    assert member.size == len(text)
    with open(tar, "r+b") as f:
        f.seek(member.offset_data)
        f.write(text)
    return f"{tar}: member {member.name}"


def damage_beton(data: Path, sample: int, label: int) -> Path:
    """Write `label` into sample's label field of ffcv/train.beton's metadata table (the file keeps its size)."""
    from ffcv.reader import Reader
    from ffcv.types import HeaderType
    beton = data / "ffcv" / "train.beton"
    reader = Reader(str(beton))
    table = reader.metadata.dtype
    at = HeaderType.itemsize + reader.field_descriptors.nbytes + sample * table.itemsize + table.fields["f1"][1]
    with open(beton, "r+b") as f:
        f.seek(at)
        f.write(np.array(label, dtype=table.fields["f1"][0]).tobytes())
    return beton


def train(data: Path, out: Path, backend: str) -> subprocess.CompletedProcess:
    sets = ["--set", "model_overrides={dim: 16, depth: 1, kernel: 3, patch: 4}", "--set", "image_size=32",
            "--set", "workers=1"]
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "--recipe", "cpu-smoke", "--backend", backend,
           "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--micro-batch", "8", *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("backend", ["pil-wds", "resident", "dali", "ffcv", "opencv"])
def test_a_label_out_of_range_is_named_through_train(flat_converted, tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    if backend in ("ffcv", "opencv"):
        pytest.importorskip("ffcv", reason="ffcv is not installed")
    data = copy_of(flat_converted, tmp_path)
    if backend in ("ffcv", "opencv"):
        where = f"{damage_beton(data, 5, BAD)}: sample 5"
    else:
        where = damage_cls(data, str(BAD).encode())
    run = train(data, tmp_path / "run", backend)
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in output, output
    assert f"{where}: label {BAD} is not one of the data's classes (0..2: classes.json lists 3)" in output, output
    assert "out of bounds" not in output


def test_a_cls_that_is_no_number_is_named(flat_converted, tmp_path):
    data = copy_of(flat_converted, tmp_path)
    where = damage_cls(data, b"x")
    with pytest.raises(ValueError, match=rf"^{where}: b'x' is not a label \(1 to 8 ASCII digits\)$"):
        make_loader("pil-wds", data, "train", batch_size=4, image_size=32, workers=0)


@pytest.mark.parametrize("text, says", [(b"9", "label 9 is not one of the data's classes"),
                                        (b"x", r"b'x' is not a label \(1 to 8 ASCII digits\)")])
def test_dali_checks_every_batch(flat_converted, tmp_path, text, says):
    """DALI re-reads each .cls every epoch: a shard damaged after the loader was built is caught per
    batch, named from the reader's source_info."""
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    data = copy_of(flat_converted, tmp_path)
    loader = make_loader("dali", data, "train", batch_size=4, image_size=32, workers=1)
    assert len(list(loader)) == len(loader)
    where = damage_cls(data, text)
    loader.set_epoch(1)
    with pytest.raises(ValueError, match=rf"^{where}: {says}"):
        list(loader)
