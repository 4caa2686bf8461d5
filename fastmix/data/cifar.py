"""CIFAR-10 / CIFAR-100 as a conversion source: the "python version" pickled batches.

Read from the download as it is (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) or from
its extracted folder (`cifar-10-batches-py/`, `cifar-100-python/`):

    CIFAR-10    data_batch_1..5 (train), test_batch (val), batches.meta (label_names)
    CIFAR-100   train, test (val), meta (fine_label_names); labels are `fine_labels`

Each batch is a pickled dict: `data` uint8 N x 3072 (the 1024 red, then green, then blue
values of a 32 x 32 image, row-major) and `labels` / `fine_labels`. A class's id is its label
name (both datasets list them in sorted order, so the converter's sorted-id labels equal
CIFAR's own); classes.json keeps the names.

Every member is checked by its name and its declared size (tar header, or file size) against
the format before a byte of it is read: a batch holds at most 10000 images (50000: CIFAR-100's
train) of 3072 bytes plus labels and names, a meta file or anything else (readme.html) at most
1 MiB, and what the format does not name is never read. A 1 MB archive declaring a 1 GB member
is refused at that member's header, not decompressed into memory.

Each image reaches the converter as a lossless PNG, so it is lossy-encoded at most once on
its way into either format: the shards hold JPEGs at `--quality` / `--subsampling`, and
`--write-mode raw` keeps the .beton lossless (tools/convert_subset.py picks q100 4:4:4 + raw for
CIFAR; README: CIFAR-10 has the measured PSNR of each choice).
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .items import Item, Source, SourceError

SIDE = 32
ROW = 3 * SIDE * SIDE
LAYOUTS = {  # folder in the tarball -> (train batches, val batches, meta file, label key, names key)
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                            "labels", "label_names"),
    "cifar-100-python": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}

# Declared-size limits, checked before reading. A batch's pickle is its rows plus per image a
# label (two for CIFAR-100), a file name (~30 bytes) and framing: 256 bytes each is ample.
BATCH_ROWS = {"train": 50_000}  # CIFAR-100's one train batch; every other batch holds 10000
PER_IMAGE = ROW + 256
SMALL_MEMBER = 1 << 20  # meta files (CIFAR-100's: 1.7 KB) and whatever else ships (readme.html)
MAX_MEMBERS = 64        # the downloads hold 7 and 9


def member_limit(folder: str, name: str) -> int:
    """The most bytes member `name` of layout `folder` may declare (not-needed members: SMALL_MEMBER)."""
    train, val = LAYOUTS[folder][:2] if folder in LAYOUTS else ((), ())
    if name in (*train, *val):
        return BATCH_ROWS.get(name, 10_000) * PER_IMAGE + SMALL_MEMBER
    return SMALL_MEMBER


def check_size(where: str, size: int, limit: int) -> None:
    if size > limit:
        raise SourceError(f"{where}: declares {size:,} bytes, more than this CIFAR member can hold "
                          f"({limit:,}); not read")


class _ArraysOnly(pickle.Unpickler):
    """A pickle may run any code it names; CIFAR's hold only dicts, lists and numpy arrays."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
               ("_codecs", "encode")}  # how Python 3 pickles bytes at protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise SourceError(f"{where}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    # Python 2 pickles read with encoding="bytes" have bytes keys; either kind is accepted.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass(frozen=True)
class CifarItem(Item):
    """One image: its 3072 CHW bytes, handed out as a PNG (lossless) to the converter."""
    pixels: bytes = b""

    def read(self) -> bytes:
        hwc = np.frombuffer(self.pixels, np.uint8).reshape(3, SIDE, SIDE).transpose(1, 2, 0)
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(hwc)).save(out, format="PNG", compress_level=1)
        return out.getvalue()


def is_cifar(path: Path) -> bool:
    """A CIFAR download (.tar.gz) or its extracted folder (or a folder holding that folder).
    Every ImageNet layout is a folder, so any .tar.gz given as a source is taken for CIFAR."""
    path = Path(path)
    if path.is_file():
        return path.name.endswith((".tar.gz", ".tgz"))
    return path.is_dir() and any((path / d).is_dir() or path.name == d for d in LAYOUTS)


