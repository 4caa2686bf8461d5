#!/usr/bin/env python
"""Compare training runs: one table (final and best top-1, time to a target top-1, img/s, MFU,
loader cost, wall time, every setting that differs) and one PNG of their curves against epochs
and wall-clock.

Examples:
  tools/compare.py runs/a runs/b                       # two run folders (tools/train.py --out)
  tools/compare.py runs/sweep-lr --out lr.png          # every cell of a sweep (tools/sweep.py)
  tools/compare.py bench/results/tta runs/mine         # bench.tta's backends beside a run of yours
  tools/compare.py runs/cpu-smoke-convmixer_256_8      # every run tools/train.py made there without --out
  tools/compare.py runs/a runs/b --target-top1 40

RUN is a run folder (epochs.csv, config.yaml, summary.json: finished or still running), a folder
of run folders, a sweep folder (each cell is a run) or a bench.tta folder (each finished backend
is a run). Each run is named by the shortest tail of its path that no other run shares. The
target top-1 is, unless given, the best top-1 every run reached, rounded down. The PNG is written
to --out; a file there that this command did not write is refused unless --overwrite.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.train import cli  # noqa: E402


def parse_args(argv=None):
    p = cli.parser("compare", __doc__)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder, sweep folder or bench.tta folder")
    p.add_argument("--out", default="compare.png", help="the PNG of the curves")
    p.add_argument("--target-top1", type=float, metavar="PERCENT", help="val top-1 for the time-to-target column")
    p.add_argument("--overwrite", action="store_true", help="replace --out although another program wrote it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from fastmix.train.compare import CompareError, load_runs, notes, table, target_top1, title
    from fastmix.train.compare_plot import check_out, plot
    out = Path(a.out)
    try:
        check_out(out, a.overwrite)
        runs = load_runs(a.runs)
        target = target_top1(runs, a.target_top1)
        print(table(runs, target))
        print(notes(runs, target, a.target_top1))
        plot(runs, target, out, title(runs))
    except CompareError as e:
        return cli.fail("compare", e)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
