"""The outputs are read back by the real consumers: ffcv's Loader, DALI's readers.webdataset, tarfile."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmix.data.shards import index_text, read_samples


def shard_labels(out: Path, manifest: dict, split: str) -> list[int]:
    return [s.label for rel in manifest["splits"][split]["shards"] for s in read_samples(out / rel)]


@pytest.mark.parametrize("split", ["train", "val"])
def test_beton_read_by_ffcv_loader_with_exact_labels(converted, split):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    out, manifest = converted
    loader = Loader(str(out / "ffcv" / f"{split}.beton"), batch_size=8, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0)],
                               "label": [IntDecoder()]})
    labels, images = [], 0
    for image, label in loader:
        assert image.shape[1:] == (32, 32, 3) and image.dtype == np.uint8
        assert image.std() > 5, "decoded pixels, not a blank buffer"
        labels += label.reshape(-1).tolist()
        images += len(image)
    assert images == manifest["splits"][split]["written"]
    assert labels == shard_labels(out, manifest, split)


def test_every_shard_read_by_dali_with_its_index(converted):
    from nvidia.dali import fn, pipeline_def
    out, manifest = converted
    for split in ("train", "val"):
        for rel in manifest["splits"][split]["shards"]:
            tar = out / rel
            n = len(read_samples(tar))

            @pipeline_def(batch_size=n, num_threads=1, device_id=None)
            def pipe():
                jpg, cls = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(tar.with_suffix(".idx"))],
                                                 ext=["jpg", "cls"], missing_component_behavior="error")
                return fn.decoders.image(jpg, device="cpu"), cls

            p = pipe()
            p.build()
            images, cls = p.run()
            labels = [int(bytes(np.asarray(c)).decode()) for c in cls]
            assert labels == [s.label for s in read_samples(tar)]
            assert all(np.asarray(im).shape[2] == 3 for im in images)


def test_every_shard_read_by_tarfile(converted):
    out, manifest = converted
    for split in ("train", "val"):
        keys = []
        for rel in manifest["splits"][split]["shards"]:
            with tarfile.open(out / rel) as tf:
                names = tf.getnames()
                assert names[::2] == [n[:-4] + ".jpg" for n in names[1::2]], "jpg/cls pairs"
                for name in names[::2]:
                    img = Image.open(io.BytesIO(tf.extractfile(name).read()))
                    assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 512
                keys += [n[:-4] for n in names[::2]]
        assert len(keys) == len(set(keys)) == manifest["splits"][split]["written"]


def test_index_matches_dali_wds2idx(converted, tmp_path):
    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent))
    if wds2idx is None:
        pytest.skip("DALI's wds2idx script is not installed")
    out, manifest = converted
    tar = out / manifest["splits"]["train"]["shards"][0]
    subprocess.run([wds2idx, str(tar), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_text() == tar.with_suffix(".idx").read_text() == index_text(tar)
