"""FFCV: .beton through ffcv's Loader; JPEG decode + crop fused in numba-compiled code.

Sharding passes this rank's subset as `indices` (ffcv's own `distributed=True` uses
DistributedSampler, which pads ranks with repeated samples and needs a process group);
ffcv then reshuffles that subset every epoch from the seed. An epoch abandoned before its end
(close the generator: the trainer does) closes ffcv's epoch thread and frees its buffers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import BaseLoader, LoaderConfig, manifest_split, normalize, rank_indices, require
from .labels import check_beton_labels, class_count


class FFCVLoader(BaseLoader):
    # ffcv has no RandAugment; its crop and flip run in numba-compiled code on the CPU.
    # DCT-scaled decode and an in-place flip fused into it (loaders/ffcv_decode.py); False: ffcv's
    # own full-decode decoders and RandomHorizontalFlip (bench.loaders' `ffcv-fulldecode`, the before).
    fast_decode = True

    def __init__(self, cfg: LoaderConfig):
        require("ffcv", "ffcv")
        from fastmix.data.betonread import check_beton
        info = manifest_split(cfg)
        self.path = Path(cfg.data) / (info.get("beton") or f"ffcv/{cfg.split}.beton")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: not found; convert with --formats ffcv")
        # ffcv's own Reader opens a cut file and trains on it; this one checks the table and size.
        reader = check_beton(self.path)
        self.classes = class_count(cfg.data)
        check_beton_labels(self.path, reader.metadata["f1"], self.classes)
        super().__init__(cfg, int(reader.num_samples))
        self._loader = None

    def _build(self):
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage
        cfg, device = self.cfg, self.cfg.torch_device
        size = (cfg.image_size, cfg.image_size)
        if not cfg.is_train:
            center = CenterCropRGBImageDecoder
            if self.fast_decode:
                from .ffcv_decode import ScaledCenterCropDecoder as center
            image = [center(size, ratio=cfg.crop_ratio)]
            order = OrderOption.SEQUENTIAL
        else:
            if self.fast_decode:  # the flip is fused into the decoder, in place
                from .ffcv_decode import ScaledRandomResizedCropDecoder
                image = [ScaledRandomResizedCropDecoder(size, scale=cfg.scale, ratio=cfg.ratio,
                                                        flip_prob=0.5 if cfg.hflip else 0.0)]
            else:
                image = [RandomResizedCropRGBImageDecoder(size, scale=cfg.scale, ratio=cfg.ratio)]
                image += [RandomHorizontalFlip()] if cfg.hflip else []
            order = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM}[cfg.order]
        # A fresh list of fresh operations per Loader: ffcv binds state to them.
        image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]
        label = [IntDecoder(), ToTensor(), Squeeze(-1), ToDevice(device, non_blocking=True)]
        indices = np.sort(rank_indices(self.split_size, cfg, 0)).astype(np.uint64)  # ffcv wants uint64
        loader = Loader(str(self.path), batch_size=cfg.batch_size, num_workers=cfg.workers,
                        os_cache=cfg.os_cache, order=order, seed=cfg.seed, indices=indices,
                        drop_last=cfg.last_batch == "drop", pipelines={"image": image, "label": label})
        # the labels ffcv itself read (the file may have changed since __init__): held in memory for every epoch
        check_beton_labels(self.path, loader.reader.metadata["f1"], self.classes)
        return loader

    def __iter__(self):
        if self._loader is None:
            self._loader = self._build()
        self._loader.next_epoch = self.epoch
        batches = iter(self._loader)  # ffcv's EpochIterator: a thread with its own pinned/GPU buffers
        try:
            for images, labels in batches:
                yield normalize(images, self.cfg), labels.to(torch.int64)
        finally:
            # Abandoned mid-epoch (the generator closed), ffcv's thread would block forever on
            # its full queue, holding its buffers; close() tells it to stop within its 0.5 s poll.
            batches.close()
            batches.join(timeout=5)
