"""torchrun DDP, small: one process per device, NCCL on GPUs and gloo on CPUs.

Outside torchrun (no WORLD_SIZE) everything here is the single-process identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum a few numbers over ranks (one all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        return self.sum([float(flag)], device)[0] > 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks of a device tensor (read it once, where the caller needs it)."""
        if self.enabled:
            dist.all_reduce(t)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place max over ranks of a device tensor: no host round trip (NCCL queues it)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) to every rank: each rank updates its own from
        its own batches, so evaluate this before evaluating, or ranks evaluate different models."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b, 0)

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group if there is one; return it and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
