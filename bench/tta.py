"""Time to accuracy per loader: the same recipe and seed, once per backend, top-1 against wall-clock.

    python -m bench.tta --data data/tinyimagenet                      # recipe tiny64, every CPU backend
    python -m bench.tta --data data/tinyimagenet --backends ffcv,opencv --periods 6 --period-updates 64
    python -m bench.tta --data data/tinyimagenet --publish            # into bench/results/tta/

Each backend trains the recipe for the same number of updates (`--periods` x `--period-updates`,
the one-cycle schedule spread over them) and evaluates on the whole val split after every period.
Wall-clock counts from before the trainer is built, so a loader's start-up (the resident
loader's decode of the whole split, numba compilation) is part of its time. A backend still
running at `--budget-s` stops after its period. Per period: top-1, top-5, images/s, the data-wait
share and the loader's cost against the same update with no loader running (loadercost.py).

OUT is runs/bench/tta (with --publish bench/results/tta, which docs/benchmarks.md reads).
Writes OUT/tta.json (after every backend: a rerun skips the finished ones, so it is resumable per
backend), OUT/tta.png (top-1 against minutes, one line per backend) and OUT/tta.md (the table,
with each backend's time to a common target top-1: by default the best top-1 that every finished
backend reached, rounded down to a whole percent). Each backend's run folder is OUT/runs/<backend>.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from bench import cli

CPU_BACKENDS = ("pil", "pil-wds", "ffcv", "opencv", "dali", "resident")
GPU_BACKENDS = ("pil-wds", "ffcv", "opencv", "dali", "nvjpeg", "resident")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("bench.tta", __doc__)
    p.add_argument("--data", required=True, help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--recipe", default="tiny64", help="training recipe, the same for every backend")
    p.add_argument("--backends", help=f"comma-separated (default on a CPU: {','.join(CPU_BACKENDS)}; "
                                      f"on a GPU: {','.join(GPU_BACKENDS)})")
    p.add_argument("--periods", type=int, default=6, help="evaluations per backend")
    p.add_argument("--period-updates", type=int, default=64, help="optimizer updates between evaluations")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-clock cap per backend")
    p.add_argument("--target-top1", type=float, help="common target (default: see above)")
    p.add_argument("--device", help="auto, cpu, cuda (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every backend, as tools/train.py --set")
    p.add_argument("--out", help="folder for tta.json, tta.png, tta.md and runs/ (default: runs/bench/tta; "
                                 "with --publish bench/results/tta)")
    cli.add_publish(p)
    p.add_argument("--overwrite", action="store_true", help="start again although OUT/tta.json holds other settings")
    p.add_argument("--replot", action="store_true", help="only redraw tta.png and tta.md from OUT/tta.json")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    a.out = str(Path(a.out) if a.out else cli.default_dir(a) / "tta")
    cli.check_writable(p, Path(a.out) / "tta.json", a.publish)
    for flag in ("periods", "period_updates", "budget_s"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    return a


def settings(a: argparse.Namespace, device: str, host: str) -> dict:
    """What makes two results comparable; a rerun with other settings (or on another machine) is
    refused unless --overwrite."""
    from fastmix.train.recipe import parse_sets
    return {"recipe": a.recipe, "data": str(Path(a.data).resolve()), "periods": a.periods,
            "period_updates": a.period_updates, "budget_s": a.budget_s, "device": device, "host": host,
            "set": parse_sets(a.set)}


def unavailable(backend: str, data: str, device: str) -> str | None:
    """Why `backend` cannot run here, else None (loaders.unavailable imports its compiled parts)."""
    import loaders
    reason = loaders.unavailable(backend)
    if reason:
        return reason
    if backend == "nvjpeg" and device == "cpu":
        return "decodes on a GPU"
    if backend == "pil":
        try:
            layout = json.loads((Path(data) / "manifest.json").read_text())["source"]["layout"]
        except (OSError, ValueError, KeyError, TypeError):
            layout = "unknown"
        if layout != "imagefolder":
            return f"reads an ImageFolder tree; this dataset's source is the {layout} layout (pil-wds reads its shards)"
    return None


def run_backend(a: argparse.Namespace, backend: str, out: Path) -> dict:
    """Train `backend` for the periods (or the budget); its rows with wall-clock from before start-up."""
    from fastmix.train.recipe import recipe_config
    from fastmix.train.trainer import Trainer
    cfg = recipe_config(a.recipe, overrides(a, backend, out))
    t0 = time.perf_counter()
    # The run folder is this benchmark's own (started and listed in tta.json): a rerun replaces it.
    trainer = Trainer(cfg, overwrite=True)
    startup = time.perf_counter() - t0
    summary = trainer.fit(budget_s=max(1.0, a.budget_s - startup))
    keys = ("epoch", "top1", "top5", "images_per_s", "data_wait_share", "loader_free_images_per_s",
            "loader_slowdown", "mfu", "epoch_time_s")
    periods = [{**{k: _number(r.get(k)) for k in keys}, "wall_s": startup + float(r["wall_s"])}
               for r in summary["epochs"]]
    return {"status": "done", "startup_s": startup, "periods": periods, "precision": trainer.precision,
            "device": str(trainer.device), "threads": trainer.threads, "model": cfg.model,
            "model_overrides": cfg.model_overrides, "batch_size": cfg.batch_size,
            "stopped_at_budget": len(periods) < a.periods}


# Set by the benchmark for every backend; a --set of one is refused rather than overwritten. The
# recipe's time budget is switched off: it would fit its own epochs, not --periods x --period-updates.
OWN_KEYS = {"data": "--data", "backend": "--backends", "out": "--out", "epochs": "--periods",
            "max_steps_per_epoch": "--period-updates", "time_budget_min": "--budget-s"}


def overrides(a: argparse.Namespace, backend: str, out: Path) -> dict:
    from fastmix.train.checks import ConfigError
    taken = [k for k in parse_sets_of(a) if k in OWN_KEYS]
    if taken:
        raise ConfigError("; ".join(f"--set {k}: bench.tta sets it (use {OWN_KEYS[k]})" for k in taken))
    sets = {**parse_sets_of(a), "data": a.data, "backend": backend, "out": str(out / "runs" / backend),
            "epochs": a.periods, "max_steps_per_epoch": a.period_updates, "time_budget_min": None}
    return {**sets, "device": a.device} if a.device else sets


def parse_sets_of(a: argparse.Namespace) -> dict:
    from fastmix.train.recipe import parse_sets
    return parse_sets(a.set)


def resolved(a: argparse.Namespace) -> tuple[str, str]:
    """The device every backend trains on (--device, else --set device, else the recipe's) and a
    name for this machine: the result of one machine is not resumed on another."""
    import os
    import torch
    from fastmix.devices.environment import cpu_name
    from fastmix.train import speed
    from fastmix.train.recipe import recipe_config
    device = speed.resolve_device(recipe_config(a.recipe, overrides(a, "synthetic", Path(a.out))).device)
    host = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores")
    return device.type, host


def warm_up(device: str, precision: str) -> None:
    """One-time costs of the process, paid before the first backend's clock starts: the host's matmul
    peak (measured once, for MFU) and matplotlib (curves.png after every period)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    if device == "cpu":
        from fastmix.devices.ceilings import host_matmul_tflops
        host_matmul_tflops(precision)


def _number(value):
    if value in ("", None):
        return None
    return float(value)


def target_top1(result: dict, given: float | None) -> float | None:
    """`given`, else the best top-1 every finished backend reached, rounded down to a whole percent."""
    if given is not None:
        return given
    bests = [max(p["top1"] for p in r["periods"]) for r in result["backends"].values()
             if r["status"] == "done" and r["periods"]]
    return float(math.floor(min(bests))) if bests else None


def time_to(periods: list[dict], target: float | None) -> float | None:
    """Wall seconds at the first evaluation with top-1 >= target (None: never reached)."""
    if target is None:
        return None
    return next((p["wall_s"] for p in periods if p["top1"] >= target), None)


def table(result: dict) -> str:
    from fastmix.train.loadercost import describe  # a mean cost not above zero is timing noise
    target = result.get("target_top1")
    lines = [f"Time to accuracy, {result['settings']['recipe']} recipe on {Path(result['settings']['data']).name}, "
             f"{result['host']}: {result['settings']['periods']} evaluations every "
             f"{result['settings']['period_updates']} updates; target top-1 {target:g} %" if target is not None
             else "Time to accuracy: no backend finished", "",
             "| backend | time to target | best top-1 | last top-1 | images/s | data wait | loader cost | start-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["backends"].items():
        if r["status"] != "done" or not r["periods"]:
            reason = r.get("reason", "").replace("|", "\\|")
            lines.append(f"| {name} | {r['status']}: {reason} | | | | | | |")
            continue
        ps = r["periods"]
        steady = ps[1:] or ps  # the first period holds the warm-up
        rate = sum(p["images_per_s"] for p in steady) / len(steady)
        wait = sum(p["data_wait_share"] or 0 for p in steady) / len(steady)
        costs = [p["loader_slowdown"] for p in steady if p["loader_slowdown"] is not None]
        reached = time_to(ps, target)
        lines.append(f"| {name} | {'not reached' if reached is None else f'{reached / 60:.1f} min'} | "
                     f"{max(p['top1'] for p in ps):.1f} % | {ps[-1]['top1']:.1f} % | {rate:.0f} | {100 * wait:.1f} % | "
                     f"{describe(sum(costs) / len(costs)) if costs else 'n/a'} | {r['startup_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, r in result["backends"].items():
        if r["status"] == "done" and r["periods"]:
            ax.plot([p["wall_s"] / 60 for p in r["periods"]], [p["top1"] for p in r["periods"]], "o-", label=name)
    if result.get("target_top1") is not None:
        ax.axhline(result["target_top1"], color="gray", ls=":", label=f"target {result['target_top1']:g} %")
    s = result["settings"]
    ax.set(xlabel="wall-clock minutes (start-up included)", ylabel="val top-1 (%)",
           title=f"Time to accuracy per loader: {s['recipe']} on {Path(s['data']).name}\n"
                 f"{result['host']}, {result['date']}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    result["target_top1"] = target_top1(result, result["settings"].get("target_top1"))
    tmp = out / "tta.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "tta.json")
    (out / "tta.md").write_text(table(result))
    plot(result, out / "tta.png")


@cli.one_line_errors
def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    state = out / "tta.json"
    if a.replot:
        if not state.is_file():
            print(f"bench.tta: {state}: not found (nothing to replot)", file=sys.stderr)
            return 2
        result = json.loads(state.read_text())
        if a.target_top1 is not None:
            result["settings"]["target_top1"] = a.target_top1
        write(result, out)
        print(table(result))
        return 0
    from fastmix.train import speed
    from fastmix.train.checks import ConfigError
    from fastmix.train.recipe import recipe_config
    try:
        device, host = resolved(a)
        precision = speed.resolve_precision(recipe_config(a.recipe, overrides(a, "synthetic", out)).precision,
                                            speed.resolve_device(device))
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"bench.tta: {e}", file=sys.stderr)
        return 2
    cli.read_converted(a.data)  # not a converted folder: one line, before any backend is tried
    wanted = settings(a, device, host)
    backends = a.backends.split(",") if a.backends else list(CPU_BACKENDS if device == "cpu" else GPU_BACKENDS)
    result = json.loads(state.read_text()) if state.is_file() else None
    if result is not None and (result["settings"] | {"target_top1": None}) != (wanted | {"target_top1": None}):
        if not a.overwrite:
            print(f"bench.tta: {state} holds a run with other settings; pass --overwrite to start again "
                  "(its runs/ are replaced), or another --out", file=sys.stderr)
            return 2
        result = None
    if result is None:
        out.mkdir(parents=True, exist_ok=True)
        result = {"settings": wanted, "host": host, "date": time.strftime("%Y-%m-%d"), "backends": {}}
    result["settings"]["target_top1"] = a.target_top1
    warm_up(device, precision)
    for backend in backends:
        done = result["backends"].get(backend)
        if done and done["status"] in ("done", "skipped"):  # a failed one is tried again
            print(f"{backend}: already measured ({done['status']}), kept")
            continue
        reason = unavailable(backend, a.data, device)
        if reason:
            result["backends"][backend] = {"status": "skipped", "reason": reason}
            print(f"{backend}: skipped ({reason})")
        else:
            print(f"{backend}: training {a.periods} x {a.period_updates} updates (budget {a.budget_s:.0f} s)", flush=True)
            try:
                result["backends"][backend] = run_backend(a, backend, out)
            except ConfigError as e:  # the settings: the same for every backend
                print(f"bench.tta: {backend}: {e}", file=sys.stderr)
                return 2
            except FileNotFoundError as e:  # this backend's input (a .beton, say) is not in the data folder
                result["backends"][backend] = {"status": "skipped", "reason": str(e).splitlines()[0]}
                print(f"{backend}: skipped ({e})")
            except Exception as e:  # this backend broke: recorded (a rerun tries it again), the others still run
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                result["backends"][backend] = {"status": "failed", "reason": reason}
                print(f"bench.tta: {backend} failed ({reason})", file=sys.stderr)
        write(result, out)
    write(result, out)
    print(table(result))
    return 1 if any(r["status"] == "failed" for r in result["backends"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
