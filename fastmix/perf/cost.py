"""Runtime and cost predictions: a roofline per op, summed, with measured efficiencies and a range.

    ideal(op) = max(FLOPs / peak, bytes / bandwidth)              (the op at 100 % of the device)
    time(op)  = overhead(key) + ideal(op) / efficiency(key)       (op-level calibration)

Ops come from fastmix.model.flops (a multiply-add = 2 FLOPs). GEMM-like ops (patch embedding,
pointwise convs, classifier) are held to the tensor-core peak of the precision, depthwise convs
and elementwise ops to the fp32 (CUDA-core) peak. An op's key is its kind AND its shape features
(`op_key`: the depthwise conv by kernel size and memory layout, the activation by function,
everything by layout), because cuDNN's 7x7 and 9x9 depthwise paths differ by 2x and more.

Where the efficiencies come from, in order:
1. an op-level calibration (fastmix.perf.opbench: each distinct op timed in isolation, forward +
   backward, and `efficiency, overhead` fitted per key), plus a measured per-step overhead; the
   step is the sum of its ops. A key the calibration lacks takes the median of its kind's keys.
2. else, per op class, the stated DEFAULT_EFFICIENCY guesses below.
Every prediction carries a range: for a calibrated device, +/- the calibration's worst held-out
error; uncalibrated, each class's efficiency is spread by the ratio seen across the op shapes
and devices of the packaged calibrations (fastmix/perf/calibrations/*.json; `default_spread`).
A calibration file made on a GPU (tools/profile_gpu.py --quick) dropped into that folder as
<catalog key>.json is used for that device automatically (`packaged_calibration`).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fastmix.devices.catalog import Device
from fastmix.model.convmixer import ConvMixerConfig, variant
from fastmix.model.flops import Op, convmixer_ops, totals

from .memory import BYTES, device_training_memory, largest_micro_batch  # noqa: F401  (re-exported)

CLASSES = ("gemm", "depthwise", "elementwise", "optimizer")
CLASS_OF = {"stem": "gemm", "pointwise": "gemm", "head": "gemm", "depthwise": "depthwise",
            "batchnorm": "elementwise", "activation": "elementwise", "residual": "elementwise", "pool": "elementwise",
            "loss": "elementwise", "optimizer": "optimizer"}
DEFAULT_EFFICIENCY = {  # uncalibrated guesses: typical cuDNN/cuBLAS fractions of peak
    "gemm": {"compute": 0.6, "memory": 0.7},
    "depthwise": {"compute": 0.3, "memory": 0.5},
    "elementwise": {"compute": 0.5, "memory": 0.7},
    "optimizer": {"compute": 0.5, "memory": 0.7},
}
MIN_SPREAD = 1.5  # one device's shapes cannot show the spread across devices: at least x/÷ 1.5
ADAMW_BYTES_PER_PARAM = 28  # fp32: read param, grad, 2 moments; write param, 2 moments
ADAMW_FLOPS_PER_PARAM = 12
IMAGENET100_TRAIN = 126_689  # train images of the first 100 ImageNet-1k classes (sorted WNIDs)
CALIBRATIONS = Path(__file__).parent / "calibrations"


@dataclass
class Efficiency:
    values: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_EFFICIENCY)))
    overhead_per_op_s: float = 0.0   # launch/framework time per op (end-to-end calibration)
    source: str = "defaults (uncalibrated)"
    ops: dict = field(default_factory=dict)   # op key -> {"efficiency", "overhead_s"} (op-level calibration)
    step_overhead_s: float = 0.0     # per step, beyond the ops (op-level calibration)
    error: float | None = None       # worst held-out relative error of this calibration, if measured
    device: str | None = None        # catalog key of the device it was measured on

    @property
    def calibrated(self) -> bool:
        return self.source != Efficiency().source

    @classmethod
    def load(cls, path: str | Path) -> "Efficiency":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: calibration file not found (make one with tools/profile_gpu.py)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict) or ("efficiency" not in data and "op_efficiency" not in data):
            raise ValueError(f"{path}: not a fastmix calibration file (no 'efficiency' or 'op_efficiency')")
        problem = calibration_problem(data)
        if problem:
            raise ValueError(f"{path}: not a usable calibration file ({problem})")
        return cls(values=data.get("efficiency") or json.loads(json.dumps(DEFAULT_EFFICIENCY)),
                   overhead_per_op_s=data.get("overhead_per_op_s", 0.0), source=str(path),
                   ops=data.get("op_efficiency", {}), step_overhead_s=data.get("step_overhead_s", 0.0),
                   error=data.get("held_out_error"), device=data.get("catalog_entry"))


def _number(value, low: float = 0.0) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low


def calibration_problem(data: dict) -> str | None:
    """What in a calibration file's values the predictions could not use, else None: checked on
    load, so a damaged file is named there rather than failing inside a prediction."""
    eff = data.get("efficiency")
    if eff is not None:
        for cls in CLASSES:
            e = eff.get(cls) if isinstance(eff, dict) else None
            if not isinstance(e, dict) or not all(_number(e.get(k)) and e[k] > 0 for k in ("compute", "memory")):
                return f"efficiency.{cls} needs positive compute and memory fractions"
    ops = data.get("op_efficiency", {})
    if not isinstance(ops, dict):
        return "op_efficiency is not a mapping"
    for key, fit in ops.items():
        if not isinstance(fit, dict) or not (_number(fit.get("efficiency")) and fit["efficiency"] > 0
                                             and _number(fit.get("overhead_s"))):
            return f"op_efficiency[{key!r}] needs a positive efficiency and an overhead_s >= 0"
    for key in ("overhead_per_op_s", "step_overhead_s"):
        if key in data and not _number(data[key]):
            return f"{key} must be a number >= 0"
    if data.get("held_out_error") is not None and not _number(data["held_out_error"]):
        return "held_out_error must be a number >= 0"
    return None


def packaged_calibration(device: Device) -> Efficiency | None:
    """The calibration shipped for this catalog device (fastmix/perf/calibrations/<key>.json)."""
    path = CALIBRATIONS / f"{device.key}.json"
    return Efficiency.load(path) if path.is_file() else None


SPREAD_KINDS = ("stem", "pointwise", "depthwise", "batchnorm", "activation", "residual", "optimizer")  # the time


@lru_cache(maxsize=1)
def default_spread() -> tuple[dict, str]:
    """Per op class, the factor r by which efficiencies vary: r = sqrt(p90 / p10) of the
    efficiencies (ideal / measured) of the class's op timings in each packaged calibration,
    the largest over devices, at least MIN_SPREAD. Only the kinds that hold the time count
    (pool, head and loss are microseconds). Returns ({class: r}, a sentence naming the data)."""
    spread, seen = dict.fromkeys(CLASSES, MIN_SPREAD), []
    for path in sorted(CALIBRATIONS.glob("*.json")):
        rows = json.loads(path.read_text()).get("op_measurements", [])
        seen.append(f"{path.stem} ({len(rows)} op timings)")
        for c in CLASSES:
            effs = sorted(r["ideal_s"] / r["measured_s"] for r in rows if r["measured_s"] > 0
                          and r["key"].split(":")[0] in SPREAD_KINDS and CLASS_OF[r["key"].split(":")[0]] == c)
            if len(effs) > 1:
                p10, p90 = effs[int(0.1 * (len(effs) - 1))], effs[math.ceil(0.9 * (len(effs) - 1))]
                spread[c] = max(spread[c], math.sqrt(p90 / p10))
    where = ", ".join(seen) or "no packaged calibration"
    return spread, (f"x/÷ sqrt(p90/p10) of op efficiencies per class in {where} "
                    f"(fastmix/perf/calibrations/), at least x/÷{MIN_SPREAD}")


def op_key(op: Op, cfg: ConvMixerConfig, channels_last: bool = False) -> str:
    """The op's kind and the shape features its speed depends on."""
    layout = "cl" if channels_last else "nchw"
    feature = {"depthwise": f"k{cfg.kernel}", "activation": cfg.act, "stem": f"p{cfg.patch}"}.get(op.kind)
    return ":".join(x for x in (op.kind, feature, layout) if x)


