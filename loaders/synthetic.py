"""Random tensors already on the device: the throughput ceiling with no I/O and no decode."""
from __future__ import annotations

import torch

from .common import BaseLoader, LoaderConfig, manifest_split, normalize


class SyntheticLoader(BaseLoader):
    AUGMENTS: dict[str, str] = {}

    def __init__(self, cfg: LoaderConfig, num_samples: int | None = None):
        if num_samples is None:
            num_samples = manifest_split(cfg)["written"]
        super().__init__(cfg, num_samples)
        g = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        self.images = normalize(torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), cfg)
        self.labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(cfg.torch_device)

    def __iter__(self):
        full, rest = divmod(self.num_samples, self.cfg.batch_size)
        for _ in range(full):
            yield self.images, self.labels
        if rest and self.cfg.last_batch == "partial":
            yield self.images[:rest], self.labels[:rest]
