"""Batch augmentations and the loss, on the training device (every loader backend gets them).

Per-image augmentations (crop, flip, RandAugment) belong to the loaders, which apply them
where they decode; see README for which backend does what. Here: timm's Mixup/CutMix and
RandomErasing on the normalized batch, and the loss that matches (soft targets under mixup).
"""
from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .recipe import TrainConfig


class BatchAugment:
    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device):
        self.device = str(device)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=num_classes)
        self.erase = None
        if cfg.reprob > 0:  # 'pixel': per-pixel normal noise, right for normalized inputs
            self.erase = RandomErasing(cfg.reprob, mode="pixel", max_count=1, device=self.device)
        self.loss = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        """(images, int labels) -> (augmented images, targets for self.loss)."""
        if self.erase is not None:
            images = self.erase(images)
        if self.mixup is not None:
            if len(images) % 2:
                raise ValueError(f"mixup needs even micro-batches (got {len(images)})")
            images, labels = self.mixup(images, labels)
        return images, labels

    @property
    def names(self) -> dict[str, str]:
        """What this applies, name -> where (the training device), as loaders report theirs."""
        names = ["random-erasing"] * (self.erase is not None) + ["mixup/cutmix"] * (self.mixup is not None)
        return dict.fromkeys(names, self.device)
