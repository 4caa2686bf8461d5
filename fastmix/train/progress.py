"""Progress inside an epoch, on a terminal or in a log.

On a terminal (stdout and stderr both ttys) a tqdm bar on stderr, redrawn in place. Anywhere else
(`> log.txt`, a pipe, `nohup.out`, a notebook's saved output, CI) a bar writes nothing readable,
so one plain line goes to stdout after an epoch's first update, every `log_every` updates, and
whenever `progress_every_s` seconds pass without one (ETA: the epoch's remaining time):

    epoch 2/8  update 120/781  loss 3.912  lr 4.10e-03  221 img/s  wait 1.3 %  ETA 2:36

The same fields in both (the bar adds its own count and times); never both at once. Only rank 0
shows anything.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def clock(seconds: float) -> str:
    """1:02:03, or 2:03 under an hour."""
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fields(loss: float | None, lr: float, images_per_s: float, wait_share: float | None) -> dict:
    """What the bar's postfix and the line both show."""
    return {"loss": "nan" if loss is None else f"{loss:.3f}", "lr": f"{lr:.2e}", "img/s": f"{images_per_s:.0f}",
            "wait": "n/a" if wait_share is None else f"{100 * wait_share:.1f} %"}


class Progress:
    def __init__(self, epoch: int, epochs: int, total: int, enabled: bool, every_s: float,
                 terminal: bool | None = None):
        """`epoch` counts from 0 (shown from 1); `total` updates in the epoch; `every_s`: the
        longest silence off a terminal. `terminal` None: stdout (where the lines and the epoch
        lines go) and stderr (tqdm's stream) are both ttys."""
        self.epoch, self.epochs, self.total, self.every_s = epoch, epochs, total, every_s
        self.enabled = enabled
        terminal = sys.stdout.isatty() and sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                        mininterval=2) if enabled and terminal else None
        self.start = self.last_line = time.perf_counter()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def overdue(self) -> bool:
        """Off a terminal, `every_s` have passed since the last line: the trainer reads its
        statistics (a host sync) to write one, however far the next `log_every` is."""
        return self.enabled and self.bar is None and time.perf_counter() - self.last_line >= self.every_s

    def show(self, done: int, values: dict, line: bool) -> None:
        """`done` updates of `total`; `values` from fields(); `line`: off a terminal, write one."""
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)
        elif self.enabled and line:
            now = time.perf_counter()
            eta = (now - self.start) / done * (self.total - done) if done else 0.0
            print(format_line(self.epoch, self.epochs, done, self.total, values, eta), flush=True)
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_line(epoch: int, epochs: int, done: int, total: int, values: dict, eta_s: float) -> str:
    return (f"epoch {epoch + 1}/{epochs}  update {done}/{total}  loss {values['loss']}  lr {values['lr']}  "
            f"{values['img/s']} img/s  wait {values['wait']}  ETA {clock(eta_s)}")
