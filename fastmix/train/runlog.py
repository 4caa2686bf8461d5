"""A run's records: per-epoch CSV, per-step JSONL, a PNG of the curves, a summary JSON, and one
console line per epoch (plain print: it reaches a log file or a pipe as well as a terminal).

Epochs count from 1 everywhere: the CSV, the console and curves.png. Only rank 0 writes. On
--resume the CSV and steps.jsonl keep the epochs already done and drop what an epoch that was
interrupted before its checkpoint wrote (its steps, or its row written just before the kill), so
the resumed run's records hold each epoch once. The CSV's floats are rounded (ROUNDING) to what a
reader can use; steps.jsonl and summary.json keep full precision.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

EPOCH_FIELDS = ["epoch", "train_loss", "train_top1", "eval_loss", "top1", "top5", "ema_top1", "lr", "images_per_s",
                "mfu", "data_wait_share", "loader_free_images_per_s", "loader_slowdown", "epoch_time_s", "wall_s",
                "image_size", "nonfinite_skipped", "scaler_skipped"]

# measured times and rates: they differ between two runs that train exactly the same way
TIMING_FIELDS = ("images_per_s", "mfu", "data_wait_share", "loader_free_images_per_s", "loader_slowdown",
                 "epoch_time_s", "wall_s")

# decimals kept in epochs.csv: accuracies in % to 0.01 (one image in 10,000), losses to 1e-4,
# shares (mfu, wait, loader cost) to 0.01 %, rates to 0.1 img/s, times to 0.01 s; lr: 4 significant
ROUNDING = {"train_loss": 4, "eval_loss": 4, "train_top1": 2, "top1": 2, "top5": 2, "ema_top1": 2,
            "images_per_s": 1, "loader_free_images_per_s": 1, "mfu": 4, "data_wait_share": 4,
            "loader_slowdown": 4, "epoch_time_s": 2, "wall_s": 2}


def csv_value(key: str, value):
    """A row's value as epochs.csv stores it ("" for a missing one)."""
    if value is None:
        return ""
    if isinstance(value, float) and key in ROUNDING:
        return round(value, ROUNDING[key])
    if isinstance(value, float) and key == "lr":
        return float(f"{value:.4g}")
    return value


def model_title(config) -> str:
    """"ConvMixer-64/3 k9 p7 GELU": the model that ran (a ConvMixerConfig or its dict)."""
    c = config if isinstance(config, dict) else vars(config)
    return f"ConvMixer-{c['dim']}/{c['depth']} k{c['kernel']} p{c['patch']} {c.get('act', 'gelu').upper()}"


def epoch_line(row: dict, epochs: int) -> str:
    """`epoch 3/30  loss 4.11  val top-1 27.9 %  top-5 69.7 %  282 img/s  MFU 31 %  wait 0.2 %
    loader cost 3 % of 290 img/s  88 s  (12.1 min)`: what a person watching needs, in one line."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.3f}",
             f"val top-1 {row['top1']:.1f} %", f"top-5 {row['top5']:.1f} %"]
    if row.get("ema_top1") is not None:
        parts.append(f"EMA top-1 {row['ema_top1']:.1f} %")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.0f} %")
    parts.append(f"wait {100 * row['data_wait_share']:.1f} %")
    if row.get("loader_free_images_per_s") is not None:  # loadercost.py: the waits and what no wait share shows
        from .loadercost import describe  # a figure noise swamps is said as noise, not printed
        parts.append(f"loader cost {describe(row.get('loader_slowdown'), row.get('loader_cost_noise'))} of "
                     f"{row['loader_free_images_per_s']:.0f} img/s")
    parts.append(f"{row['epoch_time_s']:.0f} s")
    if row.get("wall_s") is not None:
        parts.append(f"({row['wall_s'] / 60:.1f} min)")
    return "  ".join(parts)


def final_summary(summary: dict, out: str) -> str:
    """The end of a run in a few lines (the whole record is OUT/summary.json)."""
    rows = summary.get("epochs") or []
    if not rows:
        return f"done: {out}  (no epoch finished)"
    last = rows[-1]
    best = max(rows, key=lambda r: float(r["top1"]))

    def num(row, key, scale=1.0, fmt=".0f"):
        value = row.get(key)
        return "n/a" if value in ("", None) else format(float(value) * scale, fmt)
    lines = [f"done: {out}",
             f"  best val top-1 {float(best['top1']):.2f} % (epoch {best['epoch']}); last epoch {last['epoch']}: "
             f"top-1 {float(last['top1']):.2f} %, top-5 {float(last['top5']):.2f} %",
             f"  last epoch: {num(last, 'images_per_s')} img/s, MFU {num(last, 'mfu', 100)} %, "
             f"data wait {num(last, 'data_wait_share', 100, '.1f')} %, "
             f"loader cost {loader_cost(last)}",
             f"  {len(rows)} epochs, {num(last, 'wall_s', 1 / 60, '.1f')} min; files: epochs.csv, curves.png, "
             "summary.json, best.pt, last.pt"]
    return "\n".join(lines)


def steps_until(path: Path, epoch: int) -> list[str]:
    """steps.jsonl's lines of epochs <= `epoch` (from 1): an interrupted epoch's lines go, and a
    line cut short by a kill (not JSON) with them."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= epoch:
            kept.append(line + "\n")
    return kept


