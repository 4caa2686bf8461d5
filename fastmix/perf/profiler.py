"""Measure real training steps, and calibrate the cost model with them.

For each configuration: build the model and AdamW, warm up (this pays torch.compile and
cuDNN autotuning), then time many full steps (forward, backward, optimizer) with CUDA events
(CPU: wall clock; CPU work is synchronous). Report the median and spread, achieved TFLOP/s
(analytic model FLOPs / time) and MFU against the catalog peak, NVML telemetry, and a
per-op-class breakdown from torch.profiler. `calibrate` turns one configuration's breakdown
into per-class efficiencies for fastmix.perf.cost; `run_calibration` then predicts the others.
"""
from __future__ import annotations

import re
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fastmix.devices.catalog import Device, load_catalog, lookup
from fastmix.devices.ceilings import ceilings
from fastmix.devices.environment import describe as environment  # noqa: F401  (calibration files)
from fastmix.devices.telemetry import Telemetry
from fastmix.model.convmixer import VARIANTS, create_model
from fastmix.model.flops import convmixer_ops, totals, training_memory_bytes
from fastmix.train import speed
from fastmix.train.optim import build_optimizer
from fastmix.train.recipe import TrainConfig
from fastmix.train.speed import LOADER_DTYPE

from .cost import CLASSES, DEFAULT_EFFICIENCY, Efficiency, num_ops, predict_step


@dataclass
class ProfileSpec:
    model: str
    batch: int
    image_size: int = 224
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    num_classes: int = 100

    @property
    def label(self) -> str:
        return f"{self.model} b{self.batch} {self.image_size}px {self.precision}"


