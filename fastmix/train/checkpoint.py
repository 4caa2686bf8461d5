"""Checkpoints that resume a run exactly: model, optimizer, scaler, schedule, EMA, epoch, RNG.

Written atomically (a temporary file, then rename) so a kill mid-save leaves the previous
checkpoint intact. RNG states are gathered from every rank, so each resumes its own stream.

Read with `torch.load(weights_only=True)` only: a pickle can run any code it names, and
checkpoints come from elsewhere too. So everything saved is tensors, numbers, strings, lists and
dicts (numpy's RNG state as a tensor). Files from before that held numpy arrays load through an
allowlist of exactly numpy's array-rebuilding globals; anything else is refused unless the
caller trusts the file (tools/evaluate.py --trust-checkpoint).
"""
from __future__ import annotations

import numbers
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch


class BadCheckpoint(ValueError):
    """A checkpoint whose contents cannot be used (one line naming the file and the key)."""


class UnsafeCheckpoint(ValueError):
    """A file that would run code to load (its message is one line naming the file)."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def old_numpy_globals() -> list:
    """What a checkpoint saved before RNG states became tensors needs: numpy arrays rebuilt, no code."""
    return [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]


def load(path: Path, trust: bool = False, missing: str = "no checkpoint to resume from"):
    """The object saved in `path`, read without running code in it (weights_only); `trust=True`
    unpickles fully, the only way to read a file that names other globals."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    if trust:
        return _read(path, weights_only=False)
    with torch.serialization.safe_globals(old_numpy_globals()):
        return _read(path, weights_only=True)


