"""What the loader costs a run: the same update on one batch held in memory, with no loader running.

The data-wait share sees only the time the loop blocks on `next()`. On a CPU the loader's threads
also take cores from the compute (a parallel op waits for its slowest thread), which no wait shows.
So after every epoch (the loader idle), the trainer times a few updates on the epoch's last batch
and compares: slowdown = 1 - epoch images/s / loader-free images/s. The slowdown holds the waits
too (it is everything the loop lost to its loader), and in the first epoch also the warm-up (and
the compile, where compile is on).

The bare update is the trainer's: forward under autocast, cross-entropy with the run's label
smoothing (on the batch's hard labels), backward per micro-batch, gradient clipping, an optimizer step. It steps a fresh
optimizer of the run's kind over the same parameter groups (the run's optimizer, its state and
step hooks are not touched) and puts the weights back afterwards, so training is unchanged. Left
out, so the slowdown is a slight upper bound: mixup/cutmix and erasing, the EMA update and the
non-finite checks.
"""
from __future__ import annotations

import math

import torch

from . import speed


def loader_free_seconds(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        batch: tuple[torch.Tensor, torch.Tensor], accum_steps: int, precision: str,
                        device: torch.device, loss_fn=None, channels_last: bool = True, clip: float | None = None,
                        steps: int = 5) -> float | None:
    """Median seconds of one update (forward, backward x accum_steps, clip, optimizer step) on
    `batch`; None where the device has no memory left for the copy it needs."""
    x, y = batch
    if not channels_last:
        x = x.contiguous()  # as forward_backward hands it to the model
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    try:
        # on the host: a GPU run sized to its memory has no room for a second copy of the weights
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        # the same kind of optimizer (fused AdamW, say) over the same groups and hyperparameters
        bare = type(optimizer)([dict(group) for group in optimizer.param_groups])
    except torch.cuda.OutOfMemoryError:
        return None

    def update():
        for _ in range(accum_steps):
            with speed.autocast(precision, device):
                logits = net(x)
            (loss_fn(logits.float(), y) / accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
        bare.step()
        bare.zero_grad(set_to_none=True)
    try:
        return speed.median_seconds(update, device, steps, warmup=1)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del bare
        model.load_state_dict(weights)
        speed.empty_cache(device)


def slowdown(images_per_s: float, loader_free_images_per_s: float | None) -> float | None:
    """The share of the loader-free rate the run lost (0.05: the loop ran 5 % slower)."""
    if not loader_free_images_per_s:
        return None
    return 1 - images_per_s / loader_free_images_per_s
