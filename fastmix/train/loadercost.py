"""What the loader costs a run: the same update on one batch held in memory, with no loader running.

The data-wait share sees only the time the loop blocks on `next()`. On a CPU the loader's threads
also take cores from the compute (a parallel op waits for its slowest thread), which no wait shows.
So after every epoch (the loader idle), the trainer times a few updates on the epoch's last batch
and compares: slowdown = 1 - epoch images/s / loader-free images/s. The slowdown holds the waits
too (it is everything the loop lost to its loader), and in the first epoch also the warm-up (and
the compile, where compile is on).

A few timed updates on a machine others use are noisy: on a busy one they printed "loader cost
-104 % of 307 img/s", which no loader can cost. So every figure carries its noise (`cost`): the
spread of the timed updates (half their range over their median) carried into the slowdown, and at
least the size of a negative slowdown (the timing itself says it was off by that much). A slowdown
not above its noise is not a measurement: it is recorded as None (epochs.csv: empty) with the
noise, and said as "loader cost not measurable, timing noise ±X %".

The bare update is the trainer's: forward under autocast, cross-entropy with the run's label
smoothing (on the batch's hard labels), backward per micro-batch, gradient clipping, an optimizer step. It steps a fresh
optimizer of the run's kind over the same parameter groups (the run's optimizer, its state and
step hooks are not touched) and puts the weights back afterwards, so training is unchanged. Left
out, so the slowdown is a slight upper bound: mixup/cutmix and erasing, the EMA update and the
non-finite checks.
"""
from __future__ import annotations

import math
import statistics
import time

import torch

from . import speed


def loader_free_seconds(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        batch: tuple[torch.Tensor, torch.Tensor], accum_steps: int, precision: str,
                        device: torch.device, loss_fn=None, channels_last: bool = True, clip: float | None = None,
                        steps: int = 5) -> float | None:
    """Median seconds of one update (forward, backward x accum_steps, clip, optimizer step) on
    `batch`; None where the device has no memory left for the copy it needs."""
    times = update_seconds(net, model, optimizer, batch, accum_steps, precision, device, loss_fn, channels_last,
                           clip, steps)
    return None if times is None else statistics.median(times)


def update_seconds(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batch: tuple[torch.Tensor, torch.Tensor], accum_steps: int, precision: str,
                   device: torch.device, loss_fn=None, channels_last: bool = True, clip: float | None = None,
                   steps: int = 5) -> list[float] | None:
    """The seconds of each of `steps` updates after one untimed warm-up (loader_free_seconds'
    update); None where the device has no memory left for the copy it needs."""
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
        update()  # warm-up
        times = []
        for _ in range(steps):
            speed.sync(device)
            t = time.perf_counter()
            update()
            speed.sync(device)
            times.append(time.perf_counter() - t)
        return times
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


def cost(images_per_s: float, batch_size: int, times: list[float]) -> dict:
    """The epoch's loader cost from the loader-free update `times` (update_seconds): the loader-free
    rate, the slowdown (None where noise swamps it) and the noise, as shares."""
    free = batch_size / statistics.median(times)
    lost = slowdown(images_per_s, free)
    noise = max(abs(1 - lost) * timing_noise(times), -lost)  # a negative slowdown is noise by its size
    return {"loader_free_images_per_s": free, "loader_slowdown": lost if lost > noise else None,
            "loader_cost_noise": noise}


def timing_noise(times: list[float]) -> float:
    """Half the range of the timings over their median: a share of the median's time."""
    return (max(times) - min(times)) / 2 / statistics.median(times)


def describe(lost: float | None, noise: float | None = None) -> str:
    """The loader cost as the console and the docs say it: "3 %", or why there is no figure. A recorded
    slowdown without its noise (epochs.csv, older results) that is not positive is said as noise too."""
    if lost is not None and lost > 0:
        return f"{100 * lost:.0f} %"
    if lost is not None:
        noise = max(noise or 0.0, -lost)
    return "not measurable" + (f", timing noise ±{100 * noise:.0f} %" if noise else "")


def of_epoch(trainer, images_per_s: float) -> dict:
    """The trainer's epoch rate against the same update with no loader running, timed after every
    epoch so both see the same machine; {} under DDP (its all-reduce needs all ranks) or where the
    device has no memory for the measurement's copies; no cost where noise swamps it."""
    if trainer._last_batch is None or trainer.dist.enabled:
        return {}
    times = update_seconds(trainer.net, trainer.model, trainer.optimizer, trainer._last_batch,
                           trainer.accum_steps, trainer.precision, trainer.device,
                           # hard labels here: the run's loss without mixup's soft targets
                           torch.nn.CrossEntropyLoss(label_smoothing=trainer.cfg.label_smoothing),
                           trainer.channels_last, trainer.cfg.clip_grad)
    if times is None:
        return {}
    return cost(images_per_s, trainer.cfg.batch_size, times)