def _read(path: Path, weights_only: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        names = _globals_in(path) if weights_only and isinstance(e, pickle.UnpicklingError) else []
        if names:
            raise UnsafeCheckpoint(f"{path}: refused: loading it would run code it names ({', '.join(names)}); "
                                   "pass --trust-checkpoint only if you trust where it came from") from None
        raise ValueError(f"{path}: not a readable checkpoint (not written by torch.save, or damaged: "
                         f"{type(e).__name__})") from None


def _globals_in(path: Path) -> list[str]:
    """The globals a torch.save file names, read from its pickle opcodes (nothing run)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments and steps, but this optimizer's hyperparameters (lr, weight decay, eps):
    the same ones unless a resume was allowed to change them, and then the new ones count."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, fresh):
        group.update(hyper)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- what a checkpoint holds, checked before any of it is used --------------------------------------
def class_ids(classes: list[dict]) -> list[str]:
    """What a checkpoint records of its data's classes (fastmix.data.manifest.read_classes): the
    class ids (WNIDs), in label order."""
    return [c["wnid"] for c in classes]


def classes_differ(saved, now: list[str]) -> str | None:
    """How the classes a checkpoint was trained on differ from the data's, or None where they are
    the same or the checkpoint recorded none (written before fastmix recorded them)."""
    if saved is None or list(saved) == list(now):
        return None
    moved = [i for i, (a, b) in enumerate(zip(saved, now)) if a != b]
    first = f"label {moved[0]} is {saved[moved[0]]} there and {now[moved[0]]} here" if moved else ""
    if len(saved) != len(now):
        first = f"{len(saved)} classes there, {len(now)} here" + (f"; {first}" if first else "")
    return f"trained on other classes than the data's ({first}; {len(moved)} labels differ)"


def resume_classes(saved: dict | None, class_ids: list[str], path, allow_changes: bool) -> None:
    """A resume continues on the classes it was trained on: other classes of the same count would
    train the head's rows on other meanings. `allow_changes` continues anyway, with a warning."""
    import warnings
    differ = classes_differ(saved.get("classes"), class_ids) if saved is not None else None
    if differ and not allow_changes:
        raise BadCheckpoint(f"{path}: {differ}; pass --allow-changes to continue on these classes anyway")
    if differ:
        warnings.warn(f"resuming {path} on other classes: {differ}", stacklevel=3)


def _kind(value) -> str:
    return repr(value) if isinstance(value, (int, float, str, type(None))) and len(repr(value)) < 40 else type(value).__name__


def _need(path: Path, key: str, value, ok: bool, expected: str):
    if not ok:
        raise BadCheckpoint(f"{path}: {key}: expected {expected}, got {_kind(value) if value is not None else 'none (missing)'}")
    return value


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_weights(state: dict, path: Path) -> dict:
    """What evaluation reads of a fastmix checkpoint: its config (checked as --set values are,
    returned as checked), weights, EMA, epoch and classes."""
    from .recipe import saved_config
    checked = saved_config(state.get("config"), f"{path}: config").to_dict()
    config = {k: v for k, v in checked.items() if k in state["config"]}  # what it holds, no defaults added
    _need(path, "model", state.get("model"), isinstance(state.get("model"), dict), "a state_dict")
    ema = state.get("ema")
    _need(path, "ema", ema, ema is None or isinstance(ema, dict), "a state_dict or null")
    epoch = state.get("epoch")
    _need(path, "epoch", epoch, epoch is None or _count(epoch), "an epoch index >= 0")
    classes = state.get("classes")
    _need(path, "classes", classes, classes is None or (isinstance(classes, list) and classes and all(
        isinstance(c, str) for c in classes)), "a list of class ids")
    return config


def check_resume(state: dict, path: Path) -> None:
    """Everything a resume restores, checked before the run starts (not a traceback mid-restore)."""
    check_weights(state, path)
    _need(path, "epoch", state.get("epoch"), _count(state.get("epoch")), "an epoch index >= 0")
    _need(path, "updates", state.get("updates"), _count(state.get("updates")), "an update count >= 0")
    top1 = state.get("best_top1")
    _need(path, "best_top1", top1, isinstance(top1, numbers.Real) and not isinstance(top1, bool), "a number")
    optimizer = state.get("optimizer")
    _need(path, "optimizer", optimizer, isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
          and isinstance(optimizer.get("param_groups"), list), "an optimizer state_dict (state, param_groups)")
    _need(path, "scaler", state.get("scaler"), isinstance(state.get("scaler"), dict), "a GradScaler state_dict")
    times = state.get("update_times", [])
    _need(path, "update_times", times, isinstance(times, list) and all(
        isinstance(t, numbers.Real) and not isinstance(t, bool) for t in times), "a list of seconds")
    budget = state.get("time_budget")
    _need(path, "time_budget", budget, budget is None or isinstance(budget, dict), "a budget record or null")
    for key in ("epochs", "last_epoch_updates", "updates", "most_epochs"):  # what a resume plans with (budget.py)
        value = (budget or {}).get(key)
        _need(path, f"time_budget.{key}", value, value is None or (_count(value) and value >= 1), "a count >= 1")
    rng = state.get("rng")
    _need(path, "rng", rng, isinstance(rng, list) and rng and all(_rng_ok(r) for r in rng),
          "a list of RNG states, one per rank (torch, numpy, python)")


def _rng_ok(state) -> bool:
    """The shape set_rng_state reads: torch's ByteTensor, numpy's MT19937 state, Python's."""
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
        return False
    numpy_state, python = state.get("numpy"), state.get("python")
    if isinstance(numpy_state, dict):
        keys = numpy_state.get("keys")
        numpy_ok = isinstance(keys, torch.Tensor) and keys.numel() == 624 and all(
            k in numpy_state for k in ("kind", "pos", "has_gauss", "gauss"))
    else:
        numpy_ok = isinstance(numpy_state, tuple) and len(numpy_state) == 5
    return numpy_ok and state["torch"].dtype == torch.uint8 and isinstance(python, tuple) and len(python) == 3


def restore_states(trainer, state: dict, path: Path) -> None:
    """The optimizer's, scaler's, EMA's and this rank's RNG state into `trainer`; one that does not
    fit its run (other parameters, a damaged tensor) is one line naming the file and the key."""
    rng = state["rng"]
    steps = [("optimizer", lambda: load_optimizer(trainer.optimizer, state["optimizer"])),
             ("scaler", lambda: trainer.scaler.load_state_dict(state["scaler"])),
             ("ema", lambda: trainer.ema is not None and state.get("ema") is not None
              and trainer.ema.load_state_dict(state["ema"])),
             ("rng", lambda: set_rng_state(rng[trainer.dist.rank] if trainer.dist.rank < len(rng) else rng[0]))]
    for key, restore in steps:
        try:
            restore()
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise BadCheckpoint(f"{path}: {key}: does not fit this run ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0][:200]})") from None
