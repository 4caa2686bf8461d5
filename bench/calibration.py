"""CPU calibration benchmark: calibrate the cost model on one configuration, predict others.

    python -m bench.calibration [--out bench/results/calibration-cpu2] [--steps 6]

Calibrates on ConvMixer-768/32 at batch 8 (96 px, fp32), then predicts another variant
(1536/20), two other batch sizes (4, 16) and another patch size and resolution (1024/20-p14
at 224 px), each measured on this machine. Resolutions are small so a 2-core CPU finishes in
a few minutes; the GPU version of the same run is tools/profile_gpu.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.perf.calibration import run_calibration  # noqa: E402
from fastmix.perf.profiler import ProfileSpec  # noqa: E402

SPECS = [ProfileSpec("convmixer_768_32", 8, 96, "fp32", "off"),
         ProfileSpec("convmixer_1536_20", 8, 96, "fp32", "off"),
         ProfileSpec("convmixer_768_32", 4, 96, "fp32", "off"),
         ProfileSpec("convmixer_768_32", 16, 96, "fp32", "off"),
         ProfileSpec("convmixer_1024_20_ks9_p14", 8, 224, "fp32", "off")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/calibration-cpu2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    result = run_calibration(SPECS, args.out, steps=args.steps, warmup=args.warmup, device="cpu")
    print((Path(args.out) / "predicted_vs_measured.md").read_text())
    worst = max(abs(r["error"]) for r in result["predictions"])
    print(f"worst prediction error: {100 * worst:.1f} %  (goal on CPU: 25 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
