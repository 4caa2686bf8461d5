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

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from .common import BaseLoader, LoaderConfig, batch_slices, normalize, rank_indices
from .geometry import center_crop_boxes, resized_crop_boxes
from .shardindex import ShardIndex


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
        cfg, (h, w) = self.cfg, np.array(shapes).T
        if not cfg.is_train:  # torchvision's resize of the shorter side + center crop
            return center_crop_boxes(h, w, cfg.resize_to, cfg.image_size).tolist(), [False] * len(shapes)
        boxes = resized_crop_boxes(h, w, cfg.scale, cfg.ratio, rng).tolist()
        flips = (rng.random(len(shapes)) < 0.5) & cfg.hflip
        return boxes, flips.tolist()

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
