#!/usr/bin/env python
"""Train a ConvMixer on a converted dataset with a recipe (fastmix/train/recipes/*.yaml).

Examples:
  tools/train.py --recipe cpu-smoke                                   # the demo data, on CPU
  tools/train.py --recipe t4 --model convmixer_768_32 --data data/imagenet100
  tools/train.py --recipe t4 --model convmixer_768_32 --data data/imagenet100 --resume
  torchrun --nproc_per_node 2 tools/train.py --recipe a100 --data data/imagenet100
  tools/train.py --recipe t4 --set epochs=10 --set progressive='{start: 160, until: 0.75}'

Settings: a recipe's values, then `--set KEY=VALUE` (any TrainConfig field, a YAML value; `null`
switches an option off, e.g. --set rand_augment=null), then the flags given (--epochs, ...). A flag
and a --set of the same key that disagree are refused, not silently resolved.

Run folder: --out (or --set out=...) exactly as given. Without it, each run gets a folder of its
own, BASE/<start time> (e.g. runs/cpu-smoke-convmixer_256_8/20261204-093015; BASE is <the
recipe's out, or runs/<recipe>>-<model>), and runs/latest (next to BASE) points at it; --resume
without --out continues the newest run under BASE that holds a last.pt. A folder that already
holds a run (last.pt, best.pt or finished epochs in epochs.csv) is refused unless --resume
continues it or --overwrite replaces it (it removes only the files the trainer writes).
--resume with other settings than last.pt was saved with lists the differences and stops unless
--allow-changes is given (out, workers and log_every may differ freely; a changed epochs, lr or
schedule then reshapes the schedule from the update reached). Ctrl-C stops with exit code 130;
last.pt holds the last finished epoch.

Progress: on a terminal a bar; in a log file or pipe one line after each epoch's first update,
every log_every updates and at least every progress_every_s (30) seconds. TensorBoard event files
go to OUT/tensorboard (`--set tensorboard=false`: none).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.train import cli  # noqa: E402
from fastmix.train.recipe import RECIPES, merge_flags, parse_sets, recipe_config  # noqa: E402

FLAGS = ("model", "data", "backend", "imagefolder", "epochs", "batch_size", "micro_batch", "precision",
         "channels_last", "compile", "device", "out")


def parse_args(argv=None):
    p = cli.parser("train", __doc__)
    recipes = ", ".join(sorted(r.stem for r in RECIPES.glob("*.yaml")))
    p.add_argument("--recipe", default="cpu-smoke", help=f"built-in ({recipes}) or a .yaml path")
    p.add_argument("--model", help="registered variant, e.g. convmixer_768_32")
    p.add_argument("--data", help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--backend", help="loader: pil, pil-wds, ffcv, opencv, dali, nvjpeg, resident, synthetic")
    p.add_argument("--imagefolder", help="pil backend: the original ImageFolder tree")
    p.add_argument("--epochs", type=int, help="epochs to train (the recipe's, else 100)")
    p.add_argument("--batch-size", type=int, help="optimizer batch per process (micro-batches accumulate to it)")
    p.add_argument("--micro-batch", type=int, help="images per forward/backward (accumulated to --batch-size)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 where the device has it natively, else fp16 on a GPU and fp32 on a CPU")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], help="memory format; auto times both")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", help="run folder: epochs.csv, steps.jsonl, curves.png, last.pt, best.pt "
                   "(default: a new folder per run, see above)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (without --out: the newest run of this recipe and model)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although settings differ from last.pt's (listed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (only the trainer's own files are removed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field (YAML value), e.g. --set lr=0.005 --set ema=true")
    return p.parse_args(argv)


def config(args):
    """The run's TrainConfig: the recipe, then the --set values (explicit nulls included), then the
    flags that were given; a key given both ways with different values is refused (recipe.merge_flags,
    shared with tools/sweep.py)."""
    return recipe_config(args.recipe, merge_flags(parse_sets(args.set), {k: getattr(args, k) for k in FLAGS}))


def main(argv=None, started: float | None = None) -> int:
    """`started`: time.time() when the command started (a time budget counts from it); else now."""
    started = time.time() if started is None else started
    args = parse_args(argv)
    try:
        cfg = config(args)
        explicit, latest = args.out is not None or "out" in parse_sets(args.set), Path(cfg.out).parent / "latest"
        if not explicit:  # the default folder's base must be able to hold run folders (one line, not mkdir's traceback)
            from fastmix.train.checks import out_folder
            out_folder(cfg.out)
        cfg, created = (cfg, None) if explicit else run_folder(cfg, args.resume)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return cli.fail("train", e)
    from fastmix.train import distributed
    from fastmix.train.trainer import NonFiniteLoss, Trainer
    trainer = None
    try:
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes,
                          started=started)
        if not explicit and trainer.dist.is_main:
            announce(Path(cfg.out), latest)
        summary = trainer.fit()
    except (NonFiniteLoss, FileNotFoundError, ValueError) as e:
        return cli.fail("train", e, 1)
    except KeyboardInterrupt:
        return cli.fail("train", interrupted(cfg.out), 130)
    finally:
        distributed.shutdown()
        if created is not None and trainer is None:  # a start that failed leaves no empty folder
            with contextlib.suppress(OSError):
                created.rmdir()
    if trainer.dist.is_main:
        from fastmix.train.runlog import final_summary
        print(final_summary(summary, cfg.out))
    return 0


def run_folder(cfg, resume: bool):
    """(cfg, the folder created or None) without --out: BASE is the recipe's and model's folder;
    a new run gets BASE/<start time>, --resume the newest run under BASE. Under torchrun every rank
    names it from torchrun's own start, so all agree (rank 0 creates it)."""
    from fastmix.train import runfolder
    base = Path(cfg.out)
    if resume:
        run = runfolder.latest_run(base)
        if run is None:
            raise runfolder.RunFolderError(f"{base}: no run of this recipe and model holds a last.pt to resume; "
                                           "start one without --resume, or name its folder with --out")
        return dataclasses.replace(cfg, out=str(run)), None
    if "LOCAL_RANK" in os.environ:  # torchrun: its agent (our parent) started once for all ranks
        import psutil
        stamp = time.strftime(runfolder.STAMP, time.localtime(psutil.Process(os.getppid()).create_time()))
        run = base / stamp
        run.mkdir(parents=True, exist_ok=True)
        return dataclasses.replace(cfg, out=str(run)), None
    run = runfolder.new_run(base)
    return dataclasses.replace(cfg, out=str(run)), run


def announce(run: Path, link: Path) -> None:
    """Say where the run goes and point `link` (runs/latest) at it."""
    from fastmix.train import runfolder
    problem = runfolder.point_latest(link, run)
    print(f"run folder: {run}" + (f" ({problem})" if problem else f" ({link} points at it)"), flush=True)


def interrupted(out: str) -> str:
    """What Ctrl-C leaves: last.pt is written only at the end of an epoch (a consistent state)."""
    from fastmix.train.runlog import RunLog
    rows = RunLog(Path(out), enabled=False).rows()
    if (Path(out) / "last.pt").is_file() and rows:
        return f"interrupted; rerun with --resume to continue ({out}/last.pt holds epoch {rows[-1]['epoch']})"
    return f"interrupted before the first epoch finished; nothing to resume in {out}, rerun to start again"


if __name__ == "__main__":
    import psutil  # the process's own start: the interpreter and imports count against a time budget
    sys.exit(main(started=psutil.Process().create_time()))