def ideal_times(op: Op, batch: int, precision: str, device: Device) -> tuple[float, float]:
    """(forward, backward) seconds of one op for a batch at 100 % of the device's peaks."""
    cls = CLASS_OF[op.kind]
    peak = device.peak_tflops(precision) if cls == "gemm" else device.fp32
    s = BYTES[precision]
    fwd_bytes = batch * op.act_io[0] * s + op.params * s
    bwd_bytes = batch * op.act_io[1] * s + op.params * (s + 4)  # read weights, write fp32 grads

    def roof(flops, nbytes):
        return max(flops / (peak * 1e12), nbytes / (device.bandwidth_gbs * 1e9))
    return roof(batch * op.fwd_flops, fwd_bytes), roof(batch * op.bwd_flops, bwd_bytes)


def class_times(op: Op, batch: int, precision: str, device: Device, eff: Efficiency) -> tuple[float, float]:
    """(forward, backward) seconds at the per-class efficiencies (no op-level calibration)."""
    cls = CLASS_OF[op.kind]
    e = eff.values[cls]
    peak = device.peak_tflops(precision) if cls == "gemm" else device.fp32
    s = BYTES[precision]
    fwd_bytes = batch * op.act_io[0] * s + op.params * s
    bwd_bytes = batch * op.act_io[1] * s + op.params * (s + 4)

    def roof(flops, nbytes):
        return max(flops / (peak * 1e12 * e["compute"]), nbytes / (device.bandwidth_gbs * 1e9 * e["memory"]))
    return roof(batch * op.fwd_flops, fwd_bytes), roof(batch * op.bwd_flops, bwd_bytes)


