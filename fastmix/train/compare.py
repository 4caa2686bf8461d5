"""Several runs side by side: read run folders, sweep cells and bench.tta results into one shape,
name each by a short distinct label, and say in one table how they did and which settings differ.

    runs = load_runs(["runs/a", "runs/sweep-lr", "bench/results/tta"])
    print(table(runs, target_top1(runs)))

A run folder is what the trainer writes (runlog.py): epochs.csv (one row per finished epoch, read
while the run is still going), config.yaml (its settings, from the start) and summary.json (at the
end). A sweep folder (fastmix/perf/sweep.py) holds one run folder per cell under cells/. A bench.tta
folder holds tta.json, one entry per loader backend with its evaluations. compare_plot.py draws them.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from fastmix import safeyaml
from fastmix.model.convmixer import VARIANTS

RUN_FILES = ("epochs.csv", "summary.json", "config.yaml")
# the columns compare reads from each epoch; anything else in epochs.csv is ignored
NUMBERS = ("epoch", "train_loss", "top1", "top5", "images_per_s", "mfu", "data_wait_share", "loader_slowdown",
           "epoch_time_s", "wall_s")
# resolved facts of a run (config.yaml / summary.json top level) that decide its speed: shown like settings
FACTS = ("device", "precision", "channels_last", "world_size")


class CompareError(ValueError):
    """One line naming the path and what is wrong with it."""


@dataclass
class Run:
    path: Path                 # the run folder (for a tta backend: the tta folder)
    parts: list[str]           # path components naming it, most specific last; labels are suffixes of it
    rows: list[dict]           # per evaluation: NUMBERS as float or None; wall_s counts across resumes
    settings: dict = field(default_factory=dict)  # flat key -> value
    label: str = ""


# -- reading ------------------------------------------------------------------------------------
def _number(value, where: str):
    if value in ("", None):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CompareError(f"{where}: {value!r} is not a number") from None
    return number if math.isfinite(number) else None


def _rows(raw: list[dict], where: str) -> list[dict]:
    """The numbers compare uses; wall_s restarts at 0 when a run is resumed (trainer.fit times its
    own call), so each restart is put after the time already spent: a clock over the whole run."""
    rows, offset, last = [], 0.0, 0.0
    for n, r in enumerate(raw, start=1):
        row = {k: _number(r.get(k), f"{where}: row {n}, {k}") for k in NUMBERS}
        if row["top1"] is None:
            raise CompareError(f"{where}: row {n} has no top1")
        if row["wall_s"] is not None:
            if row["wall_s"] + offset < last:
                offset = last
            row["wall_s"] += offset
            last = row["wall_s"]
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CompareError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a JSON object")
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = safeyaml.load(path)  # nothing in the file runs, no aliases (fastmix/safeyaml.py)
    except safeyaml.YAMLRefused as e:  # names the file already
        raise CompareError(str(e)) from None
    except OSError as e:
        raise CompareError(f"{path}: not readable YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a mapping")
    return data


def flat_settings(config: dict) -> dict:
    """A TrainConfig dict as flat key -> value: the model's own fields (the variant's, then its
    overrides) as dim, depth, kernel, patch, act; other mappings as key.sub; `out` left out (every
    run has its own)."""
    flat = {}
    for key, value in config.items():
        if key in ("out", "model_overrides"):
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    overrides = config.get("model_overrides") or {}
    base = VARIANTS.get(config.get("model"))
    flat.update({**(base.__dict__ if base else {}), **overrides})
    return flat


def read_run(folder: Path, parts: list[str]) -> Run:
    """A trainer's run folder, finished or still running."""
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
    info = summary or (_read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {})
    if (folder / "epochs.csv").is_file():
        try:
            with (folder / "epochs.csv").open(newline="") as f:
                raw, where = list(csv.DictReader(f)), folder / "epochs.csv"
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise CompareError(f"{folder / 'epochs.csv'}: not readable CSV ({e})") from None
    else:
        raw, where = summary.get("epochs") or [], folder / "summary.json"
    if not isinstance(info.get("config", {}), dict):
        raise CompareError(f"{folder}: its config is not a mapping")
    settings = flat_settings(info.get("config") or {})
    settings.update({k: info[k] for k in FACTS if info.get(k) is not None})
    if info.get("host_cpu"):
        settings["host"] = info["host_cpu"]
    return Run(folder, parts, _rows(raw, str(where)), settings)


