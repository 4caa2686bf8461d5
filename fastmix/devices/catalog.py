"""The device catalog (fastmix/devices/gpus.yaml): peaks, bandwidth, memory, price, each with its source.

`load_catalog(path)` merges a user's YAML over the built-in one (field by field), so a user can
fix a price or add a GPU without copying the file. `FASTMIX_CATALOG` names such a file too.
The `cpu` entry is this host: its name says what /proc/cpuinfo reports (model, cores, vector
unit, bf16 dot products, AMX), and its bf16 peak follows from those flags (`host_cpu`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from fastmix import safeyaml

from .environment import cpu_flags, cpu_isa, cpu_name

BUILTIN = Path(__file__).parent / "gpus.yaml"
FIELDS = ("name", "fp32", "fp16_tensor", "bf16_tensor", "bandwidth_gbs", "memory_gb", "price_per_hour")


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    fp32: float              # TFLOP/s
    fp16_tensor: float | None
    bf16_tensor: float | None
    bandwidth_gbs: float
    memory_gb: float
    price_per_hour: float
    source: str = ""
    match: tuple = ()

    def peak_tflops(self, precision: str) -> float:
        """The dense peak a GEMM can reach at this precision (tensor cores where they exist)."""
        if precision == "fp32":
            return self.fp32
        peak = {"fp16": self.fp16_tensor, "bf16": self.bf16_tensor}[precision]
        if peak is None:
            raise ValueError(f"{self.name} has no {precision} tensor cores")
        return peak

    def supports(self, precision: str) -> bool:
        return precision == "fp32" or {"fp16": self.fp16_tensor, "bf16": self.bf16_tensor}[precision] is not None


def host_cpu(entry: Device, flags: frozenset[str]) -> Device:
    """The catalog's `cpu` entry described as this host: "CPU (2 cores, AMD EPYC: AVX-512, AVX512-BF16,
    no AMX)". A catalog without a bf16 figure gets one from the flags: AVX512-BF16's VDPBF16PS does two
    bf16 multiply-adds per fp32 lane at the rate of an fp32 FMA, so its peak is twice the fp32 one.
    AMX tiles are an order above that and vary by part, so with AMX no figure is assumed (give one
    with --catalog): predictions then say there is none rather than guess."""
    bf16 = entry.bf16_tensor
    if bf16 is None and "avx512_bf16" in flags and "amx_bf16" not in flags:
        bf16 = 2 * entry.fp32
    name = f"{entry.name} ({os.cpu_count()} cores, {cpu_name()}: {cpu_isa(flags)})"
    return replace(entry, name=name, bf16_tensor=bf16)


def load_catalog(path: str | Path | None = None, host_flags: frozenset[str] | None = None) -> dict[str, Device]:
    """The catalog, its `cpu` entry describing a host with `host_flags` (default: this one's)."""
    entries = safeyaml.load(BUILTIN)
    path = path or os.environ.get("FASTMIX_CATALOG")
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: catalog file not found")
        user = safeyaml.load(path) or {}  # no aliases (fastmix/safeyaml.py)
        if not isinstance(user, dict) or not all(isinstance(f, dict) for f in user.values()):
            raise ValueError(f"{path}: expected a mapping of catalog keys to fields, like gpus.yaml")
        for key, fields in user.items():
            entries[key] = {**entries.get(key, {}), **fields}
    out = {}
    for key, e in entries.items():
        missing = [f for f in FIELDS if f not in e]
        if missing:
            raise ValueError(f"catalog entry {key!r}: missing {missing}")
        bad = [f for f in FIELDS[1:] if not (e[f] is None and f.endswith("_tensor")) and not _positive(e[f])]
        if bad:  # a peak or price that is not a positive number would divide into nonsense later
            raise ValueError(f"catalog entry {key!r}: {bad[0]} must be a positive number, got {e[bad[0]]!r}")
        out[key] = Device(key=key, **{f: e[f] for f in FIELDS}, source=e.get("source", ""),
                          match=tuple(e.get("match", ())))
    if "cpu" in out:
        out["cpu"] = host_cpu(out["cpu"], cpu_flags() if host_flags is None else host_flags)
    return out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def lookup(catalog: dict[str, Device], key_or_name: str) -> Device:
    """By catalog key ("t4") or by a device name as CUDA reports it ("Tesla T4")."""
    if key_or_name in catalog:
        return catalog[key_or_name]
    for dev in catalog.values():
        if any(re.search(rf"\b{re.escape(m)}\b", key_or_name, re.IGNORECASE) for m in dev.match):
            return dev
    raise KeyError(f"{key_or_name!r} is not in the catalog (keys: {sorted(catalog)}); add it with --catalog FILE")


def present_device(catalog: dict[str, Device]) -> Device:
    import torch
    if torch.cuda.is_available():
        return lookup(catalog, torch.cuda.get_device_name())
    return catalog["cpu"]