class CifarSource(Source):
    kind = "cifar"

    def __init__(self, root):
        super().__init__(root)
        if not self.root.exists():
            raise SourceError(f"{self.root}: not found")

    @cached_property
    def _download(self) -> tuple[str, str, dict[str, bytes | Path]]:
        """(layout folder name, how messages name that folder, member name -> its bytes or file)."""
        if self.root.is_file():
            try:
                files = self._read_tarball()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise SourceError(f"{self.root}: unreadable or truncated tarball ({type(e).__name__}: {e})") \
                    from None
            tops = {n.split("/")[0] for n in files}
            if len(tops & set(LAYOUTS)) != 1:
                raise SourceError(f"{self.root}: expected one of {sorted(LAYOUTS)} inside, found {sorted(tops)[:5]}")
            (folder,) = tops & set(LAYOUTS)
            return folder, f"{self.root}:{folder}", {n[len(folder) + 1:]: d for n, d in files.items()
                                                     if n.startswith(folder + "/") and d is not None}
        folder = self.root if self.root.name in LAYOUTS else next(
            (self.root / d for d in LAYOUTS if (self.root / d).is_dir()), None)
        if folder is None:
            raise SourceError(f"{self.root}: not a CIFAR download (expected {' or '.join(LAYOUTS)} in it)")
        return folder.name, str(folder), {p.name: p for p in folder.iterdir() if p.is_file()}

    def _read_tarball(self) -> dict[str, bytes | None]:
        """Member name -> its bytes (None: a member the format does not read). Headers are taken
        one at a time (a gzip stream has no index), each checked before its data is touched."""
        files: dict[str, bytes | None] = {}
        with tarfile.open(self.root, "r:gz") as tf:
            for count, m in enumerate(tf, start=1):
                if count > MAX_MEMBERS:
                    raise SourceError(f"{self.root}: more than {MAX_MEMBERS} members; not a CIFAR download")
                if not m.isfile():
                    continue
                folder, _, name = m.name.partition("/")
                check_size(f"{self.root}:{m.name}", m.size, member_limit(folder, name))
                if m.name in files:
                    raise SourceError(f"{self.root}:{m.name}: appears twice in the tarball")
                wanted = folder in LAYOUTS and name in (*LAYOUTS[folder][0], *LAYOUTS[folder][1], LAYOUTS[folder][2])
                files[m.name] = tf.extractfile(m).read() if wanted else None
        return files

    def _where(self, member: str) -> str:
        return f"{self._download[1]}/{member}"

    def _load(self, member: str) -> dict:
        files = self._download[2]
        if member not in files:
            raise SourceError(f"{self._where(member)}: missing from the CIFAR download")
        data = files[member]
        if not isinstance(data, bytes):  # a file of the extracted folder: its size first
            check_size(self._where(member), data.stat().st_size, member_limit(self._download[0], member))
            data = data.read_bytes()
        return _unpickle(data, self._where(member))

    @cached_property
    def _names(self) -> list[str]:
        folder = self._download[0]
        meta_file, names_key = LAYOUTS[folder][2], LAYOUTS[folder][4]
        meta = self._load(meta_file)
        if names_key not in meta:
            raise SourceError(f"{self._where(meta_file)}: has no {names_key!r} (keys: {sorted(meta)})")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
        if len(set(names)) != len(names) or names != sorted(names):
            raise SourceError(f"{self._where(meta_file)}: label names are not unique and sorted: {names[:5]}")
        return names

    def classes(self):
        return list(self._names), {n: n for n in self._names}

    def batch(self, member: str) -> tuple[np.ndarray, np.ndarray]:
        """(N x 3072 uint8, N labels) of one batch, checked against the format."""
        folder = self._download[0]
        label_key, where = LAYOUTS[folder][3], self._where(member)
        d = self._load(member)
        if "data" not in d or label_key not in d:
            raise SourceError(f"{where}: a batch needs 'data' and {label_key!r} (keys: {sorted(d)})")
        data, labels = np.asarray(d["data"]), np.asarray(d[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
            raise SourceError(f"{where}: 'data' is {data.dtype} {data.shape}; expected uint8 N x {ROW}")
        if labels.shape != (len(data),):
            raise SourceError(f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {len(data)} images")
        if len(labels) and not (0 <= labels.min() and labels.max() < len(self._names)):
            raise SourceError(f"{where}: labels outside 0..{len(self._names) - 1}")
        return data, labels.astype(np.int64)

    def items(self, split, wnids):
        folder = self._download[0]
        train, val = LAYOUTS[folder][:2]
        members = {"train": train, "val": val}.get(split)
        if members is None:
            raise SourceError(f"{self.root}: CIFAR has splits train and val (its test batches), not {split!r}")
        keep, out = set(wnids), []
        for member in members:
            data, labels = self.batch(member)
            where = self._where(member)
            for k, (row, label) in enumerate(zip(data, labels)):
                name = self._names[label]
                if name in keep:
                    out.append(CifarItem(name, where, f"{where}_{k:05d}", 0, ROW, row.tobytes()))
        # val in class order, as for every other source (stable: file order within a class)
        return sorted(out, key=lambda i: i.wnid) if split == "val" else out
