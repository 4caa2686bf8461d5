"""Epochs that fit a wall-clock budget (`time_budget_min`), decided once, before training, from
an update and an evaluation timed on this machine.

A recipe tuned on one machine ran twice as long on another: tiny64's 7 epochs took 25 minutes
on a 2-core CPU with native bf16 (AVX512-BF16) and would take about an hour on a 2-core AVX2
one, which has to compute in fp32. With a budget, `epochs` is the most the recipe runs and the
trainer runs as many whole epochs as its measured speed fits, with the schedule (one-cycle,
progressive sizes) laid over those epochs. The choice is saved with the run; a resume keeps it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from fastmix.devices.allocator import keep_batch_buffers

from . import loadercost, speed
from .recipe import image_size_at

# A real loader's cost over a batch in memory, and this timing's error: tiny64's epochs ran 4 %
# (batch 128) and 18 % (batch 64) longer than the updates timed here; the budget's slack (27.5 of
# 30 minutes) takes the rest.
LOADER_MARGIN = 0.10
LOADER_COST_UPDATES = 6  # the trainer's per-epoch loader-free timing (warm-up + 5 updates)


def epochs_within(budget_s: float, most: int, epoch_s: Callable[[int, int], float], eval_s: float) -> int:
    """The most epochs E <= `most` whose epochs (epoch_s(e, E): seconds of epoch e when the run has
    E epochs) and E evaluations fit `budget_s`; at least 1."""
    fits = [e for e in range(1, most + 1) if sum(epoch_s(k, e) for k in range(e)) + e * eval_s <= budget_s]
    return max(fits, default=1)


def plan(trainer, budget_s: float) -> dict:
    """Time the trainer's update at every size its schedule may visit and its evaluation; return
    {"epochs", "update_s" per size, "eval_s", "budget_s"}; the timing's own seconds come off the
    budget. The weights are left as they were."""
    started = time.monotonic()
    cfg, device = trainer.cfg, trainer.device
    fmt = torch.channels_last if trainer.channels_last else torch.contiguous_format
    dtype = getattr(torch, speed.LOADER_DTYPE[trainer.precision])

    def batch(n: int, size: int):
        x = torch.randn(n, 3, size, size, device=device).to(dtype).contiguous(memory_format=fmt)
        return x, torch.randint(0, trainer.num_classes, (n,), device=device)
    sizes = sorted({image_size_at(dataclasses.replace(cfg, epochs=e), k)
                    for e in range(1, cfg.epochs + 1) for k in range(e)})
    loss = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def update(size: int) -> float | None:
        return loadercost.loader_free_seconds(trainer.net, trainer.model, trainer.optimizer, batch(trainer.micro_batch, size),
                                              trainer.accum_steps, trainer.precision, device, loss,
                                              trainer.channels_last, cfg.clip_grad, steps=3)
    if device.type == "cpu":  # as the run will have it from its first batch (loaders/common.py)
        keep_batch_buffers()  # else every large temporary is mmap'd and zeroed: 1.7-1.9 s against 1.0-1.2
    update_s = {s: (update(s), update(s))[1] for s in sizes}  # twice, the second kept: the first is cold
    if any(v is None for v in update_s.values()):
        raise ValueError("time_budget_min: no device memory left to time an update")
    val_size = cfg.val_image_size or cfg.image_size
    x, _ = batch(trainer.micro_batch * 2, val_size)
    trainer.model.eval()  # what Trainer.evaluate runs: uncompiled, unwrapped
    with torch.no_grad():
        forward_s = speed.median_seconds(lambda: _forward(trainer, x), device, 3, warmup=2)
    trainer.model.train()
    eval_s = len(trainer.val_loader) * forward_s * (2 if trainer.ema is not None else 1)  # EMA's weights too
    budget_s -= time.monotonic() - started

    def epoch_s(k: int, e: int) -> float:
        s = update_s[image_size_at(dataclasses.replace(cfg, epochs=e), k)]
        return s * (trainer.updates_per_epoch * (1 + LOADER_MARGIN) + LOADER_COST_UPDATES)
    return {"epochs": epochs_within(budget_s, cfg.epochs, epoch_s, eval_s), "budget_s": round(budget_s, 1),
            "update_s": {str(k): round(v, 4) for k, v in update_s.items()}, "eval_s": round(eval_s, 3)}


def _forward(trainer, x):
    with speed.autocast(trainer.precision, trainer.device):
        trainer.model(x)


def timed_sizes(update_s: dict) -> str:
    """"0.24 s at 40 px, 0.43 s at 56 px": plan()'s update timings, as the console and the report say them."""
    return ", ".join(f"{float(v):.2f} s at {k} px" for k, v in update_s.items())


def choose(trainer, elapsed_s: float) -> dict:
    """plan() for what is left of the budget, agreed by every rank (the fewest epochs), and said."""
    cfg = trainer.cfg
    chosen = plan(trainer, 60 * cfg.time_budget_min - elapsed_s)
    chosen["epochs"] = int(min(trainer.dist.gather(chosen["epochs"])))
    if trainer.dist.is_main:
        print(f"time budget {cfg.time_budget_min:g} min: {chosen['epochs']} epochs fit (an update takes "
              f"{timed_sizes(chosen['update_s'])}; "
              f"an evaluation {chosen['eval_s']:.0f} s)", flush=True)
    return chosen
