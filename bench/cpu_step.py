"""Where a CPU training step's time goes, and what PyTorch's CPU options buy, for one recipe's model.

    python -m bench.cpu_step                      # the tiny64 recipe's model, batch and size
    python -m bench.cpu_step --recipe cifar10 --compile
    python -m bench.cpu_step --publish --name cpu-step-tiny64-avx2   # update bench/results/

Every variant is the trainer's own update (fused AdamW, autocast, the loader's input dtype) on
one batch held in memory (the clip, label smoothing and the loop's statistics left out):
precision (fp32, bf16 where the CPU has native bf16) x memory format (channels_last, contiguous),
the recipe's variant also at 1 compute thread and, with --compile, compiled by inductor. The variants are timed round-robin, --repeats rounds of --steps steps, so a
slow spell of a shared machine spreads over all of them; each gets its median. For the recipe's
variant a torch.profiler pass splits the step by op (self CPU time): depthwise conv, pointwise and
stem conv, BatchNorm, GELU, the residual add, the optimizer, the rest; MFU is against this host's
matmul at the variant's precision (fastmix.devices.ceilings), measured first. Writes OUT/NAME.json and .png
(OUT: runs/bench/, or bench/results/ with --publish).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import cli
from bench.cli import add_out, out_path
OPS = ("depthwise conv", "pointwise conv, stem, head", "BatchNorm", "GELU", "residual add", "optimizer", "other")


def build_parser():
    p = cli.parser("bench.cpu_step", __doc__)
    p.add_argument("--recipe", default="tiny64", help="the recipe whose model, batch and image size are timed")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all variants")
    p.add_argument("--compile", action="store_true", help="also time the recipe's variant compiled (inductor)")
    add_out(p, "cpu-step-<recipe>", "the JSON and PNG")
    return p


def parse_args(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    if a.steps < 1 or a.repeats < 1:
        p.error("--steps and --repeats must be positive")
    return a, p


def build(cfg, precision: str, channels_last: bool, compiled: bool):
    """The trainer's update on one batch: returns step() and the images it trains per call."""
    from fastmix.model.convmixer import create_model
    from fastmix.train import speed
    from fastmix.train.optim import build_optimizer
    from fastmix.train.speed import LOADER_DTYPE
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(cfg.model, num_classes=100, **cfg.model_overrides).to(memory_format=fmt).train()
    optimizer = build_optimizer(model, cfg, 1e-3, fused=True)
    net = speed.compile_model(model, compiled)
    x = torch.randn(cfg.micro_batch_size, 3, cfg.image_size, cfg.image_size,
                    dtype=getattr(torch, LOADER_DTYPE[precision])).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (cfg.micro_batch_size,))

    def step():
        with speed.autocast(precision, torch.device("cpu")):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, model


def op_of(name: str, shapes, in_optimizer: bool) -> str:
    """The profiler's op classes (fastmix.perf.profiler.classify), with its elementwise class split
    into the ConvMixer ops that make it up."""
    from fastmix.perf.profiler import classify
    n = name.lower()
    if not in_optimizer:
        for key, op in (("batch_norm", "BatchNorm"), ("gelu", "GELU")):
            if key in n:
                return op
        if n in ("aten::add", "aten::add_"):
            return "residual add"
    return {"optimizer": "optimizer", "depthwise": "depthwise conv", "gemm": "pointwise conv, stem, head"}.get(
        classify(name, shapes, in_optimizer), "other")


def breakdown(step, steps: int = 2) -> dict:
    """Self CPU seconds per op group per step (torch.profiler), after one step outside it."""
    from fastmix.perf.profiler import op_breakdown
    step()
    return op_breakdown(step, torch.device("cpu"), steps, classify=op_of, groups=OPS)


