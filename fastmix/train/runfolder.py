"""A run folder is not lost by accident: a new run into a folder that holds one is refused unless
the caller resumes it or asks to overwrite it, and overwriting removes only the trainer's own files.
A resume with other settings than the run was saved with lists the differences and is refused
unless the caller allows them.

Without --out, tools/train.py gives each run a folder of its own, BASE/<start time> under the
recipe's and model's BASE (new_run), points RUNS/latest at it (point_latest), and --resume
continues the newest run under BASE that holds a checkpoint (latest_run)."""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path

from . import checkpoint

# every file the trainer writes into its folder (runlog.py, Trainer._save, Trainer._write_config)
TRAINER_FILES = ("last.pt", "best.pt", "last.tmp", "best.tmp", "epochs.csv", "steps.jsonl", "curves.png",
                 "config.yaml", "summary.json")
# settings that do not change what is computed: free to differ on resume (the loaders' draws
# depend on (seed, epoch, index), not on the worker count)
FREE_ON_RESUME = ("out", "workers", "log_every", "progress_every_s", "tensorboard")
EVENT_FILES = "tensorboard/events.out.tfevents.*"  # tblog.py
STAMP = "%Y%m%d-%H%M%S"  # a run folder's name: its start time, sortable
LATEST_NOTE = "fastmix latest run: "  # runs/latest as a file, where symlinks fail


class RunFolderError(ValueError):
    """One line naming the folder and what to do."""


def run_files(out: Path) -> list[str]:
    """The files that show `out` holds a run: a checkpoint, or an epoch log with a finished epoch
    (a run stopped inside its first epoch leaves only a header, nothing to lose)."""
    out = Path(out)
    found = [n for n in ("last.pt", "best.pt") if (out / n).is_file()]
    csv = out / "epochs.csv"
    if csv.is_file() and len(csv.read_text().splitlines()) > 1:
        found.append("epochs.csv")
    return found


def check(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a new run into a folder that holds one, unless `overwrite`; before any work."""
    if resume and overwrite:
        raise RunFolderError(f"{out}: --resume continues the run and --overwrite replaces it; give one")
    found = run_files(out)
    if found and not resume and not overwrite:
        raise RunFolderError(f"{out}: holds a run ({', '.join(found)}); pass --resume to continue it "
                             "or --overwrite to replace it, or choose another --out")


def clear(out: Path) -> list[str]:
    """Remove the trainer's own files from `out` (nothing else in it); return their names."""
    removed = []
    for name in TRAINER_FILES:
        path = Path(out) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    for path in sorted(Path(out).glob(EVENT_FILES)):
        path.unlink()
        removed.append(str(path.relative_to(out)))
    with contextlib.suppress(OSError):
        (Path(out) / "tensorboard").rmdir()  # only if nothing else is in it
    return removed


def new_run(base: Path, now: float | None = None) -> Path:
    """BASE/<start time>, created here (a second run in the same second gets -2, -3, ...): two
    runs never share a folder."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime(STAMP, time.localtime(now))
    for k in range(1, 1000):
        path = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunFolderError(f"{base}: 999 runs started at {stamp}; choose an --out")


def latest_run(base: Path) -> Path | None:
    """The newest run under BASE with a checkpoint (names are start times, so they sort), else
    BASE itself where an older fastmix trained into it directly, else None."""
    base = Path(base)
    runs = [p for p in base.iterdir() if p.is_dir() and (p / "last.pt").is_file()] if base.is_dir() else []
    if runs:  # 20261204-093015 < 20261204-093015-2 < 20261204-093015-10
        return max(runs, key=lambda p: (p.name[:15], int(p.name[16:]) if p.name[16:].isdigit() else 1))
    return base if (base / "last.pt").is_file() else None


def point_latest(link: Path, run: Path) -> str | None:
    """Point `link` (runs/latest) at `run`: a relative symlink, or a one-line file where symlinks
    fail. Something else already there is left alone; the reason is returned (else None)."""
    link = Path(link)
    ours = link.is_symlink() or (link.is_file() and link.read_text().startswith(LATEST_NOTE))
    if link.exists() and not ours:
        return f"{link} exists and is not fastmix's link; left as it is"
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    target = os.path.relpath(Path(run).resolve(), link.parent.resolve())
    try:
        os.symlink(target, tmp, target_is_directory=True)
    except OSError:
        tmp.write_text(f"{LATEST_NOTE}{target}\n")
    os.replace(tmp, link)
    return None


def read_latest(link: Path) -> Path | None:
    """The run `link` points at (symlink or file), or None."""
    link = Path(link)
    if link.is_symlink():
        return link.parent / os.readlink(link)
    if link.is_file() and link.read_text().startswith(LATEST_NOTE):
        return link.parent / link.read_text()[len(LATEST_NOTE):].strip()
    return None


def changes(saved: dict, now: dict) -> list[str]:
    """'key: saved -> now' for every setting that differs (FREE_ON_RESUME aside)."""
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))  # tuples as lists
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now
            if k in saved and k not in FREE_ON_RESUME and saved[k] != now[k]]


def check_resume(path: Path, saved: dict, now: dict, allow_changes: bool) -> list[str]:
    """The differences between the checkpoint's settings and these; refused unless allowed."""
    diff = changes(saved, now)
    if diff and not allow_changes:
        raise RunFolderError(f"{path} was saved with other settings ({'; '.join(diff)}); resume with the "
                             "same settings, or pass --allow-changes to continue with the new ones")
    return diff


def budget_chose_epochs(saved: dict, config: dict, record: dict | None = None) -> bool:
    """The saved run had the same time budget, which chose its epochs out of the same most epochs
    (`record`'s most_epochs; in a record without it: at most the epochs asked now): a resume keeps
    them rather than measuring again and changing the schedule mid-run. Other epochs asked now are
    a change like any other (listed, applied with --allow-changes), not silently replaced."""
    if not config.get("time_budget_min") or saved.get("time_budget_min") != config["time_budget_min"]:
        return False
    most = (record or {}).get("most_epochs")
    return config["epochs"] == most if most is not None else saved.get("epochs", 0) <= config["epochs"]


def read_resume(path: Path, config: dict, allow_changes: bool) -> dict:
    """The checkpoint to resume from, once its settings are checked against `config`."""
    state = checkpoint.load(path)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path}: not a fastmix checkpoint (no config)")
    checkpoint.check_resume(state, path)  # every value it holds, as --set values are checked
    if budget_chose_epochs(state["config"], config, state.get("time_budget")):
        config = {**config, "epochs": state["config"]["epochs"]}
    changed = check_resume(path, state["config"], config, allow_changes)
    if changed:
        warnings.warn(f"resuming {path} with other settings: {'; '.join(changed)}", stacklevel=3)
    return state
