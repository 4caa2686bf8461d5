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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(device) -> dict:
    """Device (name, capability, memory), CUDA/cuDNN/driver, package versions, CPU, NVML status."""
    import torch
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
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