def variants(cfg, precision: str, compile_too: bool, cores: int) -> list[dict]:
    precisions = ["fp32", "bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ["fp32"]
    out = [{"precision": p, "channels_last": cl, "threads": cores, "compiled": False}
           for p in precisions for cl in (True, False)]
    recipe = {"precision": precision, "channels_last": cfg.channels_last != "off", "threads": cores}
    if {**recipe, "compiled": False} not in out:  # e.g. fp16, or bf16 on a CPU without native bf16
        out.append({**recipe, "compiled": False})
    if cores > 1:
        out.append({**recipe, "threads": 1, "compiled": False})
    if compile_too:
        out.append({**recipe, "compiled": True})
    return out


@cli.one_line_errors
def main(argv=None) -> int:
    import os
    from fastmix.devices.ceilings import host_matmul_tflops
    from fastmix.devices.environment import cpu_name
    from fastmix.model.flops import convmixer_ops, totals
    from fastmix.model.convmixer import create_model
    from fastmix.train import speed
    from fastmix.train.recipe import load_recipe
    a, p = parse_args(argv)
    path = out_path(p, a, f"cpu-step-{Path(a.recipe).stem}")
    cfg = load_recipe(a.recipe)
    cores = len(os.sched_getaffinity(0))
    precision = speed.resolve_precision(cfg.precision, torch.device("cpu"))
    runs = variants(cfg, precision, a.compile, cores)
    # the peaks first, on all cores, as the trainer measures them at its start: measured after the
    # variants (inductor's compile workers, the profiler's threads around) they read up to 2x lower
    torch.set_num_threads(cores)
    peaks = {p: host_matmul_tflops(p) for p in {v["precision"] for v in runs}}
    steps = []
    for v in runs:
        torch.set_num_threads(v["threads"])
        t0 = time.perf_counter()
        step, model = build(cfg, v["precision"], v["channels_last"], v["compiled"])
        step()  # the first step (and a compile) is not timed
        v["first_step_s"], v["times"] = time.perf_counter() - t0, []
        steps.append(step)
    for _ in range(a.repeats):  # round-robin: a slow spell lands on every variant
        for v, step in zip(runs, steps):
            torch.set_num_threads(v["threads"])
            for _ in range(a.steps):
                t = time.perf_counter()
                step()
                v["times"].append(time.perf_counter() - t)
    torch.set_num_threads(cores)
    flops = totals(convmixer_ops(create_model(cfg.model, 100, **cfg.model_overrides).config, cfg.image_size,
                                 100)).train_model_flops
    for v in runs:
        v["step_s"] = statistics.median(v["times"])
        v["images_per_s"] = cfg.micro_batch_size / v["step_s"]
        v["mfu"] = v["images_per_s"] * flops / (peaks[v["precision"]] * 1e12)
    recipe = {"precision": precision, "channels_last": cfg.channels_last != "off", "threads": cores, "compiled": False}
    recipe_index = next(i for i, v in enumerate(runs) if all(v[k] == recipe[k] for k in recipe))
    ops = breakdown(steps[recipe_index])
    result = {"recipe": a.recipe, "model": cfg.model, "model_overrides": cfg.model_overrides,
              "batch": cfg.micro_batch_size, "image_size": cfg.image_size, "host": f"{cpu_name()}, {cores} cores", "torch": torch.__version__,
              "measured_at": time.strftime("%Y-%m-%d"), "host_matmul_tflops": peaks, "train_flops_per_image": flops,
              "variants": runs, "recipe_variant": recipe_index, "ops_s": ops, "ops_profiled_step_s": sum(ops.values())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, path.with_suffix(".png"))
    print(table(result))
    return 0


def label(v: dict) -> str:
    return (f"{v['precision']} {'channels_last' if v['channels_last'] else 'contiguous'}"
            f"{'' if v['threads'] > 1 else ', 1 thread'}{', compiled' if v['compiled'] else ''}")


def table(r: dict) -> str:
    lines = ["| variant | images/s | step (s) | MFU | first step (s) |", "|---|---:|---:|---:|---:|"]
    for i, v in enumerate(r["variants"]):
        mark = " (recipe)" if i == r["recipe_variant"] else ""
        lines.append(f"| {label(v)}{mark} | {v['images_per_s']:.0f} | {v['step_s']:.3f} | {100 * v['mfu']:.0f} % | "
                     f"{v['first_step_s']:.1f} |")
    total = r["ops_profiled_step_s"]
    lines += ["", "| op (recipe variant, profiled) | seconds per step | share |", "|---|---:|---:|"]
    lines += [f"| {op} | {s:.3f} | {100 * s / total:.0f} % |" for op, s in r["ops_s"].items()]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    vs = r["variants"]
    ax.barh([label(v) for v in vs], [v["images_per_s"] for v in vs],
            color=["tab:orange" if i == r["recipe_variant"] else "tab:blue" for i in range(len(vs))])
    ax.set(xlabel="training images/s (one batch in memory)", title="variants (orange: the recipe's)")
    ax.invert_yaxis()
    ops = r["ops_s"]
    bx.barh(list(ops), list(ops.values()), color="tab:green")
    bx.set(xlabel="self CPU seconds per step", title="where the recipe variant's step goes")
    bx.invert_yaxis()
    fig.suptitle(f"CPU training step: {r['recipe']} ({r['model']} {r['model_overrides']}, batch {r['batch']}, "
                 f"{r['image_size']} px) on {r['host']}, {r['measured_at']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
