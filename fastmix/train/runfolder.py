"""A run folder is not lost by accident: a new run into a folder that holds one is refused unless
the caller resumes it or asks to overwrite it, and overwriting removes only the trainer's own files.
A resume with other settings than the run was saved with lists the differences and is refused
unless the caller allows them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from . import checkpoint

# every file the trainer writes into its folder (runlog.py, Trainer._save, Trainer._write_config)
TRAINER_FILES = ("last.pt", "best.pt", "last.tmp", "best.tmp", "epochs.csv", "steps.jsonl", "curves.png",
                 "config.yaml", "summary.json")
# settings that do not change what is computed: free to differ on resume (the loaders' draws
# depend on (seed, epoch, index), not on the worker count)
FREE_ON_RESUME = ("out", "workers", "log_every")


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
    return removed


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


def budget_chose_epochs(saved: dict, config: dict) -> bool:
    """The saved run had the same time budget, which chose its epochs (at most the recipe's): a
    resume keeps them rather than measuring again and changing the schedule mid-run."""
    return bool(config.get("time_budget_min")) and saved.get("time_budget_min") == config["time_budget_min"] \
        and saved.get("epochs", 0) <= config["epochs"]


def read_resume(path: Path, config: dict, allow_changes: bool) -> dict:
    """The checkpoint to resume from, once its settings are checked against `config`."""
    state = checkpoint.load(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path}: not a fastmix checkpoint (no config)")
    if budget_chose_epochs(state["config"], config):
        config = {**config, "epochs": state["config"]["epochs"]}
    changed = check_resume(path, state["config"], config, allow_changes)
    if changed:
        warnings.warn(f"resuming {path} with other settings: {'; '.join(changed)}", stacklevel=3)
    return state
