#!/usr/bin/env python
"""Train a ConvMixer on a converted dataset with a recipe (fastmix/train/recipes/*.yaml).

Examples:
  tools/train.py --recipe cpu-smoke                                   # the demo data, on CPU
  tools/train.py --recipe t4 --model convmixer_768_32 --data data/imagenet100
  tools/train.py --recipe t4 --model convmixer_768_32 --data data/imagenet100 --resume
  torchrun --nproc_per_node 2 tools/train.py --recipe a100 --data data/imagenet100
  tools/train.py --recipe t4 --set epochs=10 --set progressive='{start: 160, until: 0.75}'
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.train.recipe import RECIPES, load_recipe, parse_sets  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes = ", ".join(sorted(r.stem for r in RECIPES.glob("*.yaml")))
    p.add_argument("--recipe", default="cpu-smoke", help=f"built-in ({recipes}) or a .yaml path")
    p.add_argument("--model", help="registered variant, e.g. convmixer_768_32")
    p.add_argument("--data", help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--backend", help="loader: pil, pil-wds, ffcv, opencv, dali, nvjpeg, resident, synthetic")
    p.add_argument("--imagefolder", help="pil backend: the original ImageFolder tree")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="optimizer batch per process (micro-batches accumulate to it)")
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", choices=["auto", "on", "off"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", help="run folder: epochs.csv, steps.jsonl, curves.png, last.pt, best.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field (YAML value), e.g. --set lr=0.005 --set ema=true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    flags = {k: getattr(args, k) for k in ("model", "data", "backend", "imagefolder", "epochs", "batch_size",
                                           "micro_batch", "precision", "channels_last", "compile", "device", "out")}
    try:
        cfg = load_recipe(args.recipe, **{**parse_sets(args.set), **flags})
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    from fastmix.train import distributed
    from fastmix.train.trainer import NonFiniteLoss, Trainer
    try:
        trainer = Trainer(cfg, resume=args.resume)
        summary = trainer.fit()
    except (NonFiniteLoss, FileNotFoundError, ValueError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    if trainer.dist.is_main:
        last = summary["epochs"][-1] if summary["epochs"] else {}
        print(f"done: {cfg.out}  best top-1 {summary['best_top1']:.2f}%  last epoch {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
