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

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch


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
