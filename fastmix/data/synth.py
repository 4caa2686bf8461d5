"""Synthetic ImageNet-like data: the embedded demo source, and the tests' own data.

Photos are ~500x375 (some portrait, larger and smaller) at realistic JPEG sizes
(~100 KB), and each class has its own colours and shapes so a model can learn them.
The quirk files are the ones ImageNet really contains, plus the broken ones a
converter must reject. Everything is seeded: the same call writes the same bytes.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (width, height) drawn with these weights: ImageNet's median is 500x375.
SIZES = [((500, 375), 0.55), ((375, 500), 0.15), ((500, 333), 0.1), ((640, 480), 0.08),
         ((1024, 768), 0.05), ((333, 250), 0.05), ((200, 150), 0.02)]

# name -> (expected outcome, description); the files `write_quirks` makes.
QUIRKS = {
    "cmyk": ("written", "CMYK JPEG (ImageNet train has 22)"),
    "gray": ("written", "grayscale JPEG"),
    "png": ("written", "PNG content behind a .JPEG name (like n02105855_2933.JPEG)"),
    "palette_alpha": ("written", "palette PNG with transparency behind a .JPEG name"),
    "progressive": ("written", "progressive JPEG"),
    "exif_rotated": ("written", "JPEG with an EXIF orientation tag"),
    "large": ("written", "1800x1350 JPEG, larger than the max side"),
    "truncated": ("rejected", "JPEG cut off halfway"),
    "empty": ("rejected", "zero-byte file"),
    "not_image": ("rejected", "text file named .JPEG"),
    "bad_header": ("rejected", "JPEG start marker followed by garbage"),
}


def class_wnids(n: int, start: int = 1440764) -> list[str]:
    """Made-up WNID-shaped names (n########), sorted, for synthetic classes."""
    return [f"n{start + 7919 * i:08d}" for i in range(n)]


def photo(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """A textured image whose colours and shapes depend on `label`."""
    w, h = size
    cls = np.random.default_rng(label)  # class identity: same palette for every image of a class
    palette = cls.integers(0, 256, size=(3, 3))
    coarse = rng.normal(palette[0], 40, size=(6, 8, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(cls.integers(2, 6))):
        x, y = rng.integers(0, w), rng.integers(0, h)
        r = int(rng.integers(min(w, h) // 10, min(w, h) // 3))
        shape = draw.ellipse if cls.integers(0, 2) else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in palette[1 + _ % 2]))
    # Grain: gives the file size of a real photo rather than a cartoon's.
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 18, size=(h, w, 3)).astype(np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 92, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, **kwargs)
    return out.getvalue()


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    sizes, weights = zip(*SIZES)
    return sizes[rng.choice(len(sizes), p=np.array(weights) / sum(weights))]


def quirk_bytes(kind: str, rng: np.random.Generator, label: int) -> bytes:
    """The bytes of one quirk file (see QUIRKS)."""
    img = photo(rng, label, (500, 375))
    if kind == "cmyk":
        return jpeg_bytes(img.convert("CMYK"))
    if kind == "gray":
        return jpeg_bytes(img.convert("L"))
    if kind in ("png", "palette_alpha"):
        out = io.BytesIO()
        if kind == "palette_alpha":
            img = img.convert("P", palette=Image.Palette.ADAPTIVE)
            img.info["transparency"] = 0
        img.save(out, format="PNG")
        return out.getvalue()
    if kind == "progressive":
        return jpeg_bytes(img, progressive=True)
    if kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 CW to display
        return jpeg_bytes(img, exif=exif.tobytes())
    if kind == "large":
        return jpeg_bytes(photo(rng, label, (1800, 1350)))
    if kind == "truncated":
        data = jpeg_bytes(img)
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "not_image":
        return b"<html>404 Not Found</html>\n"
    if kind == "bad_header":
        return b"\xff\xd8\xff" + rng.bytes(2000)
    raise ValueError(f"unknown quirk {kind!r}")


def write_imagefolder(root: str | os.PathLike, num_classes: int, per_class: dict[str, int],
                      quirks: dict[str, str] | None = None, seed: int = 0,
                      sizes: list[tuple[int, int]] | None = None) -> Path:
    """Write `root/<split>/<wnid>/<wnid>_<n>.JPEG`; `quirks` maps quirk kind -> split.

    Quirks go into the first class, named `<wnid>_<kind>.JPEG`. `sizes` fixes the
    image sizes (cycled) instead of drawing them.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = class_wnids(num_classes)
    for split, n in per_class.items():
        for label, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = sizes[i % len(sizes)] if sizes else random_size(rng)
                (folder / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(photo(rng, label, size)))
    for kind, split in (quirks or {}).items():
        (root / split / wnids[0] / f"{wnids[0]}_{kind}.JPEG").write_bytes(quirk_bytes(kind, rng, 0))
    return root


DEMO_VERSION = "demo-v1"


def demo_source(cache: str | os.PathLike | None = None) -> Path:
    """The embedded demo source (100 classes, 10 train + 2 val each, plus every quirk), built once."""
    cache = Path(cache or os.environ.get("FASTMIX_CACHE", Path.home() / ".cache" / "fastmix"))
    root = cache / DEMO_VERSION
    done = root / ".complete"
    if not done.exists():
        tmp = cache / f"{DEMO_VERSION}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        quirks = {k: "train" for k in QUIRKS} | {"cmyk": "val", "truncated": "val"}
        write_imagefolder(tmp, 100, {"train": 10, "val": 2}, quirks=quirks, seed=0)
        (tmp / "synset_words.txt").write_text(
            "".join(f"{w} synthetic class {i}\n" for i, w in enumerate(class_wnids(100))))
        (tmp / ".complete").touch()
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    return root


def write_tinyimagenet(root: str | os.PathLike, num_classes: int, train: int, val: int, test: int = 0,
                       quirks: dict[tuple[str, int], str] | None = None, seed: int = 0,
                       side: int = 64) -> dict[str, dict[str, str]]:
    """Write Tiny ImageNet's download layout (see fastmix.data.tinyimagenet) with `side` px images.

    `quirks` maps (split, class index) -> quirk kind: that class's first image there is a QUIRKS
    file instead of a photo (a "gray" one at `side` px, like Tiny ImageNet's own). Val images of all classes are interleaved (val_0 is class 0, val_1 class 1, ...), as in
    the download. Returns split -> {file path: wnid} of every train and val image written.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = class_wnids(num_classes)
    at = dict(quirks or {})
    labels: dict[str, dict[str, str]] = {"train": {}, "val": {}}

    def image(split: str, label: int) -> bytes:
        kind = at.pop((split, label), None)
        if kind is None:
            return jpeg_bytes(photo(rng, label, (side, side)))
        if kind == "gray":
            return jpeg_bytes(photo(rng, label, (side, side)).convert("L"))
        return quirk_bytes(kind, rng, label)

    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted, as shipped
    words = [f"{w}\tsynthetic {i}, tiny class {i}\n" for i, w in enumerate(wnids)]
    (root / "words.txt").write_text("n00001740\tentity\n" + "".join(words) + "n99999999\tnot a class\n")
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        boxes = []
        for i in range(train):
            path = folder / f"{wnid}_{i}.JPEG"
            path.write_bytes(image("train", label))
            labels["train"][str(path)] = wnid
            boxes.append(f"{path.name}\t0\t0\t{side - 1}\t{side - 1}\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    (root / "val" / "images").mkdir(parents=True)
    rows = []
    for n in range(val * num_classes):
        label = n % num_classes
        path = root / "val" / "images" / f"val_{n}.JPEG"
        path.write_bytes(image("val", label))
        labels["val"][str(path)] = wnids[label]
        rows.append(f"{path.name}\t{wnids[label]}\t1\t2\t{side - 2}\t{side - 3}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(rows))
    if test:
        (root / "test" / "images").mkdir(parents=True)
        for n in range(test):
            (root / "test" / "images" / f"test_{n}.JPEG").write_bytes(jpeg_bytes(photo(rng, n, (side, side))))
    return labels
