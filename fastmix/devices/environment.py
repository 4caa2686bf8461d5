"""What this machine is: device, driver, library versions, CPU. Written into every result file, so
a number can always be traced to the hardware and software that produced it."""
from __future__ import annotations

import os
import platform
from importlib import metadata

from .telemetry import device_info

PACKAGES = ("torch", "torchvision", "timm", "numpy", "pillow", "ffcv", "nvidia-ml-py")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def dali_version() -> str:
    """DALI ships per CUDA major (nvidia-dali-cuda120, -cuda130, ...): report whichever is there."""
    found = sorted(f"{d.metadata['Name']} {d.version}" for d in metadata.distributions()
                   if (d.metadata["Name"] or "").lower().startswith("nvidia-dali"))
    return ", ".join(found) or "not installed"


def _cpuinfo(field: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first `field : value` of /proc/cpuinfo (every core repeats it), or None off Linux."""
    try:
        with open(path) as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (avx2, fma, avx512f, avx512_bf16, amx_bf16, ...)."""
    return frozenset((_cpuinfo("flags", path) or "").split())


# What matters for a matmul's peak, in the order a reader wants it: the widest vector unit, then the
# low-precision dot products and matrix units (VDPBF16PS, AMX tiles) that decide bf16/fp16 speed.
_EXTRAS = (("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"), ("amx_bf16", "AMX-BF16"))


def cpu_isa(flags: frozenset[str]) -> str:
    """"AVX-512, AVX512-BF16, no AMX" for flags {avx512f, avx512_bf16, ...}: what the CPU computes with."""
    vector = ("AVX-512" if "avx512f" in flags else "AVX2 FMA" if {"avx2", "fma"} <= flags
              else "AVX2" if "avx2" in flags else "no AVX2" if flags else "flags unknown")
    parts = [vector, *(name for flag, name in _EXTRAS if flag in flags)]
    if flags and "amx_tile" not in flags:
        parts.append("no AMX")
    return ", ".join(parts)


def cpu_summary() -> str:
    """"AMD EPYC (AVX2 FMA, no AMX), 2 cores": the host a CPU run's speed depends on."""
    return f"{cpu_name()} ({cpu_isa(cpu_flags())}), {os.cpu_count()} cores"


def describe(device) -> dict:
    """Device (name, capability, memory), CUDA/cuDNN/driver, package versions, CPU, NVML status."""
    import torch
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
           "cpu_isa": cpu_isa(cpu_flags()),
           "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
           "packages": {**{p: package_version(p) for p in PACKAGES}, "nvidia-dali": dali_version()}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gb=props.total_memory / 1e9, multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(including_emulation=False))
        env["nvml"] = device_info(device.index or 0)
    else:
        env.update(device="cpu", nvml=device_info())
    return env
