"""Grid sweeps: one training per cell of a grid over TrainConfig or model fields, resumable.

    rows = run_sweep(load_recipe("cifar10"), parse_grid(["kernel=3,5,7", "patch=1,2,4"]), "runs/sweep")

Each cell trains in DIR/cells/<name>/ (its own epochs.csv, checkpoints, summary.json). A cell
whose summary.json exists is not trained again; one with only last.pt resumes from it. DIR/sweep.csv
holds one row per cell: final and best accuracies, epoch time, img/s, parameters, FLOPs, and the
cost model's predicted epoch time on the present device next to the measured one. DIR/sweep.png
is the reference reproduction's figure: train accuracy, test accuracy, time per epoch and learning
rate against epoch, one line per cell. This lives in perf because it uses both train and perf.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import re
import statistics
from pathlib import Path

from fastmix import safeyaml
from fastmix.devices.catalog import load_catalog, present_device
from fastmix.model.convmixer import VARIANTS, ConvMixerConfig
from fastmix.model.flops import convmixer_ops, totals
from fastmix.train.recipe import TrainConfig
from fastmix.train.trainer import Trainer

from .cost import Efficiency, predict_run

MODEL_FIELDS = [f.name for f in dataclasses.fields(ConvMixerConfig)]
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
RESULT_COLUMNS = ["status", "epochs", "final_top1", "best_top1", "final_top5", "final_train_top1",
                  "final_eval_loss", "epoch_time_s", "predicted_epoch_s", "predicted_on", "images_per_s",
                  "params", "fwd_gflops_per_image", "train_gflops_per_image", "out"]


class SweepError(ValueError):
    pass


def parse_grid(items: list[str]) -> dict[str, list]:
    """["kernel=3,5,7", "lr=0.01,0.05"] -> {"kernel": [3, 5, 7], "lr": [0.01, 0.05]} (YAML values)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise SweepError(f"--grid {item!r}: expected field=v1,v2,...")
        if key not in MODEL_FIELDS and key not in TRAIN_FIELDS:
            raise SweepError(f"--grid {item!r}: {key!r} is neither a model field {MODEL_FIELDS} nor a TrainConfig field")
        if key in grid:  # a second axis of the same name would silently replace the first
            raise SweepError(f"--grid {item!r}: {key!r} is already an axis; give all its values in one --grid")
        if key == "out":
            raise SweepError(f"--grid {item!r}: each cell's out is OUT/cells/<cell>; sweep --out instead")
        grid[key] = [safeyaml.loads(v, f"--grid {item!r}") for v in values.split(",")]
    if not grid:
        raise SweepError("no --grid given")
    return grid


def check_sets(grid: dict[str, list], sets: dict) -> None:
    """A key that is both a grid axis and a --set would have its --set silently replaced per cell."""
    both = sorted(set(grid) & set(sets))
    if both:
        raise SweepError(f"{both[0]!r} is both a --grid axis and a --set; give it in one place")
    overrides = sets.get("model_overrides") or {}
    both = sorted(set(grid) & set(overrides) if isinstance(overrides, dict) else ())
    if both:
        raise SweepError(f"{both[0]!r} is both a --grid axis and in --set model_overrides; give it in one place")


def cells(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def cell_name(cell: dict) -> str:
    return "_".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '-', str(v))}" for k, v in cell.items())


def cell_config(base: TrainConfig, cell: dict, out: Path) -> TrainConfig:
    values = base.to_dict()
    values["model_overrides"] = dict(values["model_overrides"])
    for key, value in cell.items():
        if key in MODEL_FIELDS:
            values["model_overrides"][key] = value
        else:
            values[key] = value
    values["out"] = str(Path(out) / "cells" / cell_name(cell))
    return TrainConfig(**values)


def plan(base: TrainConfig, grid: dict[str, list], out: Path) -> list[tuple[dict, TrainConfig]]:
    """Every cell's config, built (and so checked, model fields included) before the first cell
    trains: a bad value in the last cell is refused now, not after the others have run."""
    planned = []
    for cell in cells(grid):
        try:
            planned.append((cell, cell_config(base, cell, out)))
        except ValueError as e:
            raise SweepError(f"cell {cell_name(cell)}: {e}") from None
    for cell, cfg in planned:
        for name in ("classes.json", "manifest.json"):  # what the cell's row reads after training
            if not (Path(cfg.data) / name).is_file():
                raise SweepError(f"cell {cell_name(cell)}: {Path(cfg.data) / name}: not found; "
                                 "convert the data first (tools/convert_subset.py)")
    return planned


def _plain(obj):
    return json.loads(json.dumps(obj))


def _train(cfg: TrainConfig) -> tuple[dict, str]:
    """The cell's summary, training it only if it has not finished before."""
    out = Path(cfg.out)
    done = out / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        before = summary.get("config", {})
        changed = sorted(k for k, v in _plain(cfg.to_dict()).items() if before.get(k) != v)
        if changed:
            raise SweepError(f"{out}: finished with other settings ({', '.join(changed)}); "
                             "use another --out, or delete the cell's folder to train it again")
        return summary, "done before"
    resume = (out / "last.pt").is_file()
    return Trainer(cfg, resume=resume).fit(), "resumed" if resume else "trained"


