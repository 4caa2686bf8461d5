"""A JPEG in a shard that does not decode is named by its shard and tar member, in one line, by every
CPU backend that reads the shards directly (DALI: on the CPU here; its GPU decode takes the same path)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from loaders import make_loader

ROOT = Path(__file__).resolve().parents[1]


def corrupt_copy(flat_converted, tmp_path, shard: str = "train-00000.tar", which=slice(0, 1)) -> tuple[Path, list]:
    """A copy of the data with zeros over `which` JPEGs of `shard` (the tar stays readable):
    (data, "<shard>: member <name>" of each)."""
    data = tmp_path / "d"
    shutil.copytree(flat_converted[0], data)
    tar = data / "wds" / shard
    with tarfile.open(tar) as t:
        members = [m for m in t.getmembers() if m.name.endswith(".jpg")][which]
    with open(tar, "r+b") as f:
        for member in members:
            f.seek(member.offset_data)
            f.write(b"\0" * member.size)
    return data, [f"{tar}: member {m.name}" for m in members]


@pytest.mark.parametrize("backend", ["pil-wds", "resident", "dali"])
def test_a_corrupt_member_is_named_by_shard_and_member(flat_converted, tmp_path, backend):
    """DALI before: "Critical error in pipeline: ... nvImageCodec failure: '#4'", no file named."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    data, (where,) = corrupt_copy(flat_converted, tmp_path)
    with pytest.raises(ValueError) as e:
        list(make_loader(backend, data, "train", batch_size=4, image_size=32, workers=1, device="cpu"))
    assert str(e.value).startswith(f"{where}: not a readable JPEG ("), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("split", ["train", "val"])
def test_dali_names_a_corrupt_member_mid_epoch_through_train(flat_converted, tmp_path, split):
    """train: every JPEG of the second shard (shuffled, and a train epoch drops its last partial
    batch: one of them is decoded for sure); val (in order, batches of 8): the 12th and last image,
    in the second batch. The failed batches are replayed and the member named."""
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    data, names = corrupt_copy(flat_converted, tmp_path, f"{split}-00001.tar", slice(None) if split == "train" else
                               slice(-1, None))
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "--recipe", "cpu-smoke", "--backend", "dali",
           "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
           "--micro-batch", "4", "--set", "model_overrides={dim: 16, depth: 1, kernel: 3, patch: 4}",
           "--set", "image_size=32", "--set", "workers=1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in output, output
    line = output.strip().splitlines()[-1]
    assert any(line.startswith(f"train: {where}: not a readable JPEG (DALI: nvImageCodec failure") for where in names), \
        output
