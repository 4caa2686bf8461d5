"""torchvision GPU decode: raw JPEG bytes from the shards, decoded by nvJPEG
(`torchvision.io.decode_jpeg(list, device="cuda")`), then cropped, resized and flipped on the
device for the whole batch at once. Without a GPU the same code decodes on the CPU, so it
stays testable.

What it is for: GPU decoding with nothing but torch + torchvision installed (no DALI, no
ffcv), and a reference for the DALI path. It is not the fast path: torchvision decodes one
image at a time on GPUs without a hardware JPEG engine (T4, V100, A10G, L4), and it has no
RandAugment. On a T4 use `dali`.

The geometry is batched: every image's crop box (RandomResizedCrop, or the val resize +
center crop expressed as a box in the source) goes to one `torchvision.ops.roi_align` over
the zero-padded batch, in float, whose output feeds normalization directly. roi_align
averages ceil(box / output) bilinear samples per output pixel, so downscaling is
antialiased (box filter); flips are one `torch.where` over the batch. Per image there is one
copy into the padded batch instead of ~6 kernel launches (cast, resize, round, cast, flip).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

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

    def _boxes(self, shapes: list[tuple[int, int]], rng: np.random.Generator) -> tuple[list, list]:
        """Each image's crop as (x1, y1, x2, y2) in source pixels, and whether to flip it."""
        cfg, boxes, flips = self.cfg, [], []
        for h, w in shapes:
            if cfg.is_train:
                top, left, ch, cw = random_resized_crop_box(h, w, cfg.scale, cfg.ratio, rng)
                boxes.append((left, top, left + cw, top + ch))
                flips.append(bool(cfg.hflip and rng.random() < 0.5))
            else:  # torchvision's resize of the shorter side + center crop, as a box in the source
                short, long = sorted((h, w))
                rh, rw = (cfg.resize_to, int(cfg.resize_to * long / short)) if h <= w else \
                    (int(cfg.resize_to * long / short), cfg.resize_to)
                top, left = round((rh - cfg.image_size) / 2), round((rw - cfg.image_size) / 2)
                sy, sx = h / rh, w / rw
                boxes.append((left * sx, top * sy, (left + cfg.image_size) * sx, (top + cfg.image_size) * sy))
                flips.append(False)
        return boxes, flips

    def _crop_resize(self, decoded: list[torch.Tensor], rng: np.random.Generator) -> torch.Tensor:
        """Decoded uint8 CHW images of any sizes -> one float NCHW batch (0..255) of image_size."""
        shapes = [tuple(img.shape[1:]) for img in decoded]
        boxes, flips = self._boxes(shapes, rng)
        device, size = decoded[0].device, self.cfg.image_size
        padded = torch.zeros(len(decoded), 3, max(h for h, _ in shapes), max(w for _, w in shapes), device=device)
        for i, img in enumerate(decoded):
            padded[i, :, :img.shape[1], :img.shape[2]].copy_(img)
        rois = torch.tensor([(i, *box) for i, box in enumerate(boxes)], dtype=torch.float32)
        rois = rois.to(device, non_blocking=True)
        out = roi_align(padded, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if any(flips):
            flip = torch.tensor(flips).to(device, non_blocking=True).view(-1, 1, 1, 1)
            out = torch.where(flip, out.flip(-1), out)
        return out

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
            images = self._crop_resize(decoded, rng)
            labels = torch.from_numpy(self.index.labels[ids]).to(cfg.torch_device, non_blocking=True)
            yield normalize(images, cfg), labels
