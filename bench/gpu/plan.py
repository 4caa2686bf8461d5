"""The suite's plan: each phase's planned seconds on an H200 and for --smoke on a 2-core CPU, and
the budget they are planned against. Imports nothing heavy, so the lent-machine wrapper can print
the plan before any GPU time is spent.

Planned from what a phase costs: a cold inductor compile of one ConvMixer variant's training step
is 50-85 s on a GPU with Triton (tracing alone took 10 s for 768/32 on a CPU), a warm one (inductor's
on-disk cache) 10-15 s of tracing and loading. Only three cold compiles are planned: t4_fit compiles
each variant as the t4 recipe trains it, and end_to_end (768/32, the t4 recipe) and compiled (each
variant at t4_fit's configuration) reuse those graphs. The estimates sum to at most
PLANNED_SHARE of the budget, so every phase runs when each meets its estimate, and when each
overruns by 20 % only the last one is cut (tests/test_gpu_plan.py simulates both).
"""
from __future__ import annotations

# (phase, planned s on an H200, planned s for --smoke on a 2-core CPU, what it measures)
PLAN = [
    ("environment", 5, 2, "GPU, driver, CUDA/cuDNN, package versions, CPU, NVML"),
    ("ceilings", 5, 2, "8192^2 matmul in bf16 and fp16, 1 GiB device copy"),
    ("matrix", 45, 8, "3 variants x {NCHW, channels_last} x {bf16, fp16+GradScaler}, batch 64, 224 px"),
    ("memory", 15, 2, "predicted training memory (less the CUDA context) vs max_memory_allocated"),
    ("cost", 10, 5, "calibrate on one cell, predict the others, write calibration.json"),
    ("loaders", 45, 45, "every loader that imports here, one child each, vs training rates"),
    ("t4_fit", 180, 25, "the t4 recipe per variant with torch capped at a T4's 15 GB: fits or OOM, peak "
                        "reserved, img/s; compiles each variant's graph once (cold)"),
    ("end_to_end", 70, 20, ">= 100 updates of 768/32 with the t4 recipe via tools/train.py (t4_fit's "
                           "compiled graph), NVML over steady steps, loader wait"),
    ("compiled", 40, 8, "torch.compile of each variant at t4_fit's configuration (its graphs, warm) vs eager"),
]
BUDGET_S = 500.0        # the suite's default budget on a GPU (python -m bench.gpu, bench.gpu.lent)
SMOKE_BUDGET_S = 150.0  # --smoke and the rehearsal on a 2-core CPU
PLANNED_SHARE = 0.85    # the estimates' sum may take at most this share of the budget
STARTUP_S = 5.0         # importing torch and CUDA's start-up: counted in the budget


def reserve_s(budget_s: float) -> float:
    """Kept back at the budget's end for the charts and the last writes."""
    return min(15.0, 0.1 * budget_s)


def estimates(smoke: bool) -> list[tuple[str, float]]:
    return [(name, smoke_s if smoke else gpu_s) for name, gpu_s, smoke_s, _ in PLAN]


def plan_lines(budget_s: float = BUDGET_S, smoke: bool = False) -> list[str]:
    """The plan as a table: each phase's planned seconds and when it starts if every phase before it
    meets its estimate, and the slack left against the usable budget."""
    usable = budget_s - reserve_s(budget_s) - STARTUP_S
    lines = [f"plan for a budget of {budget_s:.0f} s ({'--smoke on a CPU' if smoke else 'on a GPU'}): "
             f"{usable:.0f} s usable after {reserve_s(budget_s):.0f} s kept for the last writes and "
             f"{STARTUP_S:.0f} s of start-up", f"  {'phase':<12} {'planned s':>9} {'starts at s':>11}"]
    at = 0.0
    for name, est in estimates(smoke):
        lines.append(f"  {name:<12} {est:>9.0f} {at:>11.0f}")
        at += est
    lines.append(f"  {'sum':<12} {at:>9.0f}   ({at / budget_s:.0%} of the budget, {usable - at:.0f} s slack)")
    return lines
