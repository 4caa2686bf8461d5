"""Evaluation, one copy for the trainer and tools/evaluate.py: top-1, top-5, fp32 loss, images/s.

The loss, top-1 and top-5 are computed in fp32 from fp32 logits over the whole split (ConvMixer
classifies in fp32 even under autocast), summed over ranks when `dist` is given.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import speed


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = True, dist=None, threads: int | None = None) -> dict:
    """`loader` yields (normalized images, int labels) on `device`, as every loaders/ backend does."""
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1, correct5, count = (torch.zeros((), dtype=torch.int64, device=device) for _ in range(3))
    loader.set_epoch(0)
    speed.sync(device)
    start = time.perf_counter()
    batches = iter(loader)
    speed.compute_threads(threads)  # after the loader starts: ffcv resets torch's threads there
    for x, y in batches:
        if not channels_last:
            x = x.contiguous()
        with speed.autocast(precision, device):
            logits = net(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(dim=1).sum()
        count += len(y)
    speed.sync(device)
    elapsed = time.perf_counter() - start
    # images/s summed over ranks: the whole job's rate, and the same number on every rank
    values = torch.stack([loss_sum, correct1.double(), correct5.double(), count.double()]).tolist()  # one read
    values.append(values[3] / max(elapsed, 1e-9))
    loss, c1, c5, n, rate = dist.sum(values, device) if dist is not None else values
    return {"eval_loss": loss / max(1, n), "top1": 100 * c1 / max(1, n), "top5": 100 * c5 / max(1, n),
            "eval_images": int(n), "eval_images_per_s": rate}
