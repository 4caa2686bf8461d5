"""Every speed trick in one place: precision, channels_last, torch.compile, and their choice.

- precision: fp16 autocast + GradScaler (T4/V100: no bf16), bf16 autocast (Ampere and newer,
  CPUs with native bf16), fp32. `auto` picks by device.
- channels_last: `auto` times a few training steps both ways on the present device, because
  the answer differs per variant (cuDNN's depthwise kernels: 7x7 gains, 9x9 can lose).
- torch.compile: the first step's compile time is reported apart from throughput (train.py).
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA device here (use device: cpu)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {PRECISIONS}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        # Without native bf16 (AVX512-BF16/AMX) CPU autocast emulates it: measured ~20x slower.
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bf16: use precision fp16")
    return precision


def autocast(precision: str, device: torch.device):
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's exponent range); disabled is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, reps: int = 5, warmup: int = 2) -> float:
    """Median wall seconds of `fn()` after `warmup` calls, the device synchronized around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_train_steps(model: nn.Module, x: torch.Tensor, precision: str, steps: int = 5, warmup: int = 2) -> float:
    """Median seconds of forward + backward on `x` (random labels), after `warmup` steps."""
    y = torch.randint(0, model.head.out_features, (x.shape[0],), device=x.device)

    def step():
        with autocast(precision, x.device):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return median_seconds(step, x.device, steps, warmup)


def choose_channels_last(model: nn.Module, setting: str, device: torch.device, precision: str,
                         batch: int, size: int) -> tuple[bool, dict]:
    """`on`/`off` as given; `auto` measures both memory formats on a copy of the model."""
    if setting in ("on", "off", True, False):
        return setting in ("on", True), {}
    if setting != "auto":
        raise ValueError(f"channels_last {setting!r}: choose auto, on or off")
    probe = copy.deepcopy(model).to(device).train()  # a copy: its BN statistics get disturbed
    x = torch.randn(batch, 3, size, size, device=device)
    timings = {}
    for fmt in ("channels_last", "contiguous"):
        memory_format = getattr(torch, "channels_last" if fmt == "channels_last" else "contiguous_format")
        probe = probe.to(memory_format=memory_format)
        timings[fmt] = time_train_steps(probe, x.contiguous(memory_format=memory_format), precision)
    del probe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return timings["channels_last"] < timings["contiguous"], timings


def compile_model(model: nn.Module, enabled: bool, mode: str = "default") -> nn.Module:
    if not enabled:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)
