"""Op-level calibration: time each distinct ConvMixer op in isolation and fit its efficiency.

    cal = op_calibration([OpCase("convmixer_768_32", 224, 32, channels_last=True, precision="fp16"), ...],
                         device, gpu)

For every case (variant, resolution, batch, layout, precision) each distinct op of the variant's
op list (fastmix.model.flops: stem, depthwise, activation, BN, residual add, pointwise, pool,
head, loss; one block's ops stand for all blocks) runs forward + backward on random tensors of
its real shape and dtype, `reps` times back to back (CUDA: between two events, no sync inside,
so launches pipeline as in a real step; CPU: wall clock), and AdamW steps once over the
variant's real parameters. Per op key (fastmix.perf.cost.op_key: kind + shape features +
layout) `efficiency = sum(ideal) / sum(measured)` over the key's points (ideal = the op's
roofline time at 100 % of the device). Fixed costs (per step: loss scaling, zero_grad; per op:
launch, dispatch) come from full steps of a small ConvMixer that is none of the registered
variants, at two depths, less the sum of its fitted ops.
"""
from __future__ import annotations

import time
from collections import defaultdict
from itertools import zip_longest
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastmix.devices.catalog import Device
from fastmix.model.convmixer import ACTIVATIONS, ConvMixerConfig, create_model, variant
from fastmix.model.flops import Op, convmixer_ops, tokens
from fastmix.train import speed
from fastmix.train.optim import build_optimizer
from fastmix.train.recipe import TrainConfig

from .cost import Efficiency, ideal_times, num_ops, op_key, optimizer_ideal, predict_step

# A small ConvMixer that no test or benchmark predicts: its full step measures the per-step overhead.
OVERHEAD_PROBE = ConvMixerConfig(64, 2, kernel=5, patch=4, act="gelu")


@dataclass(frozen=True)
class OpCase:
    model: str
    image_size: int
    batch: int
    channels_last: bool = False
    precision: str = "fp32"
    num_classes: int = 100


def distinct_ops(cfg: ConvMixerConfig, image_size: int, num_classes: int) -> list[Op]:
    """The stem, the first block's ops and the tail: every op kind once (blocks are identical)."""
    seen, out = set(), []
    for op in convmixer_ops(cfg, image_size, num_classes):
        if op.kind not in seen:
            seen.add(op.kind)
            out.append(op)
    return out


COLD_BYTES = 96 * 2**20  # more than a CPU's L3 or a GPU's L2 (A100 40 MB, H100 50 MB)
MAX_COPIES = 8