def read_sweep(folder: Path, parts: list[str]) -> list[Run]:
    """Each cell of a sweep, in sweep.csv's order, then any cell not in it yet (the one training)."""
    cells = folder / "cells"
    order = []
    if (folder / "sweep.csv").is_file():
        with (folder / "sweep.csv").open(newline="") as f:
            order = [r["cell"] for r in csv.DictReader(f) if r.get("cell")]
    present = sorted(p.name for p in cells.iterdir() if p.is_dir()) if cells.is_dir() else []
    names = [n for n in order if n in present] + [n for n in present if n not in order]
    if not names:
        raise CompareError(f"{folder}: a sweep folder with no cell in {cells} yet")
    return [read_run(cells / n, [*parts, n]) for n in names]


def read_tta(folder: Path, parts: list[str]) -> list[Run]:
    """Each backend bench.tta finished; wall_s there already counts from before the loader's start-up."""
    result = _read_json(folder / "tta.json")
    try:
        backends, s = result["backends"], result["settings"]
        common = {**{k: v for k, v in s.items() if k not in ("set", "target_top1")}, **(s.get("set") or {})}
        runs = []
        for name, r in backends.items():
            if r.get("status") != "done" or not r.get("periods"):
                continue
            settings = {**common, **flat_settings({"model": r.get("model"), "model_overrides": r.get("model_overrides"),
                                                   "batch_size": r.get("batch_size")}),
                        "backend": name, "precision": r.get("precision"), "threads": r.get("threads")}
            runs.append(Run(folder, [*parts, name], _rows(r["periods"], f"{folder / 'tta.json'}: {name}"), settings))
    except (KeyError, TypeError, AttributeError) as e:
        raise CompareError(f"{folder / 'tta.json'}: not a bench.tta result (missing {e})") from None
    if not runs:
        raise CompareError(f"{folder / 'tta.json'}: no backend finished")
    return runs


def read_any(path: str | Path) -> list[Run]:
    """A run folder, a sweep folder, a bench.tta folder (or a file in one), or a folder whose
    subfolders are run folders -> its runs."""
    given = Path(path)
    if not given.exists():
        raise CompareError(f"{given}: no such file or folder")
    folder = given.resolve()
    if folder.is_file():
        if folder.name not in (*RUN_FILES, "tta.json", "sweep.csv"):
            raise CompareError(f"{given}: not a run folder (give the folder that holds epochs.csv, "
                               "a sweep's folder or a bench.tta folder)")
        folder = folder.parent
    parts = list(folder.parts[1:]) or [str(folder)]
    if (folder / "tta.json").is_file():
        return read_tta(folder, parts)
    if (folder / "sweep.csv").is_file() or (folder / "cells").is_dir():
        return read_sweep(folder, parts)
    if any((folder / n).is_file() for n in RUN_FILES):
        return [read_run(folder, parts)]
    # tools/train.py without --out: runs/<recipe>-<model>/<start time>/, one run per start
    inside = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                    and any((p / n).is_file() for n in RUN_FILES))
    if inside:
        return [read_run(p, [*parts, p.name]) for p in inside]
    raise CompareError(f"{given}: not a run folder (no epochs.csv, summary.json or config.yaml), nor a "
                       "folder of run folders, a sweep (sweep.csv) or a bench.tta (tta.json) folder")


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every run under `paths`, each once (runs/latest and the folder it points at are one run),
    each with a label: the shortest tail of its path that no other run shares."""
    runs, seen = [], set()
    for path in paths:
        for run in read_any(path):
            key = (run.path, tuple(run.parts))
            if key not in seen:
                seen.add(key)
                runs.append(run)
    depth = [1] * len(runs)
    while True:
        labels = ["/".join(r.parts[-d:]) for r, d in zip(runs, depth)]
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(runs[i].parts)]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    for run, label in zip(runs, labels):
        run.label = label
    return runs


# -- what differs, and the table ---------------------------------------------------------------
def _plain(value):
    return json.dumps(value, sort_keys=True, default=str)


def differing(runs: list[Run]) -> list[str]:
    """Settings whose values are not all the same among the runs that record them."""
    keys = []
    for run in runs:
        keys += [k for k in run.settings if k not in keys]
    return [k for k in keys if len({_plain(r.settings[k]) for r in runs if k in r.settings}) > 1]


def target_top1(runs: list[Run], given: float | None = None) -> float | None:
    """`given`, else the best top-1 every run with an evaluation reached, rounded down to a whole
    percent (as bench.tta does): the highest bar all of them cleared."""
    if given is not None:
        return given
    bests = [max(r["top1"] for r in run.rows) for run in runs if run.rows]
    if not bests:
        return None
    step = 1.0 if min(bests) >= 1 else 0.1  # below 1 %, a whole percent would be a target of 0
    return round(math.floor(min(bests) / step) * step, 1)


def time_to(run: Run, target: float | None) -> float | None:
    """Wall seconds at the first evaluation with top-1 >= target (None: not reached or not timed)."""
    if target is None:
        return None
    return next((r["wall_s"] for r in run.rows if r["top1"] >= target), None)


def steady(run: Run, key: str) -> float | None:
    """The median over the epochs after the first (which pays start-up and compilation), or the
    only epoch's value."""
    values = [r[key] for r in (run.rows[1:] or run.rows) if r[key] is not None]
    return statistics.median(values) if values else None


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pct(share: float | None) -> str:
    if share is None:
        return "n/a"
    return f"{100 * share:.0f} %" if abs(share) >= 0.1 else f"{100 * share:.1f} %"


