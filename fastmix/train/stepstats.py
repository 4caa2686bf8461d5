"""Per-update training statistics that stay on the device until they are read.

Reading a CUDA tensor on the host (`.item()`, `.tolist()`, `float(t)`) waits for every kernel
queued before it. The trainer used to do that ~7 times per update; now the loss, the gradient
norm, the skip counters and the loss scale accumulate here as device tensors, and `read()` is
the one host synchronization, called every `log_every` updates and at the end of an epoch.

Two streaks stop a run (Trainer._read): non-finite losses in a row (`max_in_row`), and fp16
GradScaler skips in a row at a loss scale of at most 1 (`max_scaler_in_row`). The GradScaler skips
an update whose scaled gradients overflow and halves its scale; a few skips at the start are how
it finds its scale. At a scale <= 1 nothing was amplified: a skip there means the gradients are
non-finite although the loss is finite, and without this count the run would skip every update
forever (the loss stays finite, so `max_in_row` never grows).
"""
from __future__ import annotations

import math

import torch

FIELDS = ("loss_sum", "updates_ok", "nonfinite", "scaler_skipped", "in_row", "max_in_row", "loss", "grad_norm",
          "scale", "scaler_in_row", "max_scaler_in_row")
STREAKS = ("in_row", "max_in_row", "scaler_in_row", "max_scaler_in_row")  # carried across epochs


class NonFiniteLoss(RuntimeError):
    pass


def check_streaks(stats: dict, most: int, where: str) -> None:
    """Stop the run (one line) when read() shows `most` non-finite losses, or `most` GradScaler
    skips at a scale <= 1, in a row; `where` names the update, precision and lr."""
    if stats["max_in_row"] >= most:
        raise NonFiniteLoss(f"the training loss was non-finite for {int(stats['max_in_row'])} updates in a row "
                            f"({where}); try a lower lr, clip_grad, or precision fp32/bf16")
    if stats["max_scaler_in_row"] >= most:
        raise NonFiniteLoss(f"the fp16 GradScaler skipped {int(stats['max_scaler_in_row'])} updates in a row at a "
                            f"loss scale <= 1: the loss is finite but its gradients are not ({where}); "
                            "try a lower lr, clip_grad, or precision fp32/bf16")


class UpdateStats:
    def __init__(self, device: torch.device):
        self.values = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)

    def new_epoch(self) -> None:
        """Zero the epoch's sums; the streaks carry over (as the run's stop rules do)."""
        keep = torch.zeros_like(self.values)
        for name in STREAKS:
            keep[FIELDS.index(name)] = 1
        self.values = self.values * keep

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, nonfinite: torch.Tensor, scaler_skipped: torch.Tensor,
            scale: torch.Tensor | None) -> None:
        """One update: `nonfinite`/`scaler_skipped` are 0/1 device tensors (skipped for a
        non-finite loss or gradient / by the fp16 GradScaler on an overflow)."""
        v = self.values
        loss, grad_norm = loss.detach().double(), grad_norm.detach().double()
        nonfinite, scaler_skipped = nonfinite.double(), scaler_skipped.double()
        in_row = (v[4] + 1) * nonfinite
        counted = nonfinite == 0  # updates whose (finite) loss enters the epoch's mean
        scale = scale.double().reshape(()) if scale is not None else torch.full_like(loss, math.nan)
        unscaled_skip = scaler_skipped * (scale <= 1).double()  # NaN scale (no scaler): never
        scaler_in_row = (v[9] + 1) * unscaled_skip
        self.values = torch.stack([
            v[0] + torch.where(counted, loss, torch.zeros_like(loss)), v[1] + counted.double(), v[2] + nonfinite,
            v[3] + scaler_skipped, in_row, torch.maximum(v[5], in_row), loss, grad_norm, scale,
            scaler_in_row, torch.maximum(v[10], scaler_in_row)])

    def read(self) -> dict:
        """The host synchronization: every field as a float; non-finite last values as None
        (JSON has no Infinity/NaN, and a skipped update has no gradient norm to report)."""
        out = dict(zip(FIELDS, self.values.tolist()))
        for key in ("loss", "grad_norm", "scale"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out
