"""torchvision GPU decode: raw JPEG bytes from the shards, decoded in batches by nvJPEG
(`torchvision.io.decode_jpeg(list, device="cuda")`), then crop/resize/flip as torch ops on
the device. Without a GPU the same code decodes on the CPU, so it stays testable.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from .common import BaseLoader, LoaderConfig, batch_slices, normalize, rank_indices
from .shardindex import ShardIndex


def random_resized_crop_box(h: int, w: int, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop.get_params, drawing from `rng`: (top, left, height, width)."""
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the largest center crop within the ratio range
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class NvJPEGLoader(BaseLoader):
    def __init__(self, cfg: LoaderConfig):
        self.index = ShardIndex(cfg)
        super().__init__(cfg, len(self.index))
        self._io = ThreadPoolExecutor(max(1, cfg.workers))

    @property
    def AUGMENTS(self):  # crops and flips run where the decode does
        where = self.cfg.torch_device.type
        return {"random-resized-crop": where, "hflip": where}

    def _read(self, ids):
        return [torch.frombuffer(bytearray(self.index.read(i)), dtype=torch.uint8) for i in ids]

    def _transform(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg, size = self.cfg, [self.cfg.image_size, self.cfg.image_size]
        if cfg.is_train:
            top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], cfg.scale, cfg.ratio, rng)
            img = F.resized_crop(img, top, left, h, w, size, antialias=True)
            return F.horizontal_flip(img) if cfg.hflip and rng.random() < 0.5 else img
        return F.center_crop(F.resize(img, cfg.resize_to, antialias=True), size)

    def __iter__(self):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, cfg.rank, self.epoch])
        batches = batch_slices(rank_indices(self.split_size, cfg, self.epoch), cfg.batch_size, cfg.last_batch)
        # One batch of file reads ahead, on threads, while the device decodes the current one.
        ahead = self._io.submit(self._read, batches[0]) if batches else None
        for k, ids in enumerate(batches):
            data = ahead.result()
            if k + 1 < len(batches):
                ahead = self._io.submit(self._read, batches[k + 1])
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=cfg.torch_device)
            images = torch.stack([self._transform(img, rng) for img in decoded])
            labels = torch.from_numpy(self.index.labels[ids]).to(cfg.torch_device, non_blocking=True)
            yield normalize(images, cfg), labels
