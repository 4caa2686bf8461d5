"""Webdataset shards (`<key>.jpg`, `<key>.cls`) and the index DALI's readers.webdataset takes.

Tars are written byte-for-byte reproducibly (fixed mtime, owner and mode, USTAR headers),
and the index is the exact text DALI's `wds2idx` writes ("v1.2 <n>", then per sample
"<ext> <offset> <size> <name>" for each component).
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class Sample:
    key: str
    jpeg: bytes
    label: int


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}"


def write_shard(tar_path: Path, samples: list[Sample]) -> None:
    """Write the tar and its `.idx` under temporary names, then rename: no half-file looks final."""
    tar_path = Path(tar_path)
    idx_path = tar_path.with_suffix(".idx")
    tmp_tar, tmp_idx = Path(f"{tar_path}.tmp"), Path(f"{idx_path}.tmp")
    try:
        with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tf:
            for s in samples:
                for ext, payload in (("jpg", s.jpeg), ("cls", str(s.label).encode())):
                    info = tarfile.TarInfo(f"{s.key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tf.addfile(info, io.BytesIO(payload))
        tmp_idx.write_text(index_text(tmp_tar))
    except BaseException:  # a full disk: give back what the half-written files took
        tmp_tar.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        raise
    os.replace(tmp_idx, idx_path)
    os.replace(tmp_tar, tar_path)


def index_text(tar_path: Path) -> str:
    """The index of a webdataset tar, as `wds2idx` writes it."""
    bundles: list[list[str]] = []
    last = None
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            slash = m.name.rfind("/") + 1
            dot = m.name.find(".", slash)
            base, ext = m.name[:dot], m.name[dot + 1:]
            entry = f"{ext} {m.offset_data} {m.size} {m.name}"
            if base == last:
                bundles[-1].append(entry)
            else:
                bundles.append([entry])
                last = base
    if not bundles:
        raise ValueError(f"{tar_path}: empty webdataset tar")
    return f"{INDEX_VERSION} {len(bundles)}\n" + "".join(" ".join(b) + "\n" for b in bundles)


def read_index(idx_path: Path) -> list[dict[str, tuple[int, int, str]]]:
    """Parse an index: per sample, ext -> (offset, size, member name). Errors name the file."""
    lines = Path(idx_path).read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"{idx_path}: not a {INDEX_VERSION} webdataset index")
    samples = []
    for n, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens or len(tokens) % 4:
            raise ValueError(f"{idx_path}: line {n} is malformed")
        samples.append({tokens[i]: (int(tokens[i + 1]), int(tokens[i + 2]), tokens[i + 3])
                        for i in range(0, len(tokens), 4)})
    if len(samples) != int(head[1]):
        raise ValueError(f"{idx_path}: header says {head[1]} samples, found {len(samples)}")
    return samples


def read_samples(tar_path: Path) -> list[Sample]:
    """Every sample of a shard, through its index (random access, as DALI reads it)."""
    tar_path = Path(tar_path)
    out = []
    with open(tar_path, "rb") as f:
        for entry in read_index(tar_path.with_suffix(".idx")):
            parts = {}
            for ext in ("jpg", "cls"):
                if ext not in entry:
                    raise ValueError(f"{tar_path}: sample {entry} has no .{ext}")
                offset, size, name = entry[ext]
                f.seek(offset)
                parts[ext] = f.read(size)
            out.append(Sample(name.rsplit(".", 1)[0], parts["jpg"], int(parts["cls"])))
    return out