def setting_text(value) -> str:
    return _plain(value) if isinstance(value, (dict, list)) else str(value)


def table(runs: list[Run], target: float | None) -> str:
    """A markdown table: one row per run, the results then every setting that differs."""
    diff = differing(runs)
    reach = f"time to {target:g} %" if target is not None else "time to target"
    head = ["run", "epochs done", "final top-1", "best top-1", reach, "img/s", "MFU", "loader cost", "wall", *diff]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 8 + "---|" * len(diff)]
    for run in runs:
        rows = run.rows
        if rows:
            best = max(rows, key=lambda r: r["top1"])
            reached = time_to(run, target)
            rate = steady(run, "images_per_s")
            cells = [f"{len(rows)}", f"{rows[-1]['top1']:.1f} %", f"{best['top1']:.1f} % (epoch {best['epoch']:g})",
                     "not reached" if reached is None and target is not None else _minutes(reached),
                     "n/a" if rate is None else f"{rate:.0f}", _pct(steady(run, "mfu")),
                     _pct(steady(run, "loader_slowdown")), _minutes(rows[-1]["wall_s"])]
        else:
            cells = ["0", "no epoch finished", "", "", "", "", "", ""]
        cells += [setting_text(run.settings[k]).replace("|", "\\|") if k in run.settings else "?" for k in diff]
        lines.append("| " + " | ".join([run.label.replace("|", "\\|"), *cells]) + " |")
    return "\n".join(lines) + "\n"


def notes(runs: list[Run], target: float | None, given: float | None) -> str:
    """What the table's columns mean, in two lines under it."""
    if target is None:
        reach = "no run has finished an evaluation yet"
    elif given is None:
        reach = f"target {target:g} %: the best val top-1 every run reached, rounded down (--target-top1 sets it)"
    else:
        reach = f"target {target:g} % (--target-top1)"
    common = "" if len(runs) > 1 else "; one run, so no setting differs"
    return (f"{reach}.\nimg/s, MFU and loader cost (the update's slowdown against the same update with no "
            f"loader running) are medians over the epochs after the first; wall counts across resumes{common}; "
            "'?' = not recorded by that run.")


def title(runs: list[Run]) -> str:
    """`2 runs: convmixer_256_8 (dim 16, depth 2, kernel 3, patch 4) on demo, cpu, fp32`: what
    every run shares; the rest is in the legend and the table."""
    def shared(key):
        values = {_plain(r.settings.get(key)) for r in runs}
        return runs[0].settings.get(key) if len(values) == 1 and runs and key in runs[0].settings else None
    model = shared("model")
    shape = ", ".join(f"{k} {shared(k)}" for k in ("dim", "depth", "kernel", "patch") if shared(k) is not None)
    words = [f"{model}{f' ({shape})' if shape else ''}" if model else shape]
    if shared("data"):
        words.append(f"on {Path(str(shared('data'))).name}")
    words += [str(shared(k)) for k in ("device", "precision") if shared(k)]
    common = " ".join(w for w in words[:2] if w) + "".join(f", {w}" for w in words[2:])
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} compared" + (f": {common}" if common.strip() else "")
