"""GPU proof in one command: measure and exercise every GPU path of fastmix within a time budget.

    python -m bench.gpu --out bench/results/gpu-<name> [--budget-s 420] [--images DIR] [--data DIR]
    python -m bench.gpu --smoke --out /tmp/gpu-smoke     # the same code paths on a CPU, tiny, < 1 minute

Phases run in order of value; a phase that would overrun the budget is skipped with the reason.
Writes OUT/gpu.json after every phase, and OUT/summary.md plus one PNG per chart at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from bench.gpu import report, runs, steps  # noqa: E402
from bench.gpu.runner import Phase, Suite  # noqa: E402

# The plan: (phase, seconds on an H100, seconds for --smoke on a 2-core CPU). Sums: ~420 s and ~60 s.
PHASES = [
    Phase("environment", steps.environment, 5, 2, "GPU, driver, CUDA/cuDNN, package versions, CPU, NVML"),
    Phase("ceilings", steps.ceiling_phase, 10, 1, "8192^2 matmul in bf16 and fp16, 1 GiB device copy"),
    Phase("matrix", steps.matrix, 70, 6, "3 variants x {NCHW, channels_last} x {bf16, fp16+GradScaler}, batch 64, 224 px"),
    Phase("memory", steps.memory, 25, 1, "predicted training memory vs max_memory_allocated, 2 micro-batches"),
    Phase("cost", steps.cost, 10, 3, "calibrate on one cell, predict the others, write calibration.json"),
    Phase("loaders", runs.loaders, 50, 15, "nvJPEG (torchvision, DALI mixed) and CPU loaders vs training rates"),
    Phase("t4_fit", runs.t4_fit, 120, 12, "the t4 recipe with torch capped at a T4's 15 GB: fits or OOM, peak reserved, img/s"),
    Phase("end_to_end", runs.end_to_end, 70, 12, ">= 100 updates of 768/32 via tools/train.py, NVML, loader wait"),
    Phase("compiled", steps.compiled, 60, 15, "torch.compile of each variant's faster eager cell"),
]
VARIANTS = ["convmixer_768_32", "convmixer_1536_20", "convmixer_1024_20_ks9_p14"]


@dataclass
class Context:
    out: Path
    device: torch.device
    smoke: bool
    images: str | None = None
    data: str | None = None
    repeat: int = 4
    results: dict = field(default_factory=dict)

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
        (self.out / name).write_text(json.dumps(obj, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu.json, summary.md, PNGs (work/ holds scratch)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget (default 420; 60 with --smoke)")
    p.add_argument("--images", help="flat folder of real <wnid>_*.JPEG photos (converted here)")
    p.add_argument("--data", help="an already converted folder (train + val) instead of --images")
    p.add_argument("--repeat", type=int, default=4, help="--images: each photo is linked this many times")
    p.add_argument("--smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    p.add_argument("--phases", help="comma-separated subset of: " + ", ".join(ph.name for ph in PHASES))
    a = p.parse_args(argv)
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
    ctx = Context(out, device, a.smoke, a.images, a.data, a.repeat)
    budget = a.budget_s if a.budget_s is not None else (60.0 if a.smoke else 420.0)
    record = Suite([ph for ph in PHASES if ph.name in wanted], ctx, out, budget, a.smoke).run()
    (out / "summary.md").write_text(report.summary_markdown(record))
    record["suite"]["charts"] = report.charts(record, out)
    ctx.write_json("gpu.json", record)
    print("\n".join(report.phase_table(record)))
    print(f"wrote {out / 'gpu.json'}, {out / 'summary.md'} and {', '.join(record['suite']['charts']) or 'no charts'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
