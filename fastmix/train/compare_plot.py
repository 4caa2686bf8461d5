"""The PNG of tools/compare.py: the runs' curves against epochs (left) and wall-clock (middle), their
speed per epoch (right); one colour and marker per run, named by its label in one legend.

A PNG it writes carries its name in the file's metadata, so a rerun replaces its own picture but
never a file it did not write (unless told to overwrite)."""
from __future__ import annotations

import time
from pathlib import Path

from .compare import CompareError, Run, setting_text, differing

SOFTWARE = "fastmix tools/compare.py"
MARKERS = "osD^v<>ph*"


def written_by_compare(path: Path) -> bool:
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.info.get("Software") == SOFTWARE
    except OSError:
        return False


def check_out(path: Path, overwrite: bool) -> None:
    """Before any reading: a path that holds another file is refused unless `overwrite`."""
    if path.suffix.lower() != ".png":
        raise CompareError(f"--out {path}: the picture is a PNG; give a path ending in .png")
    if path.is_dir():
        raise CompareError(f"--out {path}: is a folder; give a .png file path")
    if path.exists() and not overwrite and not written_by_compare(path):
        raise CompareError(f"--out {path}: exists and was not written by tools/compare.py; "
                           "pass --overwrite to replace it, or choose another --out")
    if not path.parent.is_dir():
        raise CompareError(f"--out {path}: folder {path.parent} does not exist")


def _series(run: Run, x: str, y: str, scale: float = 1.0) -> tuple[list, list]:
    points = [(r[x], r[y] * scale) for r in run.rows if r[x] is not None and r[y] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def legend_label(run: Run, diff: list[str], width: int = 70) -> str:
    """`runB: lr 0.01, epochs 3`: the run's label and its settings that differ, cut at `width`."""
    text = ", ".join(f"{k} {setting_text(run.settings[k])}" for k in diff if k in run.settings)
    text = f"{run.label}: {text}" if text else run.label
    return text if len(text) <= width else text[:width - 1] + "…"


def plot(runs: list[Run], target: float | None, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    walls = [r["wall_s"] for run in runs for r in run.rows if r["wall_s"] is not None]
    minutes = bool(walls) and max(walls) >= 120  # seconds for short runs, where minutes would all read 0.x
    unit, per = ("minutes", 60.0) if minutes else ("seconds", 1.0)
    panels = [  # (row, col, x, y, y scale, title, y label)
        (0, 0, "epoch", "top1", 1, "val top-1 by epoch", "val top-1 (%)"),
        (0, 1, "wall_s", "top1", 1, "val top-1 by wall-clock", "val top-1 (%)"),
        (0, 2, "epoch", "images_per_s", 1, "training speed by epoch", "train images/s"),
        (1, 0, "epoch", "train_loss", 1, "train loss by epoch", "train loss"),
        (1, 1, "wall_s", "train_loss", 1, "train loss by wall-clock", "train loss"),
        (1, 2, "epoch", "data_wait_share", 100, "time waiting for data by epoch", "data wait (% of update time)"),
    ]
    diff = differing(runs)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, col, x, y, scale, name, ylabel in panels:
        ax = axes[row][col]
        drawn = False
        for i, run in enumerate(runs):
            xs, ys = _series(run, x, y, scale)
            if x == "wall_s":
                xs = [v / per for v in xs]
            if ys:
                ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], ms=5, color=colors[i % len(colors)],
                        label=legend_label(run, diff), alpha=0.85)
                drawn = True
        if y == "top1" and target is not None and drawn:
            ax.axhline(target, color="gray", ls=":", lw=1)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
        xlabel = "epoch (or evaluation)" if x == "epoch" else f"wall-clock {unit} since the run started"
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if target is not None and handles:
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], color="gray", ls=":"))
        labels.append(f"target top-1 {target:g} %")
    # as many columns as the longest entry leaves room for across the figure (~200 characters)
    columns = max(1, min(3, len(labels), 200 // (max(map(len, labels), default=1) + 8)))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=10,
                   title="run (and its settings that differ)" if diff else "run", frameon=False)
    rows_of_legend = -(-len(labels) // columns) if handles else 0
    fig.suptitle(f"{title}\nplotted {time.strftime('%Y-%m-%d %H:%M')}", fontsize=12)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * rows_of_legend, 1, 1))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=90, format="png", metadata={"Software": SOFTWARE})
    plt.close(fig)
    tmp.replace(path)
