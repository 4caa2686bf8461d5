"""CIFAR-10/100 as a source: the python-version download (tarball or folder) converts into the
same outputs as ImageNet, pixels in the right order, labels and names right; bad downloads fail
with the file named."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_format import (CIFAR10_NAMES, batch_dict, convert_cifar, random_split, smooth_split, write_cifar10,
                          write_cifar100)
from fastmix.data.convert import ConvertError
from fastmix.data.shards import read_samples

ROOT = Path(__file__).resolve().parents[1]


def shard_samples(out: Path, split: str) -> list:
    """The shards' samples, each keyed by its source name's tail (data_batch_2_00007): shard keys are
    "<class>_<position>", and sources/<split>.jsonl names the file each came from."""
    import dataclasses
    from fastmix.data.manifest import read_sources, read_split
    name_of = {r["key"]: r["path"].rsplit("/", 1)[-1] for r in read_sources(out, read_split(out, split))}
    return [dataclasses.replace(s, key=name_of[s.key])
            for tar in sorted((out / "wds").glob(f"{split}-*.tar")) for s in read_samples(tar)]


def source_row(key: str, train, test, per_batch: int):
    """A shard key (data_batch_2_00007, test_batch_00003) -> (image, label) in the source arrays."""
    stem, k = key.rsplit("_", 1)
    if stem == "test_batch":
        return test[0][int(k)], test[1][int(k)]
    i = (int(stem.rsplit("_", 1)[1]) - 1) * per_batch + int(k)
    return train[0][i], train[1][i]


def test_cifar10_tarball_converts_with_pixels_labels_and_names(tmp_path):
    train, test = smooth_split(50, 10, 0), smooth_split(20, 10, 1)
    tarball = write_cifar10(tmp_path / "cifar-10-python.tar.gz", train, test)
    cmd = [sys.executable, str(ROOT / "tools/convert_subset.py"), "--source", str(tarball), "--out",
           str(tmp_path / "out"), "--formats", "wds,ffcv", "--workers", "2", "--verify"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    import json
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == CIFAR10_NAMES == [c["wnid"] for c in classes]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["layout"] == "cifar" and manifest["options"]["quality"] == 100
    assert manifest["options"]["subsampling"] == "4:4:4"
    assert manifest["options"]["write_mode"] == "raw"
    for split, n in (("train", 50), ("val", 20)):
        samples = shard_samples(out, split)
        assert len(samples) == n == manifest["splits"][split]["written"]
        for s in samples:
            image, label = source_row(s.key, train, test, per_batch=10)
            decoded = np.asarray(Image.open(io.BytesIO(s.jpeg)).convert("RGB"), dtype=np.int16)
            assert s.label == label
            assert np.abs(decoded - image).mean() < 1, s.key  # JPEG q100 4:4:4: < 1 level; CHW/HWC mix-ups: ~60

    # The raw .beton is lossless: ffcv, and opencv reading it, give back the source pixels exactly,
    # in the shards' order.
    from loaders import make_loader
    from loaders.common import MEAN, STD
    import torch
    keys = [s.key for s in shard_samples(out, "val")]
    want = np.stack([source_row(k, train, test, 10)[0] for k in keys]).transpose(0, 3, 1, 2)
    for backend in ("ffcv", "opencv"):
        loader = make_loader(backend, out, "val", batch_size=20, image_size=32, crop_ratio=1.0, workers=1)
        images, labels = next(iter(loader))
        pixels = (images.float() * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        assert np.abs(pixels.round().numpy() - want).max() == 0, backend
        assert labels.tolist() == [int(source_row(k, train, test, 10)[1]) for k in keys], backend


def test_cifar100_extracted_folder_converts(tmp_path):
    names = sorted(f"class_{c:02d}" for c in range(5))
    tarball = write_cifar100(tmp_path / "cifar-100-python.tar.gz", random_split(25, 5, 2), random_split(10, 5, 3), names)
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    manifest = convert_cifar(tmp_path / "extracted" / "cifar-100-python", tmp_path / "out")
    assert manifest["num_classes"] == 5
    assert manifest["splits"]["train"]["written"] == 25 and manifest["splits"]["val"]["written"] == 10
    assert manifest["splits"]["val"]["per_class"] == {n: 2 for n in names}
    # the folder holding the extracted folder is recognised too
    assert convert_cifar(tmp_path / "extracted", tmp_path / "out2")["num_classes"] == 5



@pytest.mark.parametrize("damage, message", [
    ("truncated", r"cifar-10-python.tar.gz: unreadable or truncated tarball"),
    ("wrong_shape", r"cifar-10-batches-py/data_batch_2: 'data' is uint8 \(10, 3000\); expected uint8 N x 3072"),
    ("missing_meta", r"cifar-10-batches-py/batches.meta: missing from the CIFAR download"),
    ("missing_batch", r"cifar-10-batches-py/test_batch: missing from the CIFAR download"),
    ("label_count", r"cifar-10-batches-py/data_batch_1: 9 labels for 10 images"),
    ("not_pickle", r"cifar-10-batches-py/data_batch_3: not a CIFAR pickle"),
    ("code_in_pickle", r"data_batch_4: not a CIFAR pickle \(UnpicklingError: refusing to load os.system\)"),
])
def test_bad_downloads_are_named(tmp_path, damage, message):
    train, test = random_split(50, 10, 0), random_split(20, 10, 1)
    members = {}
    if damage == "wrong_shape":
        d = batch_dict(train[0][:10], train[1][:10])
        d[b"data"] = d[b"data"][:, :3000]
        members["data_batch_2"] = pickle.dumps(d, protocol=2)
    elif damage == "missing_meta":
        members["batches.meta"] = None
    elif damage == "missing_batch":
        members["test_batch"] = None
    elif damage == "label_count":
        d = batch_dict(train[0][:10], train[1][:10])
        d[b"labels"] = d[b"labels"][:9]
        members["data_batch_1"] = pickle.dumps(d, protocol=2)
    elif damage == "not_pickle":
        members["data_batch_3"] = b"this is not a pickle"
    elif damage == "code_in_pickle":
        members["data_batch_4"] = b"cos\nsystem\n(S'echo pwned'\ntR."
    tarball = write_cifar10(tmp_path / "cifar-10-python.tar.gz", train, test, members=members)
    if damage == "truncated":
        tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(ConvertError, match=message):
        convert_cifar(tarball, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_cifar10_recipe_trains_on_a_converted_tarball(tmp_path):
    """The recipe as shipped (resident loader, RandAugment, flips, no crop), shrunk to a tiny model."""
    from fastmix.train.recipe import load_recipe
    from fastmix.train.trainer import Trainer
    tarball = write_cifar10(tmp_path / "cifar-10-python.tar.gz", smooth_split(40, 10, 0), smooth_split(20, 10, 1))
    convert_cifar(tarball, tmp_path / "data")
    cfg = load_recipe("cifar10", data=str(tmp_path / "data"), out=str(tmp_path / "run"), device="cpu",
                      precision="fp32", channels_last="off", workers=1, batch_size=8, micro_batch=8, epochs=1,
                      model_overrides={"dim": 16, "depth": 1})
    summary = Trainer(cfg).fit()
    assert summary["augmentations"] == {"random-resized-crop": "cpu", "hflip": "cpu", "rand-augment": "cpu"}
    assert summary["not_applied_by_backend"] == [] and summary["updates"] == 5
    assert summary["epochs"][0]["train_top1"] != "" and summary["epochs"][0]["top1"] != ""


GIB = 1 << 30
# VmHWM, not getrusage's ru_maxrss: that one keeps the forking parent's (pytest's) peak across exec.
# The tarball is read in this process (the workers get decoded rows).
PEAK_RSS = ("import re, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
            "    peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1]\n"
            "    print('peak_rss_kib', peak, file=sys.stderr)\n")


def huge_member_tarball(dest: Path) -> Path:
    """A 1 MB .tar.gz whose first member, data_batch_1, declares and holds 1 GiB of zeros: gzip
    members concatenated (one stream to a reader), so writing it compresses 1 MiB once."""
    import gzip
    head = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    head.size = GIB
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(dest, "wb") as f:
        f.write(gzip.compress(head.tobuf()))
        for _ in range(GIB >> 20):
            f.write(zeros)
        f.write(gzip.compress(bytes(2 * 512)))  # the tar's end
    return dest


def convert_cli(source: Path, out: Path) -> subprocess.CompletedProcess:
    """tools/convert_subset.py, reporting its peak RSS on stderr."""
    cmd = [sys.executable, "-c", PEAK_RSS, str(ROOT / "tools/convert_subset.py"), "--source", str(source),
           "--out", str(out), "--workers", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_a_member_larger_than_the_format_allows_is_refused_before_it_is_read(tmp_path):
    """Before: the whole archive was read into memory (1.1 GB RSS), then 'batches.meta: missing'."""
    tarball = huge_member_tarball(tmp_path / "cifar-10-python.tar.gz")
    assert tarball.stat().st_size < 2 << 20
    run = convert_cli(tarball, tmp_path / "out")
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert f"{tarball}:cifar-10-batches-py/data_batch_1: declares 1,073,741,824 bytes, more than this CIFAR " \
           "member can hold" in run.stderr, run.stderr
    peak_mib = int(lines[-1].split()[-1]) / 1024
    assert peak_mib < 700, f"{peak_mib:.0f} MiB: the member was read"

    # the extracted folder: a sparse 1 GiB file (no disk used) is refused by its size, unread
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path / "small.tar.gz", random_split(10, 10, 0), random_split(10, 10, 1))
    with tarfile.open(tmp_path / "small.tar.gz") as tf:
        tf.extractall(tmp_path, filter="data")
    with open(folder / "data_batch_1", "r+b") as f:
        f.truncate(GIB)
    run = convert_cli(folder, tmp_path / "out2")
    assert f"{folder}/data_batch_1: declares 1,073,741,824 bytes" in run.stderr, run.stderr
    assert int(run.stderr.strip().splitlines()[-1].split()[-1]) / 1024 < 700


def test_members_the_format_does_not_read_are_capped_and_counted(tmp_path):
    train, test = random_split(50, 10, 0), random_split(20, 10, 1)
    ok = write_cifar10(tmp_path / "ok.tar.gz", train, test, members={"readme.html": b"<html>CIFAR</html>"})
    assert convert_cifar(ok, tmp_path / "out")["splits"]["train"]["written"] == 50  # a small extra is fine
    big = write_cifar10(tmp_path / "big.tar.gz", train, test, members={"readme.html": bytes((1 << 20) + 1)})
    with pytest.raises(ConvertError, match=r"cifar-10-batches-py/readme.html: declares 1,048,577 bytes"):
        convert_cifar(big, tmp_path / "out2")
    many = write_cifar10(tmp_path / "many.tar.gz", train, test, members={f"x{i}": b"" for i in range(60)})
    with pytest.raises(ConvertError, match=r"many.tar.gz: more than 64 members; not a CIFAR download"):
        convert_cifar(many, tmp_path / "out3")
