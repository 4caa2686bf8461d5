"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter), in the paper's own shape.

Module names mirror timm's `convmixer_*` so timm's state_dicts load here unchanged
(tests check parameter counts, state_dict loading and identical outputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass(frozen=True)
class ConvMixerConfig:
    dim: int
    depth: int
    kernel: int
    patch: int
    act: str = "gelu"


VARIANTS = {
    "convmixer_1536_20": ConvMixerConfig(1536, 20, kernel=9, patch=7, act="gelu"),
    "convmixer_768_32": ConvMixerConfig(768, 32, kernel=7, patch=7, act="relu"),
    "convmixer_1024_20_ks9_p14": ConvMixerConfig(1024, 20, kernel=9, patch=14, act="gelu"),
    # CIFAR-size, as in the authors' CIFAR-10 script (kernel 5, patch 2)
    "convmixer_256_8": ConvMixerConfig(256, 8, kernel=5, patch=2, act="gelu"),
}


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class ConvMixer(nn.Module):
    def __init__(self, dim: int, depth: int, kernel: int = 9, patch: int = 7,
                 num_classes: int = 1000, act: str = "gelu", in_chans: int = 3):
        super().__init__()
        Act = ACTIVATIONS[act]
        self.config = ConvMixerConfig(dim, depth, kernel, patch, act)
        # Patch embedding: a conv whose kernel equals its stride, then act -> BN (the paper's order).
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch, stride=patch), Act(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[nn.Sequential(
            Residual(nn.Sequential(  # spatial mixing: depthwise conv, "same" padding
                nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"), Act(), nn.BatchNorm2d(dim))),
            nn.Conv2d(dim, dim, 1), Act(), nn.BatchNorm2d(dim),  # channel mixing: pointwise conv
        ) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        # Pool and classify in fp32 even under autocast: fp16 logits overflow (max 65504) and
        # gave the reference run its NaN losses; this layer costs <0.01 % of the FLOPs.
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device (FLOP counting)
            return self.head(x.mean(dim=(2, 3), dtype=torch.float32))
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.mean(dim=(2, 3), dtype=torch.float32))


def variant(model: str | ConvMixerConfig) -> ConvMixerConfig:
    """A registered variant's config by name (a config passes through)."""
    if isinstance(model, ConvMixerConfig):
        return model
    if model not in VARIANTS:
        raise ValueError(f"unknown ConvMixer variant {model!r}; registered: {sorted(VARIANTS)}")
    return VARIANTS[model]


def create_model(name: str, num_classes: int = 100, **overrides) -> ConvMixer:
    """A registered variant (see VARIANTS); `overrides` change its fields (e.g. kernel=5)."""
    return ConvMixer(num_classes=num_classes, **{**variant(name).__dict__, **overrides})


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
