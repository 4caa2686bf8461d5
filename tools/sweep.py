#!/usr/bin/env python
"""Sweep a grid of trainings (any TrainConfig or model field), resumably; writes DIR/sweep.csv and DIR/sweep.png.

Examples:
  tools/sweep.py --recipe cifar10 --grid kernel=3,5,7 --grid patch=1,2,4 --out runs/sweep-cifar10
  tools/sweep.py --recipe cifar10 --grid lr=0.01,0.05 --set epochs=10 --out runs/sweep-lr
Rerun the same command after an interruption: finished cells are kept, an interrupted one resumes
from its last.pt. --calibration (tools/profile_gpu.py) calibrates the predicted epoch time.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.train import cli  # noqa: E402
from fastmix.train.recipe import RECIPES, merge_flags, parse_sets, recipe_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser("sweep", __doc__)
    recipes = ", ".join(sorted(r.stem for r in RECIPES.glob("*.yaml")))
    p.add_argument("--recipe", default="cifar10", help=f"built-in ({recipes}) or a .yaml path")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="one axis of the grid: a model field (dim, depth, kernel, patch, act) or a TrainConfig field")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field for every cell (YAML value)")
    p.add_argument("--data", help="converted folder (default: the recipe's)")
    p.add_argument("--out", required=True, help="sweep folder: cells/<cell>/, sweep.csv, sweep.png")
    p.add_argument("--calibration", help="calibration.json for the predicted epoch time")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from fastmix.perf.sweep import SweepError, check_sets, parse_grid, run_sweep
    try:
        grid = parse_grid(a.grid)
        sets = parse_sets(a.set)
        check_sets(grid, sets)
        base = recipe_config(a.recipe, merge_flags(sets, {"data": a.data}))
        rows = run_sweep(base, grid, a.out, a.calibration)
    except (SweepError, ValueError, TypeError, FileNotFoundError) as e:
        return cli.fail("sweep", e)
    except KeyboardInterrupt:  # the interrupted cell resumes from its last.pt, finished ones are kept
        return cli.fail("sweep", "interrupted; rerun the same command to continue", 130)
    for r in rows:
        predicted = r["predicted_on"] if r["predicted_epoch_s"] is None else f"predicted {r['predicted_epoch_s']:.1f}"
        print(f"  {r['cell']}: {r['status']}, best top-1 {r['best_top1']}, {r['epoch_time_s']:.1f} s/epoch "
              f"({predicted})")
    print(f"wrote {a.out}/sweep.csv and {a.out}/sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
