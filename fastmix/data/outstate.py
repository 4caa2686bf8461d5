"""Which files of an output folder the converter wrote, as its state (OUT/.state) records them.

Each finished shard's and .beton's state file lists its outputs with the size and sha256 taken
when they were written; `final.json` names classes.json and manifest.json before they are
written. Only files listed there may be deleted or replaced (also under --overwrite), and a
resume trusts a listed output only while it still matches its record, so a file damaged
since is converted again instead of being re-hashed into the manifest.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

STATE_DIR = ".state"
FINAL = "final.json"
MANIFEST_TOOL = "fastmix convert_subset"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_json(path: Path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def record(out: Path, rels: list[str]) -> dict[str, dict]:
    """Size and sha256 of files just written, keyed by their path relative to `out`."""
    return {rel: {"bytes": (out / rel).stat().st_size, "sha256": sha256(out / rel)} for rel in rels}


def changed(out: Path, state: dict) -> str | None:
    """The first output of a state file that is missing or differs from its record; a state
    without records (written before they existed) counts as changed."""
    outputs = state.get("outputs")
    if outputs is None:
        return state.get("file") or "(no record of its outputs)"
    for rel, meta in sorted(outputs.items()):
        path = out / rel
        if not path.is_file() or path.stat().st_size != meta["bytes"] or sha256(path) != meta["sha256"]:
            return rel
    return None


def _state_files(out: Path) -> list[Path]:
    folder = out / STATE_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def owned(out: Path) -> set[str]:
    """Paths (relative to `out`) the converter's state says it wrote, the state files included."""
    out = Path(out)
    files: set[str] = set()
    for path in _state_files(out):
        files.add(f"{STATE_DIR}/{path.name}")
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict):
            continue
        files.update(state.get("outputs") or {})
        files.update(state.get("files") or [])  # final.json
        legacy = state.get("file")  # state written before outputs were recorded
        if isinstance(legacy, str):
            files.add(legacy)
            if legacy.endswith(".tar"):
                files.add(legacy[:-4] + ".idx")
    if (out / STATE_DIR / "run.json").is_file() and _is_our_manifest(out / "manifest.json"):
        files.update({"classes.json", "manifest.json"})  # a complete run from before final.json
    return files


def _is_our_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text())["tool"]["name"] == MANIFEST_TOOL
    except (OSError, ValueError, KeyError, TypeError):
        return False


def out_problem(out: Path, source_root: Path) -> str | None:
    """Why `out` cannot take a conversion, before anything is written: a file, a folder inside the
    source (a later run would read the outputs as source data), or a place that cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"--out {out}: is a file, not a folder"
    real_out, real_source = os.path.realpath(out), os.path.realpath(source_root)
    if os.path.isdir(real_source) and (real_out == real_source or real_out.startswith(real_source.rstrip(os.sep) + os.sep)):
        return f"--out {out}: is inside the source {source_root}; later runs would read it as source data, " \
               "so choose a folder outside it"
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: cannot write there ({existing} is read-only)"
    return None


def write_failure(e: OSError, out: Path, rel: str | None) -> str:
    """One line for an output write that failed, and what to do: a full disk is worth a --resume."""
    what = e.strerror or str(e)
    if rel is None:
        return f"{out}: cannot write here ({what})"
    fix = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return f"{what[:1].lower() + what[1:]} while writing {Path(out) / rel}; {fix} and rerun with --resume"
