"""What the loader costs a run: the same update on one batch held in memory, with no loader running.

The data-wait share sees only the time the loop blocks on `next()`. On a CPU the loader's threads
also take cores from the compute (a parallel op waits for its slowest thread), which no wait shows.
So after every epoch (the loader idle), the trainer times a few updates on the epoch's last
batch and compares: slowdown = 1 - epoch images/s / loader-free images/s. The update
steps a fresh optimizer of the run's kind over the same parameter groups (the run's optimizer,
its state and step hooks are not touched) and the weights are restored afterwards, so training
is unchanged; batch augmentations (mixup) are left out of the bare update, which makes the
slowdown a slight upper bound.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import speed


def loader_free_seconds(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        batch: tuple[torch.Tensor, torch.Tensor], accum_steps: int, precision: str,
                        device: torch.device, steps: int = 5) -> float:
    """Median seconds of one update (forward, backward x accum_steps, optimizer step) on `batch`."""
    x, y = batch
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # the same kind of optimizer (fused AdamW, say) over the same groups and hyperparameters
    bare = type(optimizer)([dict(group) for group in optimizer.param_groups])

    def update():
        for _ in range(accum_steps):
            with speed.autocast(precision, device):
                logits = net(x)
            (F.cross_entropy(logits.float(), y) / accum_steps).backward()
        bare.step()
        bare.zero_grad(set_to_none=True)
    try:
        return speed.median_seconds(update, device, steps, warmup=1)
    finally:
        model.load_state_dict(weights)
        del bare


def slowdown(images_per_s: float, loader_free_images_per_s: float | None) -> float | None:
    """The share of the loader-free rate the run lost (0.05: the loop ran 5 % slower)."""
    if not loader_free_images_per_s:
        return None
    return 1 - images_per_s / loader_free_images_per_s