def loader_cost(row: dict) -> str:
    """An epochs.csv row's loader cost (loadercost.describe); empty: not measured, or noise swamped it."""
    from .loadercost import describe
    value = row.get("loader_slowdown")
    return "n/a (not measured, or within timing noise)" if value in ("", None) else describe(float(value))


class RunLog:
    def __init__(self, out: Path, enabled: bool, resume_epoch: int = 0, title: str = "",
                 tensorboard: bool = False, resume_update: int = 0):
        """`resume_epoch`: epochs finished by the checkpoint resumed (0: a new run), whose update
        count is `resume_update`; `tensorboard`: also write event files (tblog.py)."""
        self.out, self.enabled, self.title = Path(out), enabled, title
        self.csv, self.jsonl = self.out / "epochs.csv", self.out / "steps.jsonl"
        self.events = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rows = self.rows() if resume_epoch else []
        rows = [r for r in rows if int(r["epoch"]) <= resume_epoch]  # epochs count from 1
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, EPOCH_FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.jsonl.write_text("".join(steps_until(self.jsonl, resume_epoch)))
        if tensorboard:
            from .tblog import EventLog
            self.events = EventLog(self.out, resume_update if resume_epoch else None)

    def config(self, info: dict) -> None:
        """The run's config.yaml, as TensorBoard text."""
        if self.events is not None:
            import yaml
            self.events.config(yaml.safe_dump(info, sort_keys=False))

    def rows(self) -> list[dict]:
        if not self.csv.is_file():
            return []
        with self.csv.open() as f:
            return list(csv.DictReader(f))

    def step(self, record: dict) -> None:
        if self.enabled:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.events is not None:
                self.events.update(record)

    def epoch(self, row: dict, epochs: int, update: int = 0) -> None:
        """`update`: the update count at the epoch's end (TensorBoard's step)."""
        if not self.enabled:
            return
        print(epoch_line(row, epochs), flush=True)
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, EPOCH_FIELDS).writerow({k: csv_value(k, row.get(k)) for k in EPOCH_FIELDS})
        if self.events is not None:
            self.events.epoch({k: row[k] for k in EPOCH_FIELDS if k in row}, update)
        self.plot()

    def summary(self, record: dict) -> None:
        if self.enabled:
            (self.out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
        if self.events is not None:
            self.events.close()
            self.events = None

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.rows()
        epochs = [int(r["epoch"]) for r in rows]

        def col(name):
            return [float(r[name]) if r[name] not in ("", None) else float("nan") for r in rows]

        fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
        ax[0].plot(epochs, col("train_loss"), "o-", label="train")
        ax[0].plot(epochs, col("eval_loss"), "o-", label="eval")
        ax[0].set(title="loss", xlabel="epoch")
        ax[1].plot(epochs, col("top1"), "o-", label="top-1")
        ax[1].plot(epochs, col("top5"), "o-", label="top-5")
        if any(r.get("train_top1") for r in rows):  # empty under mixup/cutmix
            ax[1].plot(epochs, col("train_top1"), "o--", label="train top-1")
        ax[1].set(title="accuracy (%)", xlabel="epoch")
        ax[2].plot(epochs, col("images_per_s"), "o-")
        ax[2].set(title="train images/s", xlabel="epoch")
        from matplotlib.ticker import MaxNLocator
        for a in ax:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        for a in ax[:2]:
            a.legend()
        import time
        fig.suptitle(f"{self.title or self.out.name}: per epoch, plotted {time.strftime('%Y-%m-%d %H:%M')}")
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=90)
        plt.close(fig)
