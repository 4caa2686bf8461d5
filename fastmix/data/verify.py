"""Reopen every output of a conversion and check it against manifest.json.

Checksums catch damage, but not a consistent edit (a file changed and its checksum updated to
match), so verify also checks what holds whatever the checksums say: each shard's index is the
one its tar implies; the manifest's counts add up (written + rejected = source files, per-class
counts sum to written) and match the shards' labels and the .beton's; every label names a
selected class; a key that names a WNID (ImageNet's `<wnid>_<n>` train files) carries that
class's label; val is in class order; and the .beton holds the same labels and image sizes, in
the same order, as the shards.
"""
from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

from PIL import Image

from .manifest import ManifestError, read_classes, read_manifest, read_sources
from .outstate import sha256
from .shards import index_text, read_samples

KEY_WNID = re.compile(r"^(n\d{8})_")  # keys of conversions before KEY_SCHEME: the file's stem
KEY_LABEL = re.compile(r"^(\d+)_\d+$")  # "<class index>_<position>"


def verify(out: str | Path) -> list[str]:
    """Problems found (empty when the conversion is intact)."""
    out = Path(out)
    try:
        manifest, classes = read_manifest(out), read_classes(out)
    except (OSError, ManifestError) as e:
        return [str(e)]
    problems = []
    files = manifest["files"]
    for rel, meta in files.items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != meta["bytes"] or sha256(path) != meta["sha256"]:
            problems.append(f"{path}: checksum differs from the manifest (changed or damaged)")
    for path in sorted([*out.glob("wds/*.tar"), *out.glob("wds/*.idx"), *out.glob("ffcv/*.beton"),
                        *out.glob("sources/*.jsonl")]):
        if str(path.relative_to(out)) not in files:
            problems.append(f"{path}: not listed in the manifest")

    wnid_of = {c["index"]: c["wnid"] for c in classes}
    for split, info in manifest["splits"].items():
        problems += _check_accounting(split, info)
        labels, sizes, keys = [], [], []
        for rel in info["shards"]:
            tar = out / rel
            try:
                if tar.with_suffix(".idx").read_text() != index_text(tar):
                    problems.append(f"{tar.with_suffix('.idx')}: does not match {tar.name}")
                samples = read_samples(tar)
            except (OSError, ValueError) as e:
                problems.append(f"{tar}: unreadable: {e}")
                continue
            problems += _check_keys(tar, samples, wnid_of)
            labels += [s.label for s in samples]
            keys += [s.key for s in samples]
            sizes += [_jpeg_size(s.jpeg) for s in samples]
        if info["shards"]:
            problems += _check_counts(f"{split} shards", labels, info, wnid_of)
            if split == "val":
                problems += _check_class_order(f"{split} shards", labels)
        if info.get("sources"):
            problems += _check_sources(out, info, list(zip(keys, labels)) if info["shards"] else None)
        if info.get("beton"):
            problems += _check_beton(out / info["beton"], (labels, sizes) if info["shards"] else None,
                                     info, wnid_of, in_class_order=split == "val")
    return problems


def _check_accounting(split: str, info: dict) -> list[str]:
    problems = []
    if info["written"] + len(info["rejected"]) != info["source_files"]:
        problems.append(f"manifest {split}: {info['written']} written + {len(info['rejected'])} rejected "
                        f"!= {info['source_files']} source files")
    if sum(info["per_class"].values()) != info["written"]:
        problems.append(f"manifest {split}: per-class counts sum to {sum(info['per_class'].values())}, "
                        f"not the {info['written']} written")
    return problems


def _check_sources(out: Path, info: dict, shard_keys) -> list[str]:
    """sources/<split>.jsonl: one line per written sample, the shards' keys and labels in order."""
    path = out / info["sources"]
    try:
        rows = [(r["key"], r["label"]) for r in read_sources(out, info)]
    except ManifestError as e:
        return [str(e)]
    if len(rows) != info["written"]:
        return [f"{path}: {len(rows)} samples, manifest says {info['written']}"]
    if len({k for k, _ in rows}) != len(rows):
        return [f"{path}: a key appears twice"]
    if shard_keys is not None and rows != shard_keys:
        n = next((i for i, (a, b) in enumerate(zip(rows, shard_keys)) if a != b), None)
        if n is not None:
            return [f"{path}: line {n + 1} says {rows[n]}, the shards {shard_keys[n]}"]
    return []


def _check_keys(tar: Path, samples, wnid_of: dict) -> list[str]:
    problems = []
    for s in samples:
        by_label = KEY_LABEL.match(s.key)
        if by_label and int(by_label.group(1)) != s.label:
            problems.append(f"{tar}: {s.key} has label {s.label}, but its key says class {int(by_label.group(1))}")
        named = KEY_WNID.match(s.key)
        if named and s.label in wnid_of and named.group(1) != wnid_of[s.label]:
            problems.append(f"{tar}: {s.key} has label {s.label} ({wnid_of[s.label]}), "
                            f"but its name says {named.group(1)}")
    return problems


def _check_class_order(what: str, labels) -> list[str]:
    for i in range(1, len(labels)):
        if labels[i] < labels[i - 1]:
            return [f"{what}: not in class order (sample {i} has label {labels[i]} after {labels[i - 1]})"]
    return []


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    try:
        return Image.open(io.BytesIO(data)).size  # reads the header only
    except Exception:  # noqa: BLE001 - any undecodable payload is reported by the size check
        return None


def _check_counts(what: str, labels, info: dict, wnid_of: dict) -> list[str]:
    problems = []
    if len(labels) != info["written"]:
        problems.append(f"{what}: {len(labels)} samples, manifest says {info['written']}")
    unknown = sorted({int(label) for label in labels} - set(wnid_of))
    if unknown:
        problems.append(f"{what}: labels {unknown[:5]} name no class in classes.json")
    counts = Counter(wnid_of.get(int(label), f"label {label}") for label in labels)
    if counts != Counter({w: n for w, n in info["per_class"].items() if n}):
        problems.append(f"{what}: per-class counts differ from the manifest")
    return problems


def _check_beton(path: Path, shards, info: dict, wnid_of: dict, in_class_order: bool) -> list[str]:
    from .betonread import read_labels, read_sizes
    try:
        labels, sizes = read_labels(path).tolist(), [tuple(s) for s in read_sizes(path).tolist()]
    except ImportError as e:
        return [f"{path}: cannot open ({e}); only its checksum was checked"]
    except ValueError as e:
        return [str(e)]
    problems = _check_counts(str(path), labels, info, wnid_of)
    if in_class_order and shards is None:  # with shards, equal labels imply the same order
        problems += _check_class_order(str(path), labels)
    if shards is not None:
        shard_labels, shard_sizes = shards
        if labels != shard_labels:
            problems.append(f"{path}: label order differs from the shards'")
        bad = [i for i, (a, b) in enumerate(zip(sizes, shard_sizes)) if a != b]
        if bad:
            problems.append(f"{path}: image sizes differ from the shards' at {len(bad)} samples "
                            f"(first: sample {bad[0]}, {sizes[bad[0]]} vs {shard_sizes[bad[0]]})")
    return problems
