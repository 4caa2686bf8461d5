"""A JPEG in a shard that does not decode is named by its shard and tar member, in one line, by every
CPU backend that reads the shards directly."""
from __future__ import annotations

import shutil
import tarfile

import pytest

from loaders import make_loader


@pytest.mark.parametrize("backend", ["pil-wds", "resident"])
def test_a_corrupt_member_is_named_by_shard_and_member(flat_converted, tmp_path, backend):
    data = tmp_path / "d"
    shutil.copytree(flat_converted[0], data)
    tar = data / "wds" / "train-00000.tar"
    with tarfile.open(tar) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(".jpg"))
    with open(tar, "r+b") as f:  # zeros over the image's bytes: the tar stays readable
        f.seek(member.offset_data)
        f.write(b"\0" * member.size)
    with pytest.raises(ValueError) as e:
        list(make_loader(backend, data, "train", batch_size=4, image_size=32, workers=1, device="cpu"))
    assert str(e.value).startswith(f"{tar}: member {member.name}: not a readable JPEG ("), str(e.value)
    assert "\n" not in str(e.value)
