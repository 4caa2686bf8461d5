"""Write arrays as a CIFAR "python version" download, byte-compatible with the real one's format:
a gzipped tar of one folder holding pickled dicts (protocol 2, bytes keys, as the Python 2
originals read with encoding="bytes"), `data` uint8 N x 3072 in CHW order."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def batch_dict(images: np.ndarray, labels, label_key: bytes = b"labels", name: bytes = b"batch") -> dict:
    """images: N x 32 x 32 x 3 uint8 (HWC) -> the batch dict, `data` in CIFAR's CHW rows."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1), dtype=np.uint8)
    return {b"batch_label": name, label_key: [int(y) for y in labels], b"data": data,
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))]}


def write_cifar10(dest: Path, train: tuple, test: tuple, names=CIFAR10_NAMES, batches: int = 5,
                  members: dict | None = None) -> Path:
    """`train`/`test`: (N x 32 x 32 x 3 uint8, labels). Train is split over `batches` files.
    `members` replaces (bytes) or drops (None) any member by its name inside the folder."""
    files = {"batches.meta": pickle.dumps({b"label_names": [n.encode() for n in names],
                                           b"num_cases_per_batch": len(train[0]) // batches,
                                           b"num_vis": 3072}, protocol=2)}
    parts = np.array_split(np.arange(len(train[0])), batches)
    for i, idx in enumerate(parts, start=1):
        files[f"data_batch_{i}"] = pickle.dumps(batch_dict(train[0][idx], np.asarray(train[1])[idx]), protocol=2)
    files["test_batch"] = pickle.dumps(batch_dict(*test), protocol=2)
    return _tar(dest, "cifar-10-batches-py", {**files, **(members or {})})


def write_cifar100(dest: Path, train: tuple, test: tuple, names: list[str]) -> Path:
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"all"]}
    files = {"meta": pickle.dumps(meta, protocol=2),
             "train": pickle.dumps(batch_dict(*train, label_key=b"fine_labels"), protocol=2),
             "test": pickle.dumps(batch_dict(*test, label_key=b"fine_labels"), protocol=2)}
    return _tar(dest, "cifar-100-python", files)


def _tar(dest: Path, folder: str, files: dict) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for name, data in files.items():
            if data is None:
                continue
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def random_split(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random images; labels cycle through every class (the converter wants each in every split)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.permutation(np.arange(n) % classes)


def smooth_split(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images without JPEG-hostile noise (random 4 x 4 colours, upsampled): the shards'
    JPEGs then stay within a few levels of the source, so a wrong pixel order shows."""
    from PIL import Image
    coarse, labels = random_split(n, classes, seed)
    images = np.stack([np.asarray(Image.fromarray(c[:4, :4]).resize((32, 32), Image.Resampling.BICUBIC))
                       for c in coarse])
    return images, labels


def convert_cifar(tarball: Path, out: Path, formats=("wds",), **kw):
    from fastmix.data.convert import ConvertConfig, convert
    cfg = ConvertConfig(source=str(tarball), out=str(out), num_classes=None, formats=tuple(formats),
                        write_mode="raw", quality=100, subsampling="4:4:4", workers=2, **{"shard_size": 30, **kw})
    return convert(cfg)
