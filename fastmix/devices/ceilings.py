"""A device's own ceilings, measured: a large matmul (TFLOP/s) and a large copy (GB/s, read + write).

Catalog peaks are datasheet numbers; these are what this device (or this host's CPU) reaches,
so MFU can be stated against both.
"""
from __future__ import annotations

import functools
import statistics
import time

import torch

WARMUP_S = 0.2  # seconds of work before a ceiling is timed
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, reps: int = 5, warmup: int = 2, warmup_s: float = 0.0) -> float:
    """Median wall seconds of `fn()` after `warmup` calls and at least `warmup_s` seconds of calls
    (clocks ramp up, caches fill), the device synchronized around each timed call."""
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < warmup_s:
        fn()
        done += 1
        if done >= warmup:
            sync(device)  # the warm-up's time is the device's, not the queue's
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ceilings(device: torch.device, precision: str, n: int | None = None, nbytes: int | None = None) -> dict:
    """Median of 10 repeats after >= 200 ms of warm-up each (a GPU idling at low clocks needs that to
    reach its boost clock), on random data. Defaults: an 8192^2 matmul and a 1 GiB copy on CUDA;
    1024^2 and 128 MiB on a CPU."""
    n = n or (8192 if device.type == "cuda" else 1024)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[precision]) for _ in range(2))
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).fill_(1)
    dst = torch.empty_like(src)
    mm = median_seconds(lambda: a @ b, device, reps=10, warmup=1, warmup_s=WARMUP_S)
    cp = median_seconds(lambda: dst.copy_(src), device, reps=10, warmup=1, warmup_s=WARMUP_S)
    return {"matmul_tflops": 2 * n ** 3 / mm / 1e12, "matmul_n": n, "matmul_dtype": precision,
            "copy_gbs": 2 * nbytes / cp / 1e9, "copy_bytes": nbytes}


@functools.lru_cache(maxsize=None)
def host_matmul_tflops(precision: str, n: int = 1024, reps: int = 20) -> float:
    """This host CPU's matmul TFLOP/s at `precision` with the present compute threads (once per
    process): the peak CPU MFU is stated against, since a VM's CPU has no datasheet peak. The
    fastest of `reps` runs, not the median: a shared 2-core machine (or a loader thread starting)
    slows single runs of a ~10 ms matmul, and a peak must not be lowered by that (seen: a
    3.6x low peak read by a trainer whose loader was starting)."""
    device = torch.device("cpu")
    a, b = (torch.randn(n, n, dtype=DTYPES[precision]) for _ in range(2))
    median_seconds(lambda: a @ b, device, reps=1, warmup=1, warmup_s=WARMUP_S)
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e12


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
