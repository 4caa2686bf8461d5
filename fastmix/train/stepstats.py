"""Per-update training statistics that stay on the device until they are read.

Reading a CUDA tensor on the host (`.item()`, `.tolist()`, `float(t)`) waits for every kernel
queued before it. The trainer used to do that ~7 times per update; now the loss, the gradient
norm, the skip counters and the loss scale accumulate here as device tensors, and `read()` is
the one host synchronization, called every `log_every` updates and at the end of an epoch.
"""
from __future__ import annotations

import math

import torch

FIELDS = ("loss_sum", "updates_ok", "nonfinite", "scaler_skipped", "in_row", "max_in_row", "loss", "grad_norm",
          "scale")


class UpdateStats:
    def __init__(self, device: torch.device):
        self.values = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)

    def new_epoch(self) -> None:
        """Zero the epoch's sums; the non-finite streak carries over (as the run's stop rule does)."""
        keep = torch.zeros_like(self.values)
        keep[FIELDS.index("in_row")] = 1
        keep[FIELDS.index("max_in_row")] = 1
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
        self.values = torch.stack([
            v[0] + torch.where(counted, loss, torch.zeros_like(loss)), v[1] + counted.double(), v[2] + nonfinite,
            v[3] + scaler_skipped, in_row, torch.maximum(v[5], in_row), loss, grad_norm,
            scale.double().reshape(()) if scale is not None else torch.full_like(loss, math.nan)])

    def read(self) -> dict:
        """The host synchronization: every field as a float; non-finite last values as None
        (JSON has no Infinity/NaN, and a skipped update has no gradient norm to report)."""
        out = dict(zip(FIELDS, self.values.tolist()))
        for key in ("loss", "grad_norm", "scale"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out
