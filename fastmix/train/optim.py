"""The paper's optimizer and schedule, from timm: AdamW (eps 1e-3) and a one-cycle LR per update.

The one-cycle schedule is the authors' (their timm fork's `onecyclelr`): piecewise linear
0 -> lr at 2/5 of training -> lr/20 at 4/5 -> 0, stepped every optimizer update. It is a timm
`Scheduler`, so it is driven like timm's cosine: `step_update(num_updates)`.
"""
from __future__ import annotations

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler

from .recipe import TrainConfig


class OneCycleLR(Scheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, total_updates: int):
        self.total_updates = max(1, total_updates)
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.step_update(0)

    def _get_lr(self, t: int) -> list[float]:
        knots = [0, 0.4 * self.total_updates, 0.8 * self.total_updates, self.total_updates]
        return [float(np.interp(t, knots, [0, lr, lr / 20, 0])) for lr in self.base_values]


def peak_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """lr as given, else lr_base scaled linearly from lr_base_batch to the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.lr_base * cfg.batch_size * world_size / cfg.lr_base_batch


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    # timm leaves biases and norm weights out of weight decay (filter_bias_and_bn); fused AdamW
    # (one kernel, and a step it skips on the device when `found_inf` is set) where asked
    extra = {"fused": True} if fused else {}
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps, **extra)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int,
                   total: int | None = None) -> Scheduler:
    """Over `total` updates (a time budget's plan, whose last epoch may be cut), else every epoch's."""
    total = cfg.epochs * updates_per_epoch if total is None else total
    if cfg.schedule == "onecycle":
        return OneCycleLR(optimizer, total)
    warmup = int(cfg.warmup_epochs * updates_per_epoch)
    # warmup_prefix: the cosine starts after the warmup, so it spans the remaining updates
    sched = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=0.0, warmup_t=warmup,
                              warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    sched.step_update(0)
    return sched
