"""GPU-resident: the split decoded once into one uint8 tensor on the device; every epoch runs there.

For datasets that fit in device memory (CIFAR at 32 px: 150 MB; ImageNet-100 at <= 64-96 px).
At construction the shards' JPEGs are decoded (nvJPEG on CUDA, libjpeg-turbo threads on the
CPU), resized so the shorter side is `resize_to` and center-cropped: val to `image_size` (the
val transform of every backend, done once), train to a `resize_to` square that the epochs crop
from (a non-square photo's edges beyond that square are not kept). Each batch is then a gather
from that tensor plus batched ops on the device:

- crop: RandomResizedCrop (torchvision's sampling, vectorized; `roi_align` resamples every
  crop in one kernel, averaging several samples per output pixel when it shrinks), or with
  `crop="pad"` zero-padding by `padding` and a random `image_size` crop (the usual CIFAR one);
- horizontal flip;
- RandAugment (torchvision's ops; timm's magnitude m of 10 is torchvision's 3m of 30): the
  same two ops for each group of RA_GROUP images, so a batch costs B/16 calls, not B.

Refuses a split larger than `memory_share` of the device's memory, with the sizes. Works the
same on `device="cpu"` (host memory, CPU ops), which the tests use.
"""
from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from .common import BaseLoader, LoaderConfig, batch_slices, normalize, parse_rand_augment, rank_indices
from .geometry import resized_crop_boxes
from .shardindex import ShardIndex
from .shardnames import corrupt

RA_GROUP = 16
CHUNK = 256  # images decoded per call


def device_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(count: int, side: int, cfg: LoaderConfig) -> None:
    need, total = count * 3 * side * side, device_memory_bytes(cfg.torch_device)
    if need > cfg.memory_share * total:
        raise MemoryError(
            f"{cfg.data} ({cfg.split}): {count} images at {side}x{side} need {need / 2**30:.2f} GiB as uint8, "
            f"more than memory_share={cfg.memory_share} of {cfg.torch_device}'s {total / 2**30:.1f} GiB "
            f"({cfg.memory_share * total / 2**30:.2f} GiB); lower image_size, raise memory_share, "
            "or use a streaming backend (dali, ffcv)")


def fit(img: torch.Tensor, short: int, side: int) -> torch.Tensor:
    """CHW uint8 -> shorter side `short` (antialiased), center crop `side` (the val transform)."""
    if min(img.shape[-2:]) != short:
        img = TF.resize(img, short, antialias=True)
    return TF.center_crop(img, [side, side])


def pad_crop(x: torch.Tensor, pad: int, size: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad every image by `pad`, then take each one's own `size` crop at (top, left)."""
    xp = F.pad(x, (pad, pad, pad, pad))
    steps = torch.arange(size, device=x.device)
    rows, cols = top[:, None] + steps, left[:, None] + steps
    b = torch.arange(len(x), device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ResidentLoader(BaseLoader):
    def __init__(self, cfg: LoaderConfig):
        index = ShardIndex(cfg)
        super().__init__(cfg, len(index))
        self.side = cfg.resize_to if cfg.is_train else cfg.image_size
        check_fits(len(index), self.side, cfg)
        self.images = self._decode_all(index)
        self.labels = torch.from_numpy(index.labels).to(cfg.torch_device)
        self.rand_augment = None
        if cfg.rand_augment:
            from torchvision.transforms import v2
            ra = parse_rand_augment(cfg.rand_augment)
            self.rand_augment = v2.RandAugment(num_ops=ra["n"], magnitude=min(30, round(3 * ra["m"])),
                                               num_magnitude_bins=31)

    def _decode_all(self, index: ShardIndex) -> torch.Tensor:
        cfg, dev = self.cfg, self.cfg.torch_device
        out = torch.empty((len(index), 3, self.side, self.side), dtype=torch.uint8, device=dev)

        def decode(ids: range, data: list[torch.Tensor]) -> torch.Tensor:
            try:
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
            except RuntimeError:  # the batched call does not say which image: find it, name shard and member
                for i, one in zip(ids, data):
                    try:
                        decode_jpeg(one, mode=ImageReadMode.RGB, device=dev)
                    except RuntimeError as e:
                        raise corrupt(index, i, e) from None
                raise
            return torch.stack([fit(img, cfg.resize_to, self.side) for img in images])

        # File reads stay in this thread (ShardIndex shares one handle per shard). On the CPU the
        # decodes run in threads (libjpeg-turbo; torch releases the GIL), a few chunks in flight;
        # on CUDA, one batched nvJPEG call per chunk, from one thread.
        threads = 1 if dev.type == "cuda" else max(1, cfg.workers)
        with ThreadPoolExecutor(threads) as pool, tqdm(total=len(index), desc=f"resident: decode {cfg.split}",
                                                      unit="img", disable=None, leave=False) as bar:
            pending: deque = deque()
            for start in range(0, len(index), CHUNK):
                ids = range(start, min(start + CHUNK, len(index)))
                data = [torch.frombuffer(bytearray(index.read(i)), dtype=torch.uint8) for i in ids]
                pending.append((ids, pool.submit(decode, ids, data)))
                while pending and (len(pending) > 2 * threads or ids.stop == len(index)):
                    done, result = pending.popleft()
                    out[done.start:done.stop] = result.result()
                    bar.update(len(done))
        return out

    @property
    def augmentations(self) -> dict[str, str]:
        if not self.cfg.is_train:
            return {}
        where = self.cfg.torch_device.type
        crop = "random-resized-crop" if self.cfg.crop == "resized" else "random-crop-pad"
        return {crop: where, **({"hflip": where} if self.cfg.hflip else {}),
                **({"rand-augment": where} if self.rand_augment else {})}

    def _augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg, n, dev, size = self.cfg, len(x), x.device, self.cfg.image_size
        if cfg.crop == "pad":
            top, left = (torch.from_numpy(rng.integers(0, self.side + 2 * cfg.padding - size + 1, n)).to(dev)
                         for _ in range(2))
            x = pad_crop(x, cfg.padding, size, top, left)
        else:
            boxes = resized_crop_boxes(self.side, self.side, cfg.scale, cfg.ratio, rng, n=n)
            rois = torch.from_numpy(np.concatenate([np.arange(n)[:, None], boxes], axis=1)).float().to(dev)
            # aligned=True: a box of whole pixels the output's size reproduces them exactly.
            x = roi_align(x.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        if cfg.hflip:
            flip = torch.from_numpy(rng.random(n) < 0.5).to(dev)[:, None, None, None]
            x = torch.where(flip, x.flip(3), x)
        if self.rand_augment is not None:
            x = torch.cat([self.rand_augment(group) for group in x.split(RA_GROUP)])
        return x

    def __iter__(self):
        cfg, dev = self.cfg, self.cfg.torch_device
        rng = np.random.default_rng([cfg.seed, cfg.rank, self.epoch])
        for ids in batch_slices(rank_indices(self.split_size, cfg, self.epoch), cfg.batch_size, cfg.last_batch):
            idx = torch.from_numpy(ids).to(dev, non_blocking=True)
            x = self.images.index_select(0, idx)
            if cfg.is_train:
                x = self._augment(x, rng)
            yield normalize(x, cfg), self.labels.index_select(0, idx)