def build_step(spec: ProfileSpec, device: torch.device, config=None):
    """A closure running one real training step on fixed random data, and what it chose;
    `config` (a ConvMixerConfig) replaces the variant's shape."""
    precision = speed.resolve_precision(spec.precision, device)
    model = create_model(spec.model, num_classes=spec.num_classes, **(config.__dict__ if config else {})).to(device)
    channels_last, timings = speed.choose_channels_last(model, spec.channels_last, device, precision,
                                                        spec.batch, spec.image_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    # fused AdamW on CUDA, as the trainer steps there (one kernel instead of a loop over tensors)
    optimizer = build_optimizer(model, TrainConfig(), lr=1e-3, fused=device.type == "cuda")
    scaler = speed.grad_scaler(precision, device)
    net = speed.compile_model(model, spec.compile)
    # the dtype the trainer's loaders hand over: a compiled graph traced on it is the one training reuses
    dtype = getattr(torch, LOADER_DTYPE[precision])
    x = torch.randn(spec.batch, 3, spec.image_size, spec.image_size, device=device, dtype=dtype
                    ).contiguous(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (spec.batch,), device=device)

    def step():
        with speed.autocast(precision, device):
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step, {"precision": precision, "channels_last": channels_last, "channels_last_timings_s": timings}


def time_steps(step, device: torch.device, steps: int, warmup: int) -> tuple[list[float], float]:
    """Per-step seconds after `warmup` steps, and how long the warm-up took."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    speed.sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
    else:
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    return times, warmup_s


def classify(name: str, shapes, in_optimizer: bool) -> str:
    """An aten op -> the cost model's op class."""
    if in_optimizer:
        return "optimizer"
    n = name.lower()
    if "conv" in n:
        w = shapes[2] if "backward" in n and len(shapes) > 2 else (shapes[1] if len(shapes) > 1 else [])
        return "depthwise" if len(w) == 4 and w[1] == 1 and w[2] > 1 else "gemm"
    if n in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"):
        return "gemm"
    if any(k in n for k in ("batch_norm", "gelu", "relu", "threshold", "add", "mul", "mean", "sum", "div",
                            "copy_", "_to_copy", "fill_", "where", "softmax")):
        return "elementwise"
    return "other"


def op_breakdown(step, device: torch.device, steps: int = 2, classify=classify, groups=(*CLASSES, "other")) -> dict:
    """Seconds per step by op class (device time on CUDA, self CPU time on CPU); `classify` maps
    (aten op, input shapes, inside the optimizer's step) to one of `groups`."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        speed.sync(device)
    out = dict.fromkeys(groups, 0.0)
    for ev in prof.events():
        us = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        if us <= 0 or not ev.name.startswith("aten::"):
            continue
        parent, in_opt = ev.cpu_parent, False
        while parent is not None and not in_opt:
            in_opt = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        out[classify(ev.name, ev.input_shapes or [], in_opt)] += us / 1e6 / steps
    return out


def device_entry(device: torch.device, catalog: str | None = None) -> tuple[Device, bool]:
    """The catalog entry of `device`, and whether its peaks are known. A GPU missing from the
    catalog is not an error: its ceilings (a large matmul per precision, a large copy) are
    measured and stand in for the peaks, so figures against them read "peak unknown"."""
    cat = load_catalog(catalog)
    if device.type != "cuda":
        return cat["cpu"], True
    name = torch.cuda.get_device_name(device)
    try:
        return lookup(cat, name), True
    except KeyError:
        pass
    warnings.warn(f"{name} is not in the device catalog: measuring its ceilings instead of its peaks "
                  f"(add it with --catalog FILE for MFU against a datasheet peak)", stacklevel=2)
    fp32 = ceilings(device, "fp32")
    fp16 = ceilings(device, "fp16")["matmul_tflops"]
    bf16 = ceilings(device, "bf16")["matmul_tflops"] if torch.cuda.is_bf16_supported(including_emulation=False) \
        else None
    props = torch.cuda.get_device_properties(device)
    key = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return Device(key=key, name=name, fp32=fp32["matmul_tflops"], fp16_tensor=fp16, bf16_tensor=bf16,
                  bandwidth_gbs=fp32["copy_gbs"], memory_gb=props.total_memory / 1e9, price_per_hour=float("nan"),
                  source="peak unknown: measured ceilings (matmul per precision, copy) on this device"), False


def measure(spec: ProfileSpec, device: torch.device, gpu: Device, steps: int = 20, warmup: int = 5,
            breakdown: bool = True) -> dict:
    step, chosen = build_step(spec, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Telemetry(device.index or 0) as tel:
        times, warmup_s = time_steps(step, device, steps, warmup)
    memory = {}
    if device.type == "cuda":  # the model's own peak (no context, workspaces or loader) vs the allocator's
        ops = convmixer_ops(VARIANTS[spec.model], spec.image_size, spec.num_classes)
        act_bytes = 2 if chosen["precision"] in ("fp16", "bf16") else 4
        memory = {"max_memory_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
                  "memory_predicted_gb": training_memory_bytes(ops, spec.batch, act_bytes)["total"] / 1e9}
    median = statistics.median(times)
    flops = spec.batch * totals(convmixer_ops(VARIANTS[spec.model], spec.image_size, spec.num_classes)).train_model_flops
    out = {"spec": asdict(spec), "label": spec.label, **chosen, "steps": steps, "warmup_s": warmup_s,
           "times_s": times, "median_s": median, "p10_s": _quantile(times, 0.1), "p90_s": _quantile(times, 0.9),
           "images_per_s": spec.batch / median, "model_flops_per_step": flops,
           "achieved_tflops": flops / median / 1e12,
           "mfu": flops / median / (gpu.peak_tflops(chosen["precision"]) * 1e12), "telemetry": tel.summary(),
           **memory}
    if breakdown:
        out["breakdown_s"] = op_breakdown(step, device)
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def pooled(ms: list[dict]) -> dict:
    """One measurement from several sweeps of the same spec (`measure` called apart in time):
    the statistics over all their steps; memory is the largest peak, the breakdown the first's."""
    out = dict(ms[0])
    times = [t for m in ms for t in m["times_s"]]
    median = statistics.median(times)
    batch = ms[0]["spec"]["batch"]
    out.update(times_s=times, steps=len(times), sweeps=len(ms), median_s=median, p10_s=_quantile(times, 0.1),
               p90_s=_quantile(times, 0.9), images_per_s=batch / median,
               achieved_tflops=out["model_flops_per_step"] / median / 1e12, mfu=out["mfu"] * ms[0]["median_s"] / median)
    if "max_memory_allocated_gb" in out:
        out["max_memory_allocated_gb"] = max(m["max_memory_allocated_gb"] for m in ms)
    return out


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def calibrate(m: dict, gpu: Device) -> Efficiency:
    """Per-class efficiencies that make the roofline reproduce measurement `m`: each class's
    default efficiency x (its default-predicted time / its measured time). Profiler overhead
    is taken out by scaling the profiled classes to the measured step; the time no class
    explains becomes a per-op launch overhead."""
    spec = ProfileSpec(**m["spec"])
    if not m.get("breakdown_s") or sum(m["breakdown_s"].get(c, 0.0) for c in CLASSES) <= 0:
        raise RuntimeError(f"{spec.label}: the profiler attributed no time to any op class (with compile=True the "
                           "kernels are not aten:: ops); calibrate without compile, or with the op-level "
                           "benchmark (tools/profile_gpu.py --quick)")
    predicted = predict_step(spec.model, spec.batch, m["precision"], gpu, Efficiency(), spec.image_size,
                             spec.num_classes, m.get("channels_last", False))["by_class_s"]
    profiled = {c: m["breakdown_s"][c] for c in CLASSES}
    total = sum(m["breakdown_s"].values())
    scale = min(1.0, m["median_s"] / total) if total > 0 else 1.0
    values = {}
    for c in CLASSES:
        measured = profiled[c] * scale
        factor = predicted[c] / measured if measured > 0 else 1.0
        values[c] = {k: v * factor for k, v in DEFAULT_EFFICIENCY[c].items()}
    unexplained = max(0.0, m["median_s"] - scale * sum(profiled.values()))
    ops = num_ops(convmixer_ops(VARIANTS[spec.model], spec.image_size, spec.num_classes))
    return Efficiency(values=values, overhead_per_op_s=unexplained / ops, source=f"calibrated on {spec.label}")
