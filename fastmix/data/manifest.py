"""Reading a converted folder's manifest.json, classes.json and sources/<split>.jsonl, checked.

Everything that reads them (verify, the loaders, train and evaluate) goes through here, so that a
damaged or hand-edited file ends in one line naming the file and the key ("manifest.json:
splits.train.written: expected a count, found 'abc'") instead of a KeyError or TypeError deep
inside. Paths the manifest names must stay inside the folder (no absolute paths, no '..').

sources/<split>.jsonl holds one JSON object per written sample, in the order of the shards and the
.beton: {"key", "label", "path"} and, for a file reached through a symlink that leaves the source
tree, "outside" (its real path). `path` is the source file relative to the source folder (or the
archive member as the converter named it). JSON escapes every control character, so no file name
can break a line of it.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Iterator

SOURCES_DIR = "sources"
FILE_LAYOUTS = ("imagefolder", "kaggle", "tinyimagenet")  # their samples are files under the source folder


class ManifestError(ValueError):
    """A manifest, classes.json or sources file that is missing, not JSON, or not of the format."""


def sources_rel(split: str) -> str:
    return f"{SOURCES_DIR}/{split}.jsonl"


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: Path, key: str, want: str, value) -> ManifestError:
    return ManifestError(f"{path}: {key}: expected {want}, found {_shown(value)}")


def _count(path, key, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(path, key, "a count (an integer >= 0)", value)
    return value


def _text(path, key, value) -> str:
    if not isinstance(value, str):
        raise _fail(path, key, "a string", value)
    return value


def _rel(path, key, value) -> str:
    """A path inside the converted folder."""
    _text(path, key, value)
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise _fail(path, key, "a path inside the folder", value)
    return value


def _table(path, key, value, what: str = "an object") -> dict:
    if not isinstance(value, dict):
        raise _fail(path, key, what, value)
    return value


def _list(path, key, value) -> list:
    if not isinstance(value, list):
        raise _fail(path, key, "a list", value)
    return value


def _load(path: Path, missing: str):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ManifestError(f"{path}: not JSON ({e})") from None


def check_split(path: Path, split: str, info) -> dict:
    where = f"splits.{split}"
    _table(path, where, info)
    for name in ("source_files", "written"):
        _count(path, f"{where}.{name}", info.get(name))
    for n, r in enumerate(_list(path, f"{where}.rejected", info.get("rejected"))):
        _table(path, f"{where}.rejected[{n}]", r)
        _text(path, f"{where}.rejected[{n}].path", r.get("path"))
        _text(path, f"{where}.rejected[{n}].reason", r.get("reason"))
    for table in ("per_class", "reencoded"):
        for k, v in _table(path, f"{where}.{table}", info.get(table, {})).items():
            _count(path, f"{where}.{table}.{k}", v)
    for n, rel in enumerate(_list(path, f"{where}.shards", info.get("shards"))):
        _rel(path, f"{where}.shards[{n}]", rel)
    for name in ("beton", "sources"):
        if info.get(name) is not None:
            _rel(path, f"{where}.{name}", info[name])
    return info


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of a converted folder; FileNotFoundError or ManifestError (one line)."""
    path = Path(folder) / "manifest.json"
    m = _table(path, "the top level", _load(path, "convert the data first (tools/convert_subset.py)"))
    for split, info in _table(path, "splits", m.get("splits")).items():
        check_split(path, split, info)
    for rel, meta in _table(path, "files", m.get("files")).items():
        _rel(path, f"files key {rel!r}", rel)
        _table(path, f"files.{rel}", meta)
        _count(path, f"files.{rel}.bytes", meta.get("bytes"))
        _text(path, f"files.{rel}.sha256", meta.get("sha256"))
    if "num_classes" in m:
        _count(path, "num_classes", m["num_classes"])
    return m


def read_split(folder: str | Path, split: str, manifest: dict | None = None) -> dict:
    """One split's entry of the checked manifest; a split it lacks is named with those it has."""
    splits = (manifest or read_manifest(folder))["splits"]
    if split not in splits:
        raise ManifestError(f"{Path(folder) / 'manifest.json'}: has no split {split!r} (has {sorted(splits)})")
    return splits[split]


def read_classes(folder: str | Path) -> list[dict]:
    """classes.json checked: a list of {index, wnid, name} whose indices are 0..n-1 in order."""
    path = Path(folder) / "classes.json"
    classes = _list(path, "the top level", _load(path, "convert the data first (tools/convert_subset.py)"))
    for n, c in enumerate(classes):
        _table(path, f"[{n}]", c)
        if c.get("index") != n:
            raise _fail(path, f"[{n}].index", f"{n} (the classes in index order)", c.get("index"))
        _text(path, f"[{n}].wnid", c.get("wnid"))
    return classes


def read_sources(folder: str | Path, info: dict) -> Iterator[dict]:
    """The samples of a split (its manifest entry `info`) in order, each line checked, read lazily."""
    path = Path(folder) / info["sources"]
    try:
        f = open(path, encoding="ascii")
    except OSError as e:
        raise ManifestError(f"{path}: unreadable ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                raise ManifestError(f"{path}: line {n} is not JSON") from None
            _table(path, f"line {n}", row)
            _text(path, f"line {n} key", row.get("key"))
            _count(path, f"line {n} label", row.get("label"))
            _text(path, f"line {n} path", row.get("path"))
            yield row


def write_sources(path: Path, rows: Iterator[dict]) -> None:
    """Write a sources file under a .tmp name, then rename (ASCII JSON: names cannot break lines)."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    tmp.replace(path)


def source_files(folder: str | Path, split: str, source_root: str | Path) -> list[tuple[str, int]] | None:
    """(file, label) of every written sample of `split`, the files under `source_root` (the folder
    the conversion read), in order; None for a conversion without a sources file or from a layout
    whose samples are not files (archives, CIFAR)."""
    manifest = read_manifest(folder)
    info = read_split(folder, split, manifest)
    layout = manifest["source"].get("layout") if isinstance(manifest.get("source"), dict) else None
    if not info.get("sources") or layout not in FILE_LAYOUTS:
        return None
    # paths are relative to the source read; a Kaggle download's ImageFolder tree (what the pil
    # backend is given) is its ILSVRC/Data/CLS-LOC folder
    prefix = "ILSVRC/Data/CLS-LOC/" if layout == "kaggle" else ""
    return [(str(Path(source_root) / r["path"].removeprefix(prefix)), r["label"]) for r in read_sources(folder, info)]
