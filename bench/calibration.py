"""CPU acceptance of the op-level cost model: calibrate once on isolated ops, predict whole steps.

    python -m bench.calibration --threads 2                 # into runs/bench/calibration-cpu2/
    python -m bench.calibration --publish                   # into bench/results/calibration-cpu2/

1. The quick op benchmark (fastmix.perf.opbench.quick_cases on a CPU): every distinct op of the
   three ImageNet variants at one small resolution each (768/32 and 1536/20 at 64 px, 1024/20-p14
   at 112 px), batches 1 and 3, both memory layouts, fp32: forward + backward in isolation, and
   AdamW over each variant's parameters. Efficiency and overhead fitted per op key.
2. End to end, all held out: each variant at two batches (2, 4) and two resolutions (the op
   benchmark's and a larger one: 64/96 px, 112/160 px for patch 14), in NCHW, and at batch 2
   in channels_last, each measured (median of --sweeps x --steps steps: the 15 configurations are
   measured in turn, --sweeps times, so a slow spell of the machine spreads over all of them) and
   predicted.
The end-to-end calibration (fitted on the first configuration's profiler breakdown) is kept as a
cross-check column. Writes calibration.json, predicted_vs_measured.md and .png into the folder
--out (default runs/bench/calibration-cpu2; with --publish bench/results/calibration-cpu2).
CPU timings are only meaningful on a quiet machine: the load average is recorded.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import cli  # noqa: E402
from bench.cli import alias  # noqa: E402

from bench.plotting import when  # noqa: E402
from fastmix.perf.calibration import plot, run_op_calibration  # noqa: E402
from fastmix.perf.opbench import quick_cases  # noqa: E402
from fastmix.perf.profiler import ProfileSpec  # noqa: E402

RESOLUTIONS = {"convmixer_768_32": (64, 96), "convmixer_1536_20": (64, 96), "convmixer_1024_20_ks9_p14": (112, 160)}
BATCHES = (2, 4)
GOAL = 0.15


def end_to_end_specs() -> list[ProfileSpec]:
    specs = [ProfileSpec(m, b, r, "fp32", "off") for m, rs in RESOLUTIONS.items() for r in rs for b in BATCHES]
    return specs + [ProfileSpec(m, 2, rs[0], "fp32", "on") for m, rs in RESOLUTIONS.items()]


def redraw(result: dict, png: Path, source: Path) -> Path:
    env, png = result["environment"], png.with_name("predicted_vs_measured.png")
    plot(result["predictions"], png, f"{env['device']} ({env.get('cpu', '?')}); measured {when(result, source)}")
    return png


def build_parser():
    p = cli.parser("bench.calibration", __doc__)
    p.add_argument("--out", help="folder (default: runs/bench/calibration-cpu2; with --publish "
                                 "bench/results/calibration-cpu2)")
    cli.add_publish(p)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration per sweep")
    p.add_argument("--sweeps", type=int, default=3, help="passes over all configurations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="back-to-back repetitions per op timing")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    alias(p, "--reps", "--repeats")
    p.add_argument("--replot", metavar="JSON", help="redraw predicted_vs_measured.png beside a calibration.json; "
                                                    "measure nothing")
    return p


@cli.one_line_errors
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:
        return cli.replot(p, args, redraw)
    args.out = str(Path(args.out) if args.out else cli.default_dir(args) / "calibration-cpu2")
    cli.check_writable(p, Path(args.out) / "calibration.json", args.publish)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = run_op_calibration(quick_cases(torch.device("cpu"), "fp32"), end_to_end_specs(), args.out,
                                steps=args.steps, warmup=args.warmup, device="cpu", reps=args.repeats,
                                sweeps=args.sweeps)
    result["load_average"] = {"before": load_before, "after": os.getloadavg(), "cores": os.cpu_count()}
    path = Path(args.out) / "calibration.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print((Path(args.out) / "predicted_vs_measured.md").read_text())
    print(f"worst held-out error: {100 * result['held_out_error']:.1f} % (goal {100 * GOAL:.0f} %); "
          f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
