"""The images the suite decodes: real photos when given, else synthetic JPEGs, and which it was.

`--images` is a folder of real `<wnid>_*.JPEG` photos (searched recursively); `--small-images` the
same for 64 px photos (a folder, or a Tiny ImageNet .tar.gz of which the first SMALL_LIMIT train
photos are read), measured at 64 px in the loader rows for small images. Photos are converted on
the machine with tools/convert_subset.py; each is linked `--repeats` times under other names (so
~150 photos give enough batches for 100 updates); every copy is still a real JPEG decode.

Without photos the loaders decode small synthetic JPEGs, several times cheaper than ImageNet's:
their verdicts are then labelled `synthetic` wherever they are reported (`images_label`).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tarfile
from pathlib import Path

from loaders import unavailable

from .children import run_child

PHOTO = re.compile(r"^(n\d{8})_[^/]*\.jpe?g$", re.IGNORECASE)
SMALL_LIMIT = 2000
SMALL_SIZE = 64


def images_label(ctx, small: bool = False) -> str:
    """'photos' (real photos given), 'converted folder' (--data: whatever it holds) or 'synthetic'."""
    if small:
        return "photos" if ctx.small_images else "synthetic"
    return "photos" if ctx.images else ("converted folder (--data)" if ctx.data else "synthetic")


def data_classes(ctx) -> int:
    """The class count of the converted data the training children read (their model's head size);
    100 (the profiler's default) before anything was converted."""
    classes = (Path(ctx.data) if ctx.data else ctx.work / "data") / "classes.json"
    return len(json.loads(classes.read_text())) if classes.is_file() else 100


def find_photos(src: str, work: Path, limit: int | None = None) -> list[Path]:
    """The <wnid>_*.JPEG photos under a folder, or the first `limit` train photos of a .tar.gz
    (written under work/ by their own names; nothing in the archive chooses a path)."""
    path = Path(src)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        out = work / "small-photos"
        out.mkdir(parents=True, exist_ok=True)
        photos: list[Path] = []
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or "/train/" not in f"/{member.name}" or not PHOTO.match(name):
                    continue
                target = out / name
                if not target.exists():
                    target.write_bytes(tar.extractfile(member).read())
                photos.append(target)
                if limit and len(photos) >= limit:
                    break
    elif path.is_dir():
        photos = sorted(p for p in path.rglob("*") if p.is_file() and PHOTO.match(p.name))[:limit]
    else:
        raise FileNotFoundError(f"{src}: not a folder of photos nor a .tar.gz")
    if not photos:
        raise FileNotFoundError(f"{src}: no <wnid>_*.JPEG photos")
    return photos


def link_photos(photos: list[Path], src: Path, repeat: int) -> None:
    for p in photos:
        wnid = PHOTO.match(p.name).group(1)
        for k in range(repeat):  # copy k of every class goes to val when k is the last
            split = "val" if k == repeat - 1 else "train"
            (src / split / wnid).mkdir(parents=True, exist_ok=True)
            link = src / split / wnid / f"{p.stem}-{k}{p.suffix}"
            if not link.exists():
                link.symlink_to(p.resolve())


def beton_formats() -> str:
    # a machine whose ffcv is missing or broken converts to shards only (ffcv and opencv are skipped)
    return "wds" if unavailable("ffcv") else "wds,ffcv"


def prepare_data(ctx, small: bool = False) -> Path:
    """A converted folder (train + val): --data as given, else the photos converted, else synthetic."""
    if ctx.data and not small:
        return Path(ctx.data)
    name = "data-small" if small else "data"
    out = ctx.work / name
    if (out / "manifest.json").is_file():
        return out
    src = ctx.work / f"src-{name}"
    photos_dir = ctx.small_images if small else ctx.images
    if photos_dir:
        photos = find_photos(photos_dir, ctx.work, SMALL_LIMIT if small else None)
        # small photos: linked up to ~SMALL_LIMIT (150 photos -> 14 copies each; --smoke: 2)
        repeat = (2 if ctx.smoke else max(2, math.ceil(SMALL_LIMIT / len(photos)))) if small else ctx.repeat
        link_photos(photos, src, repeat)
    else:
        from fastmix.data.synth import write_imagefolder
        # enough for ~10 updates an epoch at batch 64 on a GPU (100 updates must not mean 100 epochs)
        per_class = {"train": 16, "val": 4} if ctx.smoke else {"train": 160, "val": 10}
        write_imagefolder(src, 4, per_class, seed=0, sizes=[(160, 120), (120, 160)])
    cmd = [sys.executable, "tools/convert_subset.py", "--source", str(src), "--out", str(out),
           "--all-classes", "--overwrite", "--workers", str(os.cpu_count() or 1), "--formats", beton_formats()]
    code, log = run_child(ctx, f"convert-{name}", cmd)
    if code != 0:
        raise RuntimeError(f"tools/convert_subset.py failed ({code}): {log[-2000:]}")
    return out
