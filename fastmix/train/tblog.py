"""TensorBoard event files in OUT/tensorboard (`tensorboard --logdir runs` shows every run).

Per update (every `log_every`): `update/<key>` for each number of the steps.jsonl record. Per
epoch: `epoch/<column>` for each number of the epochs.csv row. The config as text (`config`).
Every scalar's step is the optimizer update count, epoch scalars included, so a resume can
purge what a killed run wrote past its checkpoint (SummaryWriter's purge_step: TensorBoard drops
every event at or after that step, of every tag, as it reads) and the two kinds share an x axis.
`tensorboard: false` in the config writes none.
"""
from __future__ import annotations

import math
from pathlib import Path

FOLDER = "tensorboard"


def numbers(record: dict) -> dict:
    """The record's finite numbers as floats (None, strings and NaN have no point on a curve)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class EventLog:
    def __init__(self, out: Path, resume_update: int | None):
        """`resume_update`: the update count of the checkpoint resumed (events past it are dropped), or None."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the extra left out of the install
            raise ValueError(f"tensorboard: true needs the tensorboard package ({e}); install fastmix[tensorboard] "
                             "or set tensorboard: false") from None
        # the checkpoint's last update and its epoch row are at step resume_update: they stay
        purge = None if resume_update is None else resume_update + 1
        self.writer = SummaryWriter(str(Path(out) / FOLDER), purge_step=purge, flush_secs=30)

    def config(self, text: str) -> None:
        self.writer.add_text("config", "```\n" + text + "\n```")  # markdown: keep the YAML's layout

    def update(self, record: dict) -> None:
        step = int(record["update"])
        for key, value in numbers(record).items():
            if key not in ("update", "epoch"):
                self.writer.add_scalar(f"update/{key}", value, step)

    def epoch(self, row: dict, update: int) -> None:
        for key, value in numbers(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, update)
        self.writer.flush()  # an epoch's curves are on disk with its checkpoint

    def close(self) -> None:
        self.writer.close()
