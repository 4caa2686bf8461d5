#!/usr/bin/env python
"""Profile real ConvMixer training steps on this device (CUDA or CPU) and calibrate the cost model.

Each --config is MODEL:BATCH[:PRECISION[:IMAGE_SIZE]]; the first (or --calibrate-on N) is the
calibration point, the rest are predicted from it and measured. Writes OUT/calibration.json
(device, driver, versions, ceilings, NVML telemetry, per-op-class breakdown, efficiencies),
OUT/predicted_vs_measured.md and .png. Use the JSON with tools/estimate_cost.py --calibration.

Default (GPU): calibrate on 768/32 at batch 64 bf16 (fp16 where there is no bf16), then predict
1536/20, 1024/20-p14 and 768/32 at batches 32 and 128.
  tools/profile_gpu.py --out runs/calib-h100
  tools/profile_gpu.py --config convmixer_768_32:32:fp16 --config convmixer_1536_20:16:fp16 --out runs/calib-t4

--quick: the op-level calibration (fastmix.perf.opbench; ~90 s on a GPU): every distinct op of
the three ImageNet variants at 224 px, batches 16 and 64, both memory layouts, at the run's
precision, timed in isolation (forward + backward, CUDA events); efficiencies fitted per op key
(kind + shape features); then each variant's whole step at batch 32, both layouts, measured
and predicted (held out). Copy OUT/calibration.json to fastmix/perf/calibrations/<catalog
key>.json to ship it: predictions for that GPU then use it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.perf.profiler import ProfileSpec  # noqa: E402
from fastmix.train import cli  # noqa: E402
from fastmix.train.checks import CHOICES  # noqa: E402

PRECISIONS = CHOICES["precision"]

DEFAULT = ["convmixer_768_32:64", "convmixer_1536_20:64", "convmixer_1024_20_ks9_p14:64",
           "convmixer_768_32:32", "convmixer_768_32:128"]


def parse_spec(text: str, precision: str, channels_last: str, compile_: bool) -> ProfileSpec:
    parts = text.split(":")
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() and int(p) > 0 for p in parts[1:2] + parts[3:4]):
        raise ValueError(f"--config {text!r}: expected MODEL:BATCH[:PRECISION[:IMAGE_SIZE]] (positive integers)")
    if len(parts) > 2 and parts[2] not in PRECISIONS:
        raise ValueError(f"--config {text!r}: precision {parts[2]!r} is not one of {', '.join(PRECISIONS)}")
    return ProfileSpec(model=parts[0], batch=int(parts[1]), precision=parts[2] if len(parts) > 2 else precision,
                       image_size=int(parts[3]) if len(parts) > 3 else 224, channels_last=channels_last,
                       compile=compile_)


def main(argv=None) -> int:
    p = cli.parser("profile_gpu", __doc__)
    p.add_argument("--config", action="append", help="MODEL:BATCH[:PRECISION[:IMAGE_SIZE]] (repeatable)")
    p.add_argument("--calibrate-on", type=cli.non_negative, default=0, help="index of the calibration configuration")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="precision of a --config without one (auto: the device's fastest)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"], help="memory format (auto: measured)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (compile time is excluded)")
    p.add_argument("--steps", type=cli.positive, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=cli.non_negative, default=5, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--catalog", help="YAML merged over fastmix/devices/gpus.yaml")
    p.add_argument("--out", default="runs/calibration", help="folder: calibration.json, predicted_vs_measured.md")
    p.add_argument("--quick", action="store_true", help="op-level calibration (~90 s on a GPU), see above")
    args = p.parse_args(argv)
    from fastmix.perf.calibration import run_calibration
    from fastmix.model.convmixer import VARIANTS
    if args.quick:
        return quick(args)
    try:
        specs = [parse_spec(c, args.precision, args.channels_last, args.compile) for c in args.config or DEFAULT]
        unknown = [s.model for s in specs if s.model not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; registered: {sorted(VARIANTS)}")
        if not 0 <= args.calibrate_on < len(specs):
            raise ValueError(f"--calibrate-on {args.calibrate_on}: there are {len(specs)} configurations")
        run_calibration(specs, args.out, args.calibrate_on, args.steps, args.warmup, args.device, args.catalog)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"profile_gpu: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "predicted_vs_measured.md").read_text())
    return 0


def quick(args) -> int:
    from fastmix.perf.calibration import run_op_calibration
    from fastmix.perf.opbench import quick_cases
    from fastmix.train.speed import resolve_device, resolve_precision
    try:
        dev = resolve_device(args.device)
        precision = resolve_precision(args.precision, dev)
        held_out = [ProfileSpec(m, 32 if dev.type == "cuda" else 2, 224 if dev.type == "cuda" else 64, precision, cl,
                                compile=args.compile)
                    for m in ("convmixer_768_32", "convmixer_1536_20", "convmixer_1024_20_ks9_p14")
                    for cl in ("off", "on")]
        run_op_calibration(quick_cases(dev, precision), held_out, args.out, steps=min(args.steps, 10),
                           warmup=args.warmup, device=args.device, catalog=args.catalog, cross_check=not args.compile)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"profile_gpu: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "predicted_vs_measured.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