def optimizer_op(params: int) -> Op:
    """AdamW over `params` fp32 parameters, as an op (per step, not per image)."""
    return Op("optimizer", "optimizer", 0.0, 0.0, (0, 0), params, saved=0)


def optimizer_ideal(params: int, device: Device, e: dict | None = None) -> float:
    """AdamW's seconds at efficiencies `e` ({"compute", "memory"}; default 100 %)."""
    e = e or {"compute": 1.0, "memory": 1.0}
    return max(params * ADAMW_FLOPS_PER_PARAM / (device.fp32 * 1e12 * e["compute"]),
               params * ADAMW_BYTES_PER_PARAM / (device.bandwidth_gbs * 1e9 * e["memory"]))


def fitted(eff: Efficiency, key: str) -> dict | None:
    """The op-level fit for `key`, else the median of its kind's fitted keys, else None."""
    if key in eff.ops:
        return eff.ops[key]
    kind = key.split(":")[0]
    same = [v for k, v in eff.ops.items() if k.split(":")[0] == kind]
    if not same:
        return None
    return {"efficiency": statistics.median(v["efficiency"] for v in same),
            "overhead_s": statistics.median(v["overhead_s"] for v in same)}


def predict_step(model: str | ConvMixerConfig, batch: int, precision: str, device: Device,
                 eff: Efficiency | None = None, image_size: int = 224, num_classes: int = 100,
                 channels_last: bool = False) -> dict:
    """One training step (forward, backward, AdamW) of `batch` images: seconds, split by op
    class, with a (low, high) range and where its efficiencies come from."""
    eff = eff or packaged_calibration(device) or Efficiency()
    cfg = variant(model)
    ops = convmixer_ops(cfg, image_size, num_classes)
    t = totals(ops)
    by_class = dict.fromkeys(CLASSES, 0.0)
    for op in [*ops, optimizer_op(t.params)]:
        cls = CLASS_OF[op.kind]
        fit = fitted(eff, op_key(op, cfg, channels_last)) if eff.ops else None
        if op.kind == "optimizer":
            ideal = optimizer_ideal(t.params, device)
            by_class[cls] += (fit["overhead_s"] + ideal / fit["efficiency"]) if fit else \
                optimizer_ideal(t.params, device, eff.values[cls])
        elif fit:
            by_class[cls] += fit["overhead_s"] + sum(ideal_times(op, batch, precision, device)) / fit["efficiency"]
        else:
            by_class[cls] += sum(class_times(op, batch, precision, device, eff))
    overhead = eff.step_overhead_s + eff.overhead_per_op_s * num_ops(ops)
    step = sum(by_class.values()) + overhead
    if eff.calibrated and eff.error is not None:
        low, high = step * (1 - eff.error), step * (1 + eff.error)
        range_source = f"+/-{100 * eff.error:.0f} %: worst held-out error of {eff.source}"
    elif eff.calibrated:
        low = high = step
        range_source = f"{eff.source} (no held-out error recorded)"
    else:
        spread, range_source = default_spread()
        low = overhead + sum(v / spread[c] for c, v in by_class.items())
        high = overhead + sum(v * spread[c] for c, v in by_class.items())
    model_flops = batch * t.train_model_flops
    return {"step_s": step, "range_s": (low, high), "range_source": range_source, "by_class_s": by_class,
            "overhead_s": overhead, "images_per_s": batch / step, "model_flops": model_flops,
            "tflops": model_flops / step / 1e12, "mfu": model_flops / step / (device.peak_tflops(precision) * 1e12),
            "efficiency_source": eff.source}


