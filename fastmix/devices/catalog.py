"""The device catalog (fastmix/devices/gpus.yaml): peaks, bandwidth, memory, price, each with its source.

`load_catalog(path)` merges a user's YAML over the built-in one (field by field), so a user can
fix a price or add a GPU without copying the file. `FASTMIX_CATALOG` names such a file too.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

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


def load_catalog(path: str | Path | None = None) -> dict[str, Device]:
    entries = yaml.safe_load(BUILTIN.read_text())
    path = path or os.environ.get("FASTMIX_CATALOG")
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: catalog file not found")
        for key, fields in (yaml.safe_load(path.read_text()) or {}).items():
            entries[key] = {**entries.get(key, {}), **fields}
    out = {}
    for key, e in entries.items():
        missing = [f for f in FIELDS if f not in e]
        if missing:
            raise ValueError(f"catalog entry {key!r}: missing {missing}")
        out[key] = Device(key=key, **{f: e[f] for f in FIELDS}, source=e.get("source", ""),
                          match=tuple(e.get("match", ())))
    return out


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
