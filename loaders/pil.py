"""The baseline users have today: PIL decode + torchvision transforms in DataLoader workers.

`pil` reads the original ImageFolder tree (what the reference reproduction used); `pil-wds`
reads the converted shards, so the file format and the loader can be compared separately.
"""
from __future__ import annotations

import io
import json
import random
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, transforms

from fastmix.data.manifest import source_files

from .common import MEAN, BaseLoader, LoaderConfig, manifest_split, normalize, rank_indices
from .shardindex import ShardIndex
from .shardnames import CorruptSample, corrupt


def posterize(img: Image.Image, bits: int, **_) -> Image.Image:
    """Keep the `bits` most significant bits; 0 bits is a black image. timm's severest posterize
    asks for 0 bits (PosterizeIncreasing at magnitude 10, which mstd noise reaches; Posterize
    below magnitude 2.5): Pillow <= 12 returned black there, as TF's and torchvision's do, and
    Pillow 13 raises "bits must be between 1 and 8". This keeps timm's (and the reference
    run's) augmentation, not a clamped 1-bit variant of it."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def timm_rand_augment(policy: str, image_size: int):
    """timm's RandAugment, on the PIL crop, with the hparams timm's create_transform passes, its
    posterize ops swapped for the one above (no patching of timm itself)."""
    from timm.data.auto_augment import rand_augment_transform
    ra = rand_augment_transform(policy, {"translate_const": int(image_size * 0.45),
                                         "img_mean": tuple(round(255 * m) for m in MEAN)})
    for op in ra.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    return ra


def pil_transform(cfg: LoaderConfig):
    if cfg.is_train:
        ops = [transforms.RandomResizedCrop(cfg.image_size, scale=cfg.scale, ratio=cfg.ratio)]
        ops += [transforms.RandomHorizontalFlip()] if cfg.hflip else []
        if cfg.rand_augment:
            ops.append(timm_rand_augment(cfg.rand_augment, cfg.image_size))
    else:
        ops = [transforms.Resize(cfg.resize_to), transforms.CenterCrop(cfg.image_size)]
    return transforms.Compose(ops + [transforms.PILToTensor()])  # uint8; normalized on the device


@contextmanager
def _seeded(seed: int):
    """Draw one sample's augmentation from its own seed (torch, numpy and random, as timm's
    RandAugment uses all three), then put the process's RNG state back. Augmentations then
    depend on (seed, epoch, index) only: not on the worker count, nor on a resume."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


class _ImageFolder(datasets.ImageFolder):
    """ImageFolder restricted to the converted classes, labelled as classes.json says."""

    def __init__(self, root, wnids, transform, rejected: set[str], listed: list[tuple[str, int]] | None = None):
        self._wnids = wnids
        if listed is None:
            super().__init__(root, transform=transform)
        else:  # exactly the files the converter wrote (sources/<split>.jsonl): no walk, which would
            # also meet files it skipped, and cannot read a flat val folder (Kaggle's)
            datasets.VisionDataset.__init__(self, root, transform=transform)
            self.loader, self.extensions = datasets.folder.default_loader, None
            self.classes, self.class_to_idx = self.find_classes(None)
            self.samples = listed
        # The converter's rejects (corrupt, empty, not images) would crash a DataLoader worker.
        self.samples = [s for s in self.samples if s[0] not in rejected]
        self.imgs, self.targets = self.samples, [label for _, label in self.samples]

    def find_classes(self, directory):
        if directory is None:  # the listed files' classes, whatever the folders hold
            return list(self._wnids), {w: i for i, w in enumerate(self._wnids)}
        missing = [w for w in self._wnids if not (Path(directory) / w).is_dir()]
        if missing:
            raise FileNotFoundError(f"{directory}: class folders missing: {missing[:5]}")
        return list(self._wnids), {w: i for i, w in enumerate(self._wnids)}

    def __getitem__(self, key):
        index, seed = key
        with _seeded(seed):
            try:
                return super().__getitem__(index)
            except (OSError, SyntaxError) as e:  # PIL: unidentified, truncated or broken files
                raise CorruptSample(f"{self.samples[index][0]}: not a readable image ({e})") from None