def num_ops(ops: list[Op]) -> int:
    return 2 * len(ops) + 1  # forward and backward of each, plus the optimizer


def predict_run(model: str, gpu: Device, precision: str, batch: int = 64, micro_batch: int | None = None,
                train_images: int = IMAGENET100_TRAIN, epochs: int = 100, image_size: int = 224,
                num_classes: int = 100, eff: Efficiency | None = None, channels_last: bool = False,
                memory_extras: dict | None = None) -> dict:
    """Hours and dollars for a whole run (with ranges); `micro_batch` steps accumulate to `batch`;
    `memory_extras` (ema, compile, loader, ...) go to the device memory model."""
    micro = micro_batch or batch
    step = predict_step(model, micro, precision, gpu, eff, image_size, num_classes, channels_last)
    steps_per_epoch = math.ceil(train_images / micro)
    epoch_s = step["step_s"] * steps_per_epoch
    hours = epoch_s * epochs / 3600
    hours_range = tuple(s * steps_per_epoch * epochs / 3600 for s in step["range_s"])
    t = totals(convmixer_ops(variant(model), image_size, num_classes))
    return {"model": model, "gpu": gpu.key, "precision": precision, "batch": batch, "micro_batch": micro,
            "image_size": image_size, "train_images": train_images, "epochs": epochs,
            "step_s": step["step_s"], "images_per_s": step["images_per_s"], "mfu": step["mfu"],
            "epoch_s": epoch_s, "hours": hours, "hours_range": hours_range, "dollars": hours * gpu.price_per_hour,
            "dollars_range": tuple(h * gpu.price_per_hour for h in hours_range),
            "train_flops": t.train_model_flops * train_images * epochs,
            "epoch_flops": t.train_model_flops * train_images,
            "memory_gb": training_memory_gb(model, micro, precision, image_size, num_classes, **(memory_extras or {})),
            "efficiency_source": step["efficiency_source"], "range_source": step["range_source"]}


def training_memory_gb(model: str, micro_batch: int, precision: str, image_size: int = 224,
                       num_classes: int = 100, **extras) -> float:
    """Device training memory (fastmix.perf.memory: model, context, workspaces, extras) in GB."""
    return device_training_memory(model, micro_batch, precision, image_size, num_classes, **extras)["total"] / 1e9


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
