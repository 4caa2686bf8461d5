"""Reopen every output of a conversion and check it against manifest.json.

Checks: each listed file exists with its size and sha256; no stray final-named outputs;
each shard's index is the one its tar implies; sample counts and per-class counts match
the manifest; the .beton holds the same labels, in the same order, as the shards.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .convert import sha256
from .shards import index_text, read_samples


def verify(out: str | Path) -> list[str]:
    """Problems found (empty when the conversion is intact)."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        classes = json.loads((out / "classes.json").read_text())
    except (OSError, ValueError) as e:
        return [f"{out}: cannot read manifest.json / classes.json: {e}"]
    problems = []
    files = manifest["files"]
    for rel, meta in files.items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != meta["bytes"] or sha256(path) != meta["sha256"]:
            problems.append(f"{path}: checksum differs from the manifest (changed or damaged)")
    for path in sorted([*out.glob("wds/*.tar"), *out.glob("wds/*.idx"), *out.glob("ffcv/*.beton")]):
        if str(path.relative_to(out)) not in files:
            problems.append(f"{path}: not listed in the manifest")

    wnid_of = {c["index"]: c["wnid"] for c in classes}
    for split, info in manifest["splits"].items():
        labels = []
        for rel in info["shards"]:
            tar = out / rel
            try:
                if tar.with_suffix(".idx").read_text() != index_text(tar):
                    problems.append(f"{tar.with_suffix('.idx')}: does not match {tar.name}")
                labels += [s.label for s in read_samples(tar)]
            except (OSError, ValueError) as e:
                problems.append(f"{tar}: unreadable: {e}")
        if info["shards"]:
            problems += _check_counts(f"{split} shards", labels, info, wnid_of)
        if info.get("beton"):
            problems += _check_beton(out / info["beton"], labels if info["shards"] else None,
                                     info, wnid_of)
    return problems


def _check_counts(what: str, labels, info: dict, wnid_of: dict) -> list[str]:
    problems = []
    if len(labels) != info["written"]:
        problems.append(f"{what}: {len(labels)} samples, manifest says {info['written']}")
    counts = Counter(wnid_of.get(int(label), f"label {label}") for label in labels)
    if counts != Counter({w: n for w, n in info["per_class"].items() if n}):
        problems.append(f"{what}: per-class counts differ from the manifest")
    return problems


def _check_beton(path: Path, shard_labels, info: dict, wnid_of: dict) -> list[str]:
    from .beton import read_labels
    try:
        labels = read_labels(path).tolist()
    except ImportError as e:
        return [f"{path}: cannot open ({e}); only its checksum was checked"]
    except ValueError as e:
        return [str(e)]
    problems = _check_counts(str(path), labels, info, wnid_of)
    if shard_labels is not None and labels != shard_labels:
        problems.append(f"{path}: label order differs from the shards'")
    return problems
