"""GPU proof in one command: measure and exercise every GPU path of fastmix within a time budget.

    python -m bench.gpu --out bench/results/gpu-<name> [--budget-s 500] [--images DIR] [--small-images DIR|TGZ]
    python -m bench.gpu --smoke --out /tmp/gpu-smoke     # the same code paths on a CPU, tiny
    python -m bench.gpu.lent --images DIR                # on a lent machine: results into $OUT (docs/gpu.md)

Phases run in order of value; a phase that would not fit what is left of the budget is skipped
with the reason, one still running at the deadline is stopped and recorded as `stopped at
deadline` with what it measured. gpu.json and summary.md are written after every phase and on
SIGTERM/SIGINT; the PNGs at the end. The plan and what each number means: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STARTED = time.monotonic()  # the budget counts from here: importing torch is part of the run
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from bench.cli import alias  # noqa: E402
from bench.gpu import feed, plan, report, runs, steps  # noqa: E402
from bench.gpu.children import compile_cache_env  # noqa: E402
from bench.gpu.runner import Phase, Suite, write_json  # noqa: E402

# The plan (bench/gpu/plan.py: planned seconds and what each phase measures) with each phase's code.
RUNS = {"environment": steps.environment, "ceilings": steps.ceiling_phase, "matrix": steps.matrix,
        "memory": steps.memory, "cost": steps.cost, "loaders": feed.loaders, "t4_fit": runs.t4_fit,
        "end_to_end": runs.end_to_end, "compiled": steps.compiled}
WITH_CHILDREN = {"loaders", "t4_fit", "end_to_end"}  # the parent frees its CUDA memory before these
PHASES = [Phase(name, RUNS[name], gpu_s, smoke_s, what, name in WITH_CHILDREN) for name, gpu_s, smoke_s, what in plan.PLAN]
VARIANTS = ["convmixer_768_32", "convmixer_1536_20", "convmixer_1024_20_ks9_p14"]


@dataclass
class Context:
    out: Path
    device: torch.device
    smoke: bool
    images: str | None = None
    data: str | None = None
    repeat: int = 10
    small_images: str | None = None
    results: dict = field(default_factory=dict)
    partial: dict = field(default_factory=dict)  # what the running phase has measured so far
    deadline: float | None = None                # the running phase's, in time.monotonic() seconds

    def __post_init__(self):
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        tiny = self.smoke
        self.variants = ["convmixer_256_8"] if tiny else VARIANTS
        self.t4_variants = self.variants
        self.batch, self.image_size = (4, 8) if tiny else (64, 224)  # 8 px: CPU fp16 is emulated, ~1 GFLOP/s
        self.steps, self.warmup = (3, 1) if tiny else (10, 3)
        # A CPU has no fp16 arithmetic (emulated: ~1 GFLOP/s here), so --smoke times fp32 where a GPU times fp16.
        self.precisions = ("fp32", "bf16") if tiny else ("bf16", "fp16")
        self.fit_updates, self.e2e_updates = (2, 6) if tiny else (3, 100)

    def write_json(self, name: str, obj) -> None:
        write_json(self.out / name, obj)


def outputs(out: Path):
    """gpu.json and summary.md from the record as it stands (after every phase, and on a stop)."""
    def write(record: dict) -> None:
        write_json(out / "gpu.json", record)
        tmp = out / "summary.md.tmp"
        tmp.write_text(report.summary_markdown(record))
        os.replace(tmp, out / "summary.md")
    return write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu.json, summary.md, PNGs (work/ holds scratch)")
    p.add_argument("--budget-s", type=float, help=f"wall-clock budget in seconds (default {plan.BUDGET_S:.0f}; "
                                                  f"{plan.SMOKE_BUDGET_S:.0f} with --smoke)")
    p.add_argument("--images", help="flat folder of real <wnid>_*.JPEG photos (converted here)")
    p.add_argument("--data", help="an already converted folder (train + val) instead of --images")
    p.add_argument("--small-images", help="64 px <wnid>_*.JPEG photos (a folder, or a Tiny ImageNet .tar.gz) "
                                          "for the loader rows at 64 px")
    p.add_argument("--repeats", type=int, help="--images: each photo is linked this many times, one copy to val "
                                               "(default 10: 150 photos give 21 updates an epoch; 2 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    p.add_argument("--phases", help="comma-separated subset of: " + ", ".join(ph.name for ph in PHASES))
    alias(p, "--repeat", "--repeats")
    a = p.parse_args(argv)
    for flag, path in (("--images", a.images), ("--small-images", a.small_images), ("--data", a.data)):
        if path and not Path(path).exists():
            print(f"bench.gpu: {flag} {path}: not found", file=sys.stderr)
            return 2
    a.repeats = a.repeats if a.repeats is not None else (2 if a.smoke else 10)
    if a.repeats < 2:
        print(f"bench.gpu: --repeats {a.repeats}: at least 2 (one copy goes to val)", file=sys.stderr)
        return 2
    if not a.smoke and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device here; use --smoke for the CPU run", file=sys.stderr)
        return 2
    wanted = a.phases.split(",") if a.phases else [ph.name for ph in PHASES]
    unknown = sorted(set(wanted) - {ph.name for ph in PHASES})
    if unknown:
        print(f"bench.gpu: unknown phases {unknown}", file=sys.stderr)
        return 2
    if a.smoke:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: what training runs with
    device = torch.device("cpu" if a.smoke else "cuda")
    out = Path(a.out)
    ctx = Context(out, device, a.smoke, a.images, a.data, a.repeats, a.small_images)
    os.environ.update(compile_cache_env(ctx.work))  # the parent's compiles share the children's cache
    budget = a.budget_s if a.budget_s is not None else (plan.SMOKE_BUDGET_S if a.smoke else plan.BUDGET_S)
    left = budget - (time.monotonic() - STARTED)
    suite = Suite([ph for ph in PHASES if ph.name in wanted], ctx, out, left, a.smoke, write=outputs(out),
                  reserve_s=plan.reserve_s(budget))  # for the charts and the last writes
    suite.record["suite"]["budget_s"] = budget
    record = suite.run()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second TERM while drawing charts ends the run
    record["suite"]["charts"] = report.charts(record, out)
    outputs(out)(record)
    print("\n".join(report.phase_table(record)))
    print(f"wrote {out / 'gpu.json'}, {out / 'summary.md'} and {', '.join(record['suite']['charts']) or 'no charts'}")
    return 128 + suite.signum if suite.signum else 0


if __name__ == "__main__":
    sys.exit(main())
