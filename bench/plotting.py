"""What every benchmark chart says in its title: what was measured, on what, and when.

A result written now carries `measured_at` (UTC date); an older one is dated by the commit that
last changed its JSON, else "date unknown". Colours: one per backend, the same in every chart.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

BACKEND_ORDER = ("pil", "pil-wds", "ffcv", "opencv", "dali", "dali-cpu", "dali-gpu", "nvjpeg", "resident", "synthetic")


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def when(data: dict, path: Path | None) -> str:
    """The date a result was measured: its own `measured_at`, else the last commit of its file."""
    if data.get("measured_at"):
        return str(data["measured_at"])
    if path is not None:
        try:
            out = subprocess.run(["git", "log", "-1", "--format=%ad", "--date=short", "--", Path(path).name],
                                 cwd=Path(path).resolve().parent, capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):  # no git here: say so rather than guess
            pass
    return "date unknown"


def title(what: str, on: str, data: dict, path: Path | None) -> str:
    return f"{what}\n{on}; measured {when(data, path)}"


def backend_colors(names: list[str]) -> dict[str, tuple]:
    """One colour per backend (tab20, in a fixed order so a backend keeps its colour across charts);
    the same backend on other storage (`ffcv@320`) takes its lighter shade. A before-variant
    (`pil:mmap`, `ffcv-fulldecode`) keeps its backend's colour: charts hatch it (is_before)."""
    import matplotlib
    cmap = matplotlib.colormaps["tab20"]
    bases = list(dict.fromkeys([*BACKEND_ORDER, *(base_of(n) for n in names)]))
    colors = {}
    for name in names:
        k = bases.index(base_of(name)) % 10
        colors[name] = cmap(2 * k + (1 if "@" in name else 0))
    return colors


def is_before(name: str) -> bool:
    """A measurement of how a backend was before a change (`:mmap`, `-fulldecode`), not a backend."""
    return ":" in name or name.endswith("-fulldecode")


def base_of(name: str) -> str:
    return name.partition(":")[0].split("@")[0].replace("-fulldecode", "")


def replot(source: Path, plot) -> int:
    """Redraw the PNG beside a result JSON from the JSON alone (`plot(data, png, source)`, which may
    return the path it wrote when that is not JSON's name with .png)."""
    import json
    import sys
    try:
        data = json.loads(Path(source).read_text())
    except (OSError, ValueError) as e:
        print(f"--replot {source}: cannot read it ({e})", file=sys.stderr)
        return 2
    png = Path(source).with_suffix(".png")
    print(f"wrote {plot(data, png, Path(source)) or png}")
    return 0
