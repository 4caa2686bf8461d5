"""Runtime and cost predictions: a roofline per op, summed, with calibrated efficiencies.

    time(op) = max(FLOPs / (peak x compute efficiency), bytes / (bandwidth x memory efficiency))

Ops come from fastmix.model.flops (a multiply-add = 2 FLOPs). GEMM-like ops (patch embedding,
pointwise convs, classifier) run at the tensor-core peak of the precision; depthwise convs
and elementwise ops at the fp32 (CUDA-core) peak, and are in practice bandwidth-bound. The
efficiencies are per op class; they come from a calibration file (tools/profile_gpu.py) when
given, else from DEFAULT_EFFICIENCY below (stated guesses, not measurements).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fastmix.devices.catalog import Device
from fastmix.model.convmixer import VARIANTS, ConvMixerConfig
from fastmix.model.flops import Op, convmixer_ops, totals, training_memory_bytes

CLASSES = ("gemm", "depthwise", "elementwise", "optimizer")
CLASS_OF = {"stem": "gemm", "pointwise": "gemm", "head": "gemm", "depthwise": "depthwise",
            "batchnorm": "elementwise", "activation": "elementwise", "residual": "elementwise", "pool": "elementwise"}
DEFAULT_EFFICIENCY = {  # uncalibrated guesses: typical cuDNN/cuBLAS fractions of peak
    "gemm": {"compute": 0.6, "memory": 0.7},
    "depthwise": {"compute": 0.3, "memory": 0.5},
    "elementwise": {"compute": 0.5, "memory": 0.7},
    "optimizer": {"compute": 0.5, "memory": 0.7},
}
ADAMW_BYTES_PER_PARAM = 28  # fp32: read param, grad, 2 moments; write param, 2 moments
ADAMW_FLOPS_PER_PARAM = 12
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
IMAGENET100_TRAIN = 130_000  # ~1,300 per class; the exact count depends on the 100 classes


@dataclass
class Efficiency:
    values: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_EFFICIENCY)))
    overhead_per_op_s: float = 0.0   # launch/framework time per op, measured by calibration
    source: str = "defaults (uncalibrated)"

    @classmethod
    def load(cls, path: str | Path) -> "Efficiency":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: calibration file not found (make one with tools/profile_gpu.py)")
        data = json.loads(path.read_text())
        if "efficiency" not in data:
            raise ValueError(f"{path}: not a fastmix calibration file (no 'efficiency')")
        return cls(values=data["efficiency"], overhead_per_op_s=data.get("overhead_per_op_s", 0.0), source=str(path))


def _resolve(model: str | ConvMixerConfig) -> ConvMixerConfig:
    if isinstance(model, ConvMixerConfig):
        return model
    if model not in VARIANTS:
        raise ValueError(f"unknown ConvMixer variant {model!r}; registered: {sorted(VARIANTS)}")
    return VARIANTS[model]


def op_times(op: Op, batch: int, precision: str, device: Device, eff: Efficiency) -> tuple[float, float]:
    """(forward, backward) seconds of one op for a batch, at efficiency."""
    cls = CLASS_OF[op.kind]
    e = eff.values[cls]
    peak = device.peak_tflops(precision) if cls == "gemm" else device.fp32
    s = BYTES[precision]
    fwd_bytes = batch * op.act_io[0] * s + op.params * s
    bwd_bytes = batch * op.act_io[1] * s + op.params * (s + 4)  # read weights, write fp32 grads

    def roof(flops, nbytes):
        return max(flops / (peak * 1e12 * e["compute"]), nbytes / (device.bandwidth_gbs * 1e9 * e["memory"]))
    return roof(batch * op.fwd_flops, fwd_bytes), roof(batch * op.bwd_flops, bwd_bytes)


def predict_step(model: str | ConvMixerConfig, batch: int, precision: str, device: Device,
                 eff: Efficiency | None = None, image_size: int = 224, num_classes: int = 100) -> dict:
    """One training step (forward, backward, AdamW) of `batch` images: seconds, split by op class."""
    eff = eff or Efficiency()
    ops = convmixer_ops(_resolve(model), image_size, num_classes)
    t = totals(ops)
    by_class = dict.fromkeys(CLASSES, 0.0)
    for op in ops:
        by_class[CLASS_OF[op.kind]] += sum(op_times(op, batch, precision, device, eff))
    e = eff.values["optimizer"]
    by_class["optimizer"] = max(t.params * ADAMW_FLOPS_PER_PARAM / (device.fp32 * 1e12 * e["compute"]),
                                t.params * ADAMW_BYTES_PER_PARAM / (device.bandwidth_gbs * 1e9 * e["memory"]))
    overhead = eff.overhead_per_op_s * num_ops(ops)
    step = sum(by_class.values()) + overhead
    model_flops = batch * t.train_model_flops
    return {"step_s": step, "by_class_s": by_class, "overhead_s": overhead, "images_per_s": batch / step,
            "model_flops": model_flops, "tflops": model_flops / step / 1e12,
            "mfu": model_flops / step / (device.peak_tflops(precision) * 1e12), "efficiency_source": eff.source}


def num_ops(ops: list[Op]) -> int:
    return 2 * len(ops) + 1  # forward and backward of each, plus the optimizer


def predict_run(model: str, gpu: Device, precision: str, batch: int = 64, micro_batch: int | None = None,
                train_images: int = IMAGENET100_TRAIN, epochs: int = 100, image_size: int = 224,
                num_classes: int = 100, eff: Efficiency | None = None) -> dict:
    """Hours and dollars for a whole run; `micro_batch` steps accumulate to `batch`."""
    micro = micro_batch or batch
    step = predict_step(model, micro, precision, gpu, eff, image_size, num_classes)
    steps_per_epoch = math.ceil(train_images / micro)
    epoch_s = step["step_s"] * steps_per_epoch
    hours = epoch_s * epochs / 3600
    t = totals(convmixer_ops(_resolve(model), image_size, num_classes))
    return {"model": model, "gpu": gpu.key, "precision": precision, "batch": batch, "micro_batch": micro,
            "image_size": image_size, "train_images": train_images, "epochs": epochs,
            "step_s": step["step_s"], "images_per_s": step["images_per_s"], "mfu": step["mfu"],
            "epoch_s": epoch_s, "hours": hours, "dollars": hours * gpu.price_per_hour,
            "train_flops": t.train_model_flops * train_images * epochs,
            "epoch_flops": t.train_model_flops * train_images,
            "memory_gb": training_memory_gb(model, micro, precision, image_size, num_classes),
            "efficiency_source": step["efficiency_source"]}


def training_memory_gb(model: str, micro_batch: int, precision: str, image_size: int = 224,
                       num_classes: int = 100) -> float:
    ops = convmixer_ops(_resolve(model), image_size, num_classes)
    return training_memory_bytes(ops, micro_batch, BYTES[precision])["total"] / 1e9


def largest_micro_batch(model: str, gpu: Device, precision: str, batch: int = 64, image_size: int = 224,
                        headroom_gb: float = 1.5) -> int:
    """The largest power-of-two micro-batch dividing `batch` whose training memory fits the
    GPU, less `headroom_gb` for the CUDA context, cuDNN workspace and allocator slack."""
    micro = batch
    while micro > 1 and training_memory_gb(model, micro, precision, image_size) > gpu.memory_gb - headroom_gb:
        micro //= 2
    return micro


# -- the reference report's Table 2, under its own convention --------------------------------
REPORT_GMACS = {"convmixer_768_32": 19.55, "convmixer_1536_20": 48.68}  # timm's published figures
REPORT_TFLOPS = {"T4": 5, "V100": 15, "A100": 40}                        # its assumed throughputs
REPORT_IMAGES, REPORT_EPOCHS = 1_280_000, 100


def reproduce_report() -> list[dict]:
    """Its "FLOPs" = 3 x GMACs x images x epochs (a multiply-add counted as ONE FLOP, and
    timm's GMACs leave out the depthwise convs); hours = FLOPs / assumed throughput."""
    rows = []
    for model, gmacs in REPORT_GMACS.items():
        flops = 3 * gmacs * 1e9 * REPORT_IMAGES * REPORT_EPOCHS
        rows.append({"model": model, "flops": flops,
                     **{f"{gpu}_hours": flops / (tput * 1e12) / 3600 for gpu, tput in REPORT_TFLOPS.items()}})
    return rows