def op_runner(op: Op, cfg: ConvMixerConfig, case: OpCase, device: torch.device):
    """A closure running `op` forward + backward once at the case's shape, dtype and layout.
    Inside a model every op reads tensors no cache holds (32 blocks of activations); alone, one
    input would stay cache-hot. So the closure cycles through enough copies of the op (input
    and weights) to pass COLD_BYTES, at most MAX_COPIES."""
    elem = 2 if speed.AUTOCAST[case.precision] else 4
    side = int(tokens(cfg, case.image_size) ** 0.5)
    nbytes = case.batch * (3 * case.image_size ** 2 * 4 if op.kind == "stem" else cfg.dim * side * side * elem)
    copies = [_runner(op, cfg, case, device) for _ in range(max(1, min(MAX_COPIES, -(-COLD_BYTES // nbytes))))]
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(copies)
        copies[state["i"]]()
    return run


def _runner(op: Op, cfg: ConvMixerConfig, case: OpCase, device: torch.device):
    h, side, b = cfg.dim, int(tokens(cfg, case.image_size) ** 0.5), case.batch
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    low = speed.AUTOCAST[case.precision] or torch.float32  # activations' dtype inside the model

    def feature(dtype=low):
        return torch.randn(b, h, side, side, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    if op.kind in ("stem", "depthwise", "pointwise"):
        conv = {"stem": lambda: nn.Conv2d(3, h, cfg.patch, stride=cfg.patch),
                "depthwise": lambda: nn.Conv2d(h, h, cfg.kernel, groups=h, padding="same"),
                "pointwise": lambda: nn.Conv2d(h, h, 1)}[op.kind]().to(device, memory_format=fmt)
        x = (torch.randn(b, 3, case.image_size, case.image_size, device=device).contiguous(memory_format=fmt)
             if op.kind == "stem" else feature())
        fn, module = (lambda: conv(x)), conv
    elif op.kind in ("activation", "batchnorm"):
        module = (ACTIVATIONS[cfg.act]() if op.kind == "activation" else nn.BatchNorm2d(h)).to(device)
        x = feature()
        fn = lambda: module(x)  # noqa: E731
    elif op.kind == "residual":
        x, y, module = feature(), feature(), None
        fn = lambda: x + y  # noqa: E731
    elif op.kind == "pool":
        x, module = feature(), None
        fn = lambda: x.mean(dim=(2, 3), dtype=torch.float32)  # noqa: E731
    elif op.kind == "head":
        module = nn.Linear(h, case.num_classes).to(device)
        x = torch.randn(b, h, device=device, requires_grad=True)
        fn = lambda: module(x)  # noqa: E731
    elif op.kind == "loss":
        x = torch.randn(b, case.num_classes, device=device, requires_grad=True)
        y, module = torch.randint(0, case.num_classes, (b,), device=device), None
        fn = lambda: F.cross_entropy(x, y)  # noqa: E731
    else:
        raise ValueError(f"no runner for op kind {op.kind!r}")
    autocast_on = op.kind in ("stem", "depthwise", "pointwise", "activation", "batchnorm", "residual")
    grad = {}

    def run():
        with speed.autocast(case.precision if autocast_on else "fp32", device):
            out = fn()
        if "g" not in grad:
            grad["g"] = torch.ones_like(out)
        out.backward(grad["g"])
        x.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
    return run


def back_to_back_seconds(fn, device: torch.device, reps: int, rounds: int = 3, warmup: int = 2) -> float:
    """The fastest of `rounds` (time of `reps` calls back to back) / reps: other processes can
    only add time to a short op, so the minimum is its own cost (on a quiet machine, and on a
    GPU, the rounds agree and min = median)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        speed.sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            out.append(start.elapsed_time(end) / 1e3 / reps)
        else:
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            out.append((time.perf_counter() - t) / reps)
    return min(out)


def optimizer_runner(model_name: str | ConvMixerConfig, device: torch.device, num_classes: int):
    cfg = variant(model_name)
    model = create_model("convmixer_256_8", num_classes=num_classes, **cfg.__dict__).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = build_optimizer(model, TrainConfig(), lr=1e-3)
    return opt.step, sum(p.numel() for p in model.parameters())


def harness_seconds(device: torch.device, reps: int) -> float:
    """What timing an op alone costs beyond the op: a forward + its own backward() call (the
    autograd engine starts once per call; inside a model, once per step) on a 1-element tensor."""
    x = torch.ones(1, device=device, requires_grad=True)

    def run():
        (x * 1).backward()
        x.grad = None
    return back_to_back_seconds(run, device, max(reps, 10))


def round_robin(lists: list[list]) -> list:
    """The first item of every list, then the second of every list, ... (lists of any lengths)."""
    return [item for group in zip_longest(*lists) for item in group if item is not None]


def measure_ops(cases: list[OpCase], device: torch.device, gpu: Device, reps: int = 3) -> list[dict]:
    """Seconds per forward + backward of every distinct op of every case, less the timing
    harness's own cost (at most half of the raw time), with its ideal time."""
    rows, optimizers = [], {}
    harness = harness_seconds(device, reps)
    # Round-robin over the cases (first op of every case, then the second, ...): a slow spell of
    # a shared machine then lands on a few ops of every variant instead of on all the ops of one
    # variant, which had skewed one variant's whole-step predictions by ~10 % on the 2-core CPU.
    work = round_robin([[(c, op) for op in distinct_ops(variant(c.model), c.image_size, c.num_classes)]
                        for c in cases])
    for case, op in tqdm(work, desc="op benchmark", disable=None):
        cfg = variant(case.model)
        raw = back_to_back_seconds(op_runner(op, cfg, case, device), device, reps)
        ideal = sum(ideal_times(op, case.batch, case.precision, gpu))
        rows.append({"key": op_key(op, cfg, case.channels_last), "op": op.name, **asdict(case),
                     "measured_s": max(raw - harness, raw / 2), "raw_s": raw, "harness_s": harness, "ideal_s": ideal})
        if case.model not in optimizers:  # AdamW depends on the parameters only
            step, params = optimizer_runner(case.model, device, case.num_classes)
            optimizers[case.model] = {"key": "optimizer", "op": "optimizer", **asdict(case),
                                      "measured_s": back_to_back_seconds(step, device, 1, warmup=1),
                                      "ideal_s": optimizer_ideal(params, gpu)}
            del step
    return rows + list(optimizers.values())


def fit_line(points: list[tuple[float, float]]) -> dict:
    """measured = ideal / efficiency through the origin, weighted by time (efficiency = sum of
    ideal / sum of measured). A free intercept fitted on two noisy points per key came out as
    large as a whole op and, x depth, swamped predictions; fixed costs are measured apart
    (`overheads`), the same for every op."""
    ideal, measured = sum(p[0] for p in points), sum(p[1] for p in points)
    return {"efficiency": ideal / measured, "overhead_s": 0.0, "points": len(points)}


def fit(rows: list[dict]) -> dict:
    by_key = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append((r["ideal_s"], r["measured_s"]))
    return {k: fit_line(v) for k, v in sorted(by_key.items())}


def overheads(eff: Efficiency, device: torch.device, gpu: Device, precision: str, reps: int = 5) -> tuple[float, float]:
    """(per step, per op) seconds beyond the fitted ops: full steps of OVERHEAD_PROBE at depths
    2 and 6 (fixed costs dominate a small model), less their predicted ops; the line through
    the two leftovers against the op count. Both >= 0."""
    from .profiler import ProfileSpec, build_step
    spec = ProfileSpec("convmixer_256_8", 2, 32, precision, "off")
    points = []
    for depth in (2, 6):
        cfg = replace(OVERHEAD_PROBE, depth=depth)
        step, _ = build_step(spec, device, config=cfg)
        left = back_to_back_seconds(step, device, reps) - predict_step(cfg, spec.batch, precision, gpu, eff,
                                                                       spec.image_size)["step_s"]
        points.append((num_ops(convmixer_ops(cfg, spec.image_size, spec.num_classes)), max(0.0, left)))
    (n1, l1), (n2, l2) = points
    per_op = max(0.0, (l2 - l1) / (n2 - n1))
    return max(0.0, l1 - per_op * n1), per_op


def op_calibration(cases: list[OpCase], device: torch.device, gpu: Device, reps: int = 3) -> dict:
    """Measure, fit, and measure the fixed overheads: the op-level part of a calibration file."""
    if not cases:
        raise ValueError("op calibration: no cases")
    precisions = {c.precision for c in cases}
    rows = measure_ops(cases, device, gpu, reps)
    ops = fit(rows)
    per_step, per_op = overheads(Efficiency(ops=ops, source="op-level calibration"), device, gpu,
                                 sorted(precisions)[0])
    return {"op_efficiency": ops, "step_overhead_s": per_step, "overhead_per_op_s": per_op,
            "op_measurements": rows, "op_cases": [asdict(c) for c in cases]}


def quick_cases(device: torch.device, precision: str) -> list[OpCase]:
    """tools/profile_gpu.py --quick: the three ImageNet variants at 224 px, two batches, both
    layouts (CUDA); small resolutions and batches on a CPU."""
    models = ["convmixer_768_32", "convmixer_1536_20", "convmixer_1024_20_ks9_p14"]
    if device.type == "cuda":
        sizes, batches = {m: 224 for m in models}, (16, 64)
    else:
        sizes, batches = {"convmixer_768_32": 64, "convmixer_1536_20": 64, "convmixer_1024_20_ks9_p14": 112}, (1, 3)
    return [OpCase(m, sizes[m], b, cl, precision) for m in models for b in batches for cl in (False, True)]
