"""Every speed trick in one place: precision, channels_last, torch.compile, and their choice.

- precision: fp16 autocast + GradScaler (T4/V100: no bf16), bf16 autocast (Ampere and newer,
  CPUs with native bf16), fp32. `auto` picks by device.
- cuDNN autotuning (`cudnn.benchmark`): on for training, because every shape is fixed and the
  model is 7x7/9x9 depthwise convs whose best kernel cuDNN must measure; off where
  `torch.use_deterministic_algorithms(True)` asks for determinism.
- channels_last: `auto` times a few training steps both ways on the present device, because
  the answer differs per variant (cuDNN's depthwise kernels: 7x7 gains, 9x9 can lose). It is
  measured the way the run will train: autotuned, and compiled where compile is on. On a CPU
  the probe is 2 eager steps at batch 32 (seconds, not minutes); both say what they chose.
- CPU threads: the compute threads are set after every loader start (ffcv resets them).
- torch.compile: static shapes (`dynamic=False`), so each training resolution compiles once
  on purpose; evaluation runs the uncompiled module (eval mode, its 2x batch and the partial
  last batch would each recompile). Compile time is measured around the compilations
  (dynamo's start/end callbacks), not inferred from the first update.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings

import torch
from torch import nn

# the timing helpers live with the device ceilings they were written for; the speed tricks time with them too
from fastmix.devices.ceilings import median_seconds, sync  # noqa: F401

LOADER_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # what loaders hand over

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_PROBE_BATCH = 32  # channels_last's probe batch on a CPU
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


def compute_threads(setting: int | None) -> int:
    """Set torch's intra-op (compute) threads to `setting`, default OMP_NUM_THREADS, else every core
    this process may use, and return it. Called after each loader starts: importing ffcv sets them to 1 and ffcv's
    Loader to its worker count at construction and at every iter() (ffcv/pipeline/compiler.py),
    which made every ffcv and opencv training run compute on one core."""
    n = setting or int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))  # torchrun sets 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's exponent range); disabled is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_cudnn() -> bool:
    """Autotune cuDNN's kernels unless determinism was asked for; returns the setting."""
    torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    return torch.backends.cudnn.benchmark


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
                         batch: int, size: int, compile: bool = False,
                         compile_mode: str = "default") -> tuple[bool, dict]:
    """`on`/`off` as given; `auto` measures both memory formats on a copy of the model, compiled
    when the run compiles. Out of memory, it halves the probe's batch (the comparison holds)."""
    if setting in ("on", "off", True, False):
        return setting in ("on", True), {}
    if setting != "auto":
        raise ValueError(f"channels_last {setting!r}: choose auto, on or off")
    probe = copy.deepcopy(model).to(device).train()  # a copy: its BN statistics get disturbed
    steps, warmup = 5, 2
    if device.type == "cpu":
        # A CPU step at the run's batch takes seconds; 2 steps at a small batch rank the formats the
        # same way, and compiling the probe twice would cost minutes: it runs eagerly there.
        batch, steps, warmup, compile = min(batch, CPU_PROBE_BATCH), 2, 1, False
    print(f"channels_last auto: timing {steps} training steps per memory format at batch {batch}, {size} px, "
          f"{precision}{', compiled' if compile else ''} on {device.type}", flush=True)

    def measure(fmt: str, batch: int) -> float:
        memory_format = getattr(torch, "channels_last" if fmt == "channels_last" else "contiguous_format")
        net = compile_model(probe.to(memory_format=memory_format), compile, compile_mode)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        return time_train_steps(net, x, precision, steps=steps, warmup=warmup)

    timings = None
    while timings is None:
        try:
            timings = {fmt: measure(fmt, batch) for fmt in ("channels_last", "contiguous")}
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2  # both formats again at the smaller batch, once the except has freed its frames
            warnings.warn(f"channels_last probe: out of memory, retrying with batch {batch}", stacklevel=2)
        probe.zero_grad(set_to_none=True)
        empty_cache(device)
    del probe
    empty_cache(device)
    chosen = timings["channels_last"] < timings["contiguous"]
    print(f"channels_last auto: {'on' if chosen else 'off'} (channels_last {timings['channels_last']:.3f} s, "
          f"contiguous {timings['contiguous']:.3f} s per step)", flush=True)
    return chosen, timings


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_model(model: nn.Module, enabled: bool, mode: str = "default") -> nn.Module:
    """torch.compile with static shapes: one deliberate compilation per input shape."""
    if not enabled:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


class CompileTimer:
    """Wall seconds spent compiling while entered, from dynamo's compile start/end callbacks
    (they also fire for the backward graph compiled lazily at the first backward)."""

    def __init__(self):
        self.seconds, self.compilations, self._start = 0.0, 0, None

    def _on_start(self, _args) -> None:
        self._start = time.perf_counter()

    def _on_end(self, _args) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.compilations += 1
            self._start = None

    def __enter__(self) -> "CompileTimer":
        from torch._dynamo.callback import callback_handler
        callback_handler.register_start_callback(self._on_start)
        callback_handler.register_end_callback(self._on_end)
        return self

    def __exit__(self, *exc) -> None:
        from torch._dynamo.callback import callback_handler
        callback_handler.remove_start_callback(self._on_start)
        callback_handler.remove_end_callback(self._on_end)
