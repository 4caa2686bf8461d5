"""A run's records: per-epoch CSV, per-step JSONL, a PNG of the curves, a summary JSON.

Only rank 0 writes. On --resume the CSV keeps the epochs already done and drops any row
from an epoch that was interrupted after its row was written but before its checkpoint.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

EPOCH_FIELDS = ["epoch", "train_loss", "train_top1", "eval_loss", "top1", "top5", "ema_top1", "lr", "images_per_s",
                "mfu", "epoch_time_s", "image_size", "nonfinite_skipped", "scaler_skipped"]


class RunLog:
    def __init__(self, out: Path, enabled: bool, resume_epoch: int = 0):
        self.out, self.enabled = Path(out), enabled
        self.csv, self.jsonl = self.out / "epochs.csv", self.out / "steps.jsonl"
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rows = self.rows() if resume_epoch else []
        rows = [r for r in rows if int(r["epoch"]) < resume_epoch]
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, EPOCH_FIELDS)
            w.writeheader()
            w.writerows(rows)
        if not resume_epoch:
            self.jsonl.write_text("")

    def rows(self) -> list[dict]:
        if not self.csv.is_file():
            return []
        with self.csv.open() as f:
            return list(csv.DictReader(f))

    def step(self, record: dict) -> None:
        if self.enabled:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, EPOCH_FIELDS).writerow({k: row.get(k, "") for k in EPOCH_FIELDS})
        self.plot()

    def summary(self, record: dict) -> None:
        if self.enabled:
            (self.out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.rows()
        epochs = [int(r["epoch"]) + 1 for r in rows]

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
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=90)
        plt.close(fig)