class _ShardImages(Dataset):
    def __init__(self, index: ShardIndex, transform):
        self.index, self.transform = index, transform

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        i, seed = key
        try:
            img = Image.open(io.BytesIO(self.index.read(i))).convert("RGB")
        except (OSError, SyntaxError) as e:
            raise corrupt(self.index, i, e) from None
        with _seeded(seed):
            return self.transform(img), int(self.index.labels[i])


class PILLoader(BaseLoader):
    AUGMENTS = {"random-resized-crop": "cpu", "hflip": "cpu", "rand-augment": "cpu"}

    def __init__(self, cfg: LoaderConfig, from_shards: bool):
        if from_shards:
            dataset = _ShardImages(ShardIndex(cfg), pil_transform(cfg))
        else:
            root = Path(cfg.imagefolder or "") / cfg.split
            if not cfg.imagefolder or not root.is_dir():
                raise FileNotFoundError(f"{root}: the pil backend needs the original ImageFolder "
                                        "tree (imagefolder=...)")
            classes = json.loads((Path(cfg.data) / "classes.json").read_text())
            rejected = {r["path"] for r in manifest_split(cfg)["rejected"]}
            listed = source_files(cfg.data, cfg.split, cfg.imagefolder)  # exactly what the converter wrote
            dataset = _ImageFolder(root, [c["wnid"] for c in classes], pil_transform(cfg), rejected, listed)
        super().__init__(cfg, len(dataset))
        self.dataset, self._loader = dataset, None

    def __iter__(self):
        cfg = self.cfg
        if self._loader is None:  # workers persist across epochs, as in timm's loader
            self._loader = DataLoader(
                self.dataset, batch_size=cfg.batch_size, sampler=_EpochSampler(self),
                num_workers=cfg.workers, pin_memory=cfg.torch_device.type == "cuda",
                drop_last=cfg.last_batch == "drop", persistent_workers=cfg.workers > 0,
                generator=torch.Generator().manual_seed(cfg.seed), prefetch_factor=4 if cfg.workers else None,
                worker_init_fn=_worker_init)
        try:
            for images, labels in self._loader:
                yield normalize(images, cfg), labels.to(cfg.torch_device, non_blocking=True)
        except CorruptSample as e:  # from a worker its message carries the worker's traceback: keep our line
            line = str(e).strip().splitlines()[-1]
            raise CorruptSample(line.partition("CorruptSample: ")[2] or line) from None


def _worker_init(_worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the parent alone stops (one line, exit 130) and shuts
    its workers down. A batch leaves a worker as a file descriptor that the parent fetches from the
    worker's resource-sharing thread; a parent interrupted mid-fetch hangs up, and that thread then
    prints a BrokenPipeError traceback under the parent's one line (seen in CI). The hang-up is the
    parent's to report, so a worker stays quiet about it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_on_hang_up


def _quiet_on_hang_up(kind, value, tb) -> None:
    # multiprocessing.resource_sharer reports its thread's errors through sys.excepthook
    if not issubclass(kind, (BrokenPipeError, ConnectionResetError, EOFError)):
        sys.__excepthook__(kind, value, tb)


class _EpochSampler(Sampler):
    """This rank's (index, augmentation seed) pairs for the loader's current epoch."""

    def __init__(self, loader: PILLoader):
        self.loader = loader

    def __iter__(self):
        cfg, epoch = self.loader.cfg, self.loader.epoch
        indices = rank_indices(self.loader.split_size, cfg, epoch)
        seeds = np.random.default_rng([cfg.seed, epoch]).integers(0, 2**62, self.loader.split_size)
        return iter([(int(i), int(seeds[i])) for i in indices])

    def __len__(self):
        return self.loader.num_samples
