#!/usr/bin/env python
"""Predict hours and dollars for ConvMixer training runs on catalog GPUs (a roofline per op).

Examples:
  tools/estimate_cost.py                                     # ImageNet-100, 100 epochs, T4/L4/A100/H100
  tools/estimate_cost.py --model convmixer_768_32 --gpu t4 --epochs 150 --json runs/cost-t4.json
  tools/estimate_cost.py --calibration runs/calib-t4/calibration.json --gpu t4
  tools/estimate_cost.py --reproduce-report                  # the report's Table 2, then the corrected one
  tools/estimate_cost.py --memory                            # training memory and the largest micro-batch
  tools/estimate_cost.py --plan --model convmixer_768_32 --epochs 100 --progressive "{start: 160, until: 0.75}" --cores 4

--progressive takes what `tools/train.py --set progressive=...` takes: the size ramps from `start`
to --image-size by `until` x the epochs, in steps of 32 px, epoch by epoch as the trainer does.

--plan reads the loader rates per CPU core from --loader-results (default: the committed
bench/results/loaders-cpu2.json) and names the file it read under its table.

Conventions: a multiply-add is 2 FLOPs; model FLOPs count every conv (depthwise included) and
the classifier, forward + backward. Efficiencies: --calibration FILE, else the calibration
packaged for that GPU (fastmix/perf/calibrations/<key>.json), else stated defaults; every
prediction prints a range (low-high) and says where it comes from.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.devices.catalog import load_catalog  # noqa: E402
from fastmix.perf.cost import (IMAGENET100_TRAIN, REPORT_EPOCHS, REPORT_GMACS, REPORT_IMAGES, REPORT_TFLOPS, Efficiency,  # noqa: E402
                               largest_micro_batch, predict_run, reproduce_report, training_memory_gb)
from fastmix.perf import plan  # noqa: E402
from fastmix.train import checks, cli  # noqa: E402
from bench.cli import alias  # noqa: E402  (the flag vocabulary's hidden, warning old spellings)
from fastmix.perf.memory import RECIPE_EXTRAS  # noqa: E402

MODELS = ["convmixer_768_32", "convmixer_1536_20", "convmixer_1024_20_ks9_p14"]
GPUS = ["t4", "l4", "a100-40gb", "h100"]
LOADER_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "loaders-cpu2.json"
JSON_SWITCH = "\0switch"  # what --json holds when given without a path (refused: it was a switch)


def parse_args(argv=None):
    p = cli.parser("estimate_cost", __doc__)
    p.add_argument("--model", action="append", help=f"variant (repeatable; default {', '.join(MODELS)})")
    p.add_argument("--gpu", action="append", help=f"catalog key (repeatable; default {', '.join(GPUS)})")
    p.add_argument("--num-images", type=cli.positive, default=IMAGENET100_TRAIN, help="training images per epoch")
    p.add_argument("--epochs", type=cli.positive, default=100, help="training epochs")
    p.add_argument("--batch-size", type=cli.positive, default=64, help="optimizer batch (micro-batches accumulate to it)")
    p.add_argument("--image-size", type=cli.positive, default=224, help="training resolution (the last, with --progressive)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto (bf16 where the GPU has bf16 tensor cores, else fp16), fp32, fp16, bf16")
    p.add_argument("--calibration", help="calibration.json from tools/profile_gpu.py")
    p.add_argument("--catalog", help="YAML merged over fastmix/devices/gpus.yaml (prices, new GPUs)")
    p.add_argument("--json", metavar="PATH", nargs="?", const=JSON_SWITCH,
                   help="also write the rows as JSON to PATH (as tools/evaluate.py --json); the table still prints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--reproduce-report", action="store_true",
                   help="the reference report's Table 2 under its own convention, next to the corrected one")
    p.add_argument("--memory", action="store_true", help="training memory per micro-batch and what fits")
    p.add_argument("--plan", action="store_true",
                   help="per catalog GPU: micro-batch, accumulation, hours and $ with ranges, CPU loader check")
    p.add_argument("--progressive", metavar="YAML", help="progressive resizing as in train.py's --set progressive=..., "
                   "e.g. '{start: 160, until: 0.75}' (--plan)")
    p.add_argument("--cores", type=cli.positive, default=os.cpu_count(), help="CPU cores for the loader (default: this machine's)")
    p.add_argument("--loader-results", default=str(LOADER_RESULTS),
                   help="bench.loaders JSON with per-core rates (default: bench/results/loaders-cpu2.json)")
    p.add_argument("--ema", action="store_true", help="count an EMA copy of the weights (--plan)")
    # old spellings, hidden: --images is a folder of photos everywhere else, --batch is --batch-size
    alias(p, "--images", "--num-images")
    alias(p, "--batch", "--batch-size")
    a = p.parse_args(argv)
    if a.json == JSON_SWITCH:  # the old switch: JSON on stdout
        p.error("--json takes a file path now, as in tools/evaluate.py: --json runs/cost.json "
                "(the table still prints)")
    if a.json and (a.reproduce_report or a.memory):
        p.error("--json writes the cost table's or --plan's rows; --reproduce-report and --memory print tables only")
    if a.json and Path(a.json).exists() and not a.overwrite:
        p.error(f"--json {a.json}: exists; pass --overwrite to replace it")
    return a


precision_for = plan.precision_for


def schedule_of(args) -> list[int]:
    """The size of every epoch: --progressive read as train.py reads `--set progressive=...` (a YAML
    mapping, checked by the same rules, sized by the trainer's own image_size_at), or the old
    128:160:192:224 (equal blocks of epochs; deprecated, one line says so)."""
    if not args.progressive:
        return [args.image_size] * args.epochs
    if re.fullmatch(r"\d+(:\d+)*", args.progressive.strip()):
        return old_progressive(args)
    from fastmix.train.checks import ConfigError
    from fastmix.train.recipe import parse_sets
    from fastmix.train.recipe import image_size_at
    try:
        value = parse_sets([f"progressive={args.progressive}"])["progressive"]
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping like {{start: 160, until: 0.75}}, got {value!r}")
        checks.progressive(value)
    except ConfigError as e:
        raise ValueError(f"--progressive {args.progressive!r}: {e}") from None
    ramp = SimpleNamespace(progressive=value, epochs=args.epochs, image_size=args.image_size)
    return [image_size_at(ramp, epoch) for epoch in range(args.epochs)]


def old_progressive(args) -> list[int]:
    print(f"estimate_cost: --progressive {args.progressive} (sizes in equal blocks of epochs) is deprecated; "
          "use --progressive '{start: PIXELS, until: FRACTION}' as in train.py --set progressive=...", file=sys.stderr)
    try:
        sizes = [int(s) for s in args.progressive.split(":")]
    except ValueError:
        raise ValueError(f"--progressive {args.progressive!r}: expected sizes like 128:160:192:224") from None
    if any(s < 32 for s in sizes):
        raise ValueError(f"--progressive {args.progressive!r}: sizes must be >= 32 px")
    return plan.epoch_sizes(args.epochs, sizes)


def run_plan(args, catalog, eff) -> tuple[str, dict]:
    """The plan's tables (the loader file they read named under them) and its rows per model."""
    rates = plan.load_loader_rates(args.loader_results)
    gpus = [catalog[k] for k in (args.gpu or [k for k in catalog if k != "cpu"])]
    out, rows_of = [], {}
    for model in args.model or MODELS:
        schedule = schedule_of(args)
        rows_of[model] = plan.plan_run(model, args.epochs, [], gpus, batch=args.batch_size, precision=args.precision,
                                       train_images=args.num_images, eff=eff, cores=args.cores, loader_rates=rates,
                                       ema=args.ema, schedule=schedule)
        out.append(f"## {model}\n\n" + plan.markdown(rows_of[model]))
    return "\n\n".join(out) + "\n\n" + plan.loader_source(args.loader_results), rows_of


def cost_rows(args, catalog, eff) -> list[dict]:
    rows = []
    for model in args.model or MODELS:
        for key in args.gpu or GPUS:
            gpu = catalog[key]
            prec = precision_for(gpu, args.precision)
            extras = {**RECIPE_EXTRAS, "ema": args.ema}
            micro = largest_micro_batch(model, gpu, prec, args.batch_size, args.image_size, **extras)
            rows.append(predict_run(model, gpu, prec, args.batch_size, micro, args.num_images, args.epochs, args.image_size,
                                    eff=eff, memory_extras=extras))
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | GPU | precision | micro-batch | memory (GB) | img/s | MFU | hours (range) | $ (range) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (lo, hi), (dlo, dhi) = r["hours_range"], r["dollars_range"]
        out.append(f"| {r['model']} | {r['gpu']} | {r['precision']} | {r['micro_batch']} | {r['memory_gb']:.1f} | "
                   f"{r['images_per_s']:.0f} | {100 * r['mfu']:.0f} % | {r['hours']:.1f} ({lo:.1f}-{hi:.1f}) | "
                   f"{r['dollars']:.0f} ({dlo:.0f}-{dhi:.0f}) |")
    sources = sorted({f"efficiencies: {r['efficiency_source']}; range: {r['range_source']}" for r in rows})
    return "\n".join(out + [""] + sources)


def report(args, catalog, eff) -> str:
    lines = [f"## The report's Table 2, under its own convention ({REPORT_IMAGES:,} images x {REPORT_EPOCHS} epochs;",
             "\"FLOPs\" = 3 x timm's GMACs x images x epochs, i.e. a multiply-add counted as one FLOP and the",
             "depthwise convs left out; hours = FLOPs / " + ", ".join(f"{g} {t} T/s" for g, t in REPORT_TFLOPS.items())
             + ")", "", "| model | \"FLOPs\" | " + " | ".join(f"{g} h" for g in REPORT_TFLOPS) + " |",
             "|---|---|" + "---|" * len(REPORT_TFLOPS)]
    for r in reproduce_report():
        lines.append(f"| {r['model']} | {r['flops']:.2g} | " + " | ".join(f"{r[g + '_hours']:.0f}" for g in REPORT_TFLOPS)
                     + " |")
    lines += ["", "## Corrected (multiply-add = 2 FLOPs, depthwise included, forward + backward; roofline per op, "
              f"efficiencies: {eff.source if eff else 'per GPU: packaged calibration, else defaults'})", ""]
    # the report's own runs (ImageNet-1k, 100 epochs) on its GPUs, with the corrected model
    same_runs = argparse.Namespace(**{**vars(args), "num_images": REPORT_IMAGES, "epochs": REPORT_EPOCHS,
                                      "gpu": args.gpu or ["t4", "v100", "a100-40gb"],
                                      "model": args.model or list(REPORT_GMACS)})
    rows = cost_rows(same_runs, catalog, eff)
    lines.append("| model | GPU | training FLOPs | FLOPs per epoch | hours (range) | $ (range) |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        (lo, hi), (dlo, dhi) = r["hours_range"], r["dollars_range"]
        lines.append(f"| {r['model']} | {r['gpu']} | {r['train_flops']:.2g} | {r['epoch_flops']:.2g} | "
                     f"{r['hours']:.0f} ({lo:.0f}-{hi:.0f}) | {r['dollars']:.0f} ({dlo:.0f}-{dhi:.0f}) |")
    return "\n".join(lines)


def memory(args, catalog) -> str:
    out = ["| model | precision | micro-batch | training memory (GB) | fits on |", "|---|---|---|---|---|"]
    note = (f"Device memory: weights, grads, AdamW, saved activations, context, cuDNN workspace, "
            f"one DALI pool + val, compile workspaces{', EMA' if args.ema else ''} (fastmix/perf/memory.py).")
    for model in args.model or MODELS:
        for prec in ("fp16", "fp32"):
            for micro in (16, 32, 64):
                gb = training_memory_gb(model, micro, prec, args.image_size, **RECIPE_EXTRAS, ema=args.ema)
                fits = [k for k in args.gpu or GPUS if gb <= catalog[k].memory_gb]
                out.append(f"| {model} | {prec} | {micro} | {gb:.1f} | {', '.join(fits) or '-'} |")
    return "\n".join(out + ["", note])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        eff = Efficiency.load(args.calibration) if args.calibration else None  # None: per GPU, packaged or defaults
        unknown = [g for g in args.gpu or [] if g not in catalog]
        if unknown:
            raise KeyError(f"unknown GPU {unknown}; catalog keys: {sorted(catalog)}")
        if args.plan:
            table, rows = run_plan(args, catalog, eff)
        elif args.reproduce_report:
            table, rows = report(args, catalog, eff), None
        elif args.memory:
            table, rows = memory(args, catalog), None
        else:
            rows = cost_rows(args, catalog, eff)
            table = markdown(rows)
        print(table)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
            print(f"wrote {args.json}")
    except (OSError, ValueError, KeyError) as e:
        print(f"estimate_cost: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