def _num(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in ("", None)]


def predict_epoch(cfg: TrainConfig, model: ConvMixerConfig, precision: str, train_images: int, num_classes: int,
                  eff: Efficiency | None) -> tuple[float | None, str]:
    """(seconds, "device (efficiency source)") for one epoch at the precision the cell trained with,
    or (None, "no prediction: why") when the catalog has no peak for it on this device: a finished
    cell's measurement is never lost to a prediction that cannot be made."""
    device = present_device(load_catalog())
    if not device.supports(precision):
        return None, f"no prediction: the catalog gives {device.name} no {precision} peak"
    predicted = predict_run(model, device, precision, batch=cfg.batch_size, micro_batch=cfg.micro_batch_size,
                            train_images=train_images, epochs=1, image_size=cfg.image_size,
                            num_classes=num_classes, eff=eff)
    return predicted["epoch_s"], f"{device.key} {precision} ({predicted['efficiency_source']})"


def cell_row(cell: dict, cfg: TrainConfig, summary: dict, status: str, eff: Efficiency | None) -> dict:
    rows = summary["epochs"]
    final = rows[-1] if rows else {}
    model = ConvMixerConfig(**{**VARIANTS[cfg.model].__dict__, **cfg.model_overrides})
    classes = json.loads((Path(cfg.data) / "classes.json").read_text())
    train_images = json.loads((Path(cfg.data) / "manifest.json").read_text())["splits"]["train"]["written"]
    t = totals(convmixer_ops(model, cfg.image_size, len(classes)))
    predicted_s, predicted_on = predict_epoch(cfg, model, summary["precision"], train_images, len(classes), eff)
    times = _num(rows, "epoch_time_s")
    return {**cell, "status": status, "epochs": len(rows), "final_top1": final.get("top1"),
            "best_top1": max(_num(rows, "top1"), default=None), "final_top5": final.get("top5"),
            "final_train_top1": final.get("train_top1"), "final_eval_loss": final.get("eval_loss"),
            # the median epoch: the first pays start-up (and compilation, with compile: true)
            "epoch_time_s": statistics.median(times) if times else None,
            "predicted_epoch_s": predicted_s, "predicted_on": predicted_on,
            "images_per_s": statistics.median(_num(rows, "images_per_s")) if rows else None,
            "params": t.params, "fwd_gflops_per_image": t.fwd_model_flops / 1e9,
            "train_gflops_per_image": t.train_model_flops / 1e9, "out": cfg.out}


def write_csv(path: Path, grid: dict, rows: list[dict]) -> None:
    tmp = Path(f"{path}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, ["cell", *grid, *RESULT_COLUMNS])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def plot(path: Path, rows: list[dict], title: str = "") -> None:
    """Train accuracy, test accuracy, time per epoch, learning rate against epoch; a line per cell.
    A panel with no data (train accuracy under mixup/cutmix) says so instead of staying empty."""
    import time

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("train_top1", "train accuracy (%)"), ("top1", "test accuracy (%)"),
              ("epoch_time_s", "time per epoch (s)"), ("lr", "learning rate")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    drawn = set()
    for row in rows:
        with open(Path(row["out"]) / "epochs.csv") as f:
            epochs = list(csv.DictReader(f))
        x = [int(r["epoch"]) for r in epochs]  # epochs.csv counts from 1
        for ax, (key, _) in zip(axes.flat, panels):
            y = [float(r[key]) if r.get(key) not in ("", None) else float("nan") for r in epochs]
            if any(v == v for v in y):
                ax.plot(x, y, "o-", ms=3, label=row["cell"])
                drawn.add(key)
    for ax, (key, name) in zip(axes.flat, panels):
        ax.set(title=name, xlabel="epoch")
        if key not in drawn:
            ax.text(0.5, 0.5, "not measured in these runs\n(no hard labels under mixup/cutmix)", ha="center",
                    va="center", transform=ax.transAxes, color="gray")
    if "top1" in drawn:
        axes.flat[1].legend(fontsize=7)
    fig.suptitle(f"Sweep{': ' + title if title else ''} ({len(rows)} cells), plotted {time.strftime('%Y-%m-%d %H:%M')}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_sweep(base: TrainConfig, grid: dict[str, list], out: str | Path,
              calibration: str | Path | None = None) -> list[dict]:
    out = Path(out)
    eff = Efficiency.load(calibration) if calibration else None
    planned = plan(base, grid, out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (cell, cfg) in enumerate(planned, start=1):
        print(f"sweep: cell {n}/{len(planned)} {cell_name(cell)}", flush=True)
        summary, status = _train(cfg)
        row = cell_row(cell, cfg, summary, status, eff)
        if row["predicted_epoch_s"] is None:
            print(f"sweep: {cell_name(cell)}: {row['predicted_on']}", flush=True)
        rows.append({"cell": cell_name(cell), **row})
        write_csv(out / "sweep.csv", grid, rows)  # after every cell: progress is visible
    axes = ", ".join(f"{k} in {v}" for k, v in grid.items())
    plot(out / "sweep.png", rows, f"{axes}; {base.model} on {Path(base.data).name}, {base.device}")
    return rows
