"""Conversion benchmark: throughput per worker, and output size / decode speed vs max side and quality.

    python -m bench.convert --images PHOTOS                           # real photos
    python -m bench.convert                                           # demo source
    python -m bench.convert --images PHOTOS --skip-throughput --skip-quality \
        --storage jpg:512,jpg:320,jpg:256,proportion@0.5:512,raw:320,raw:256 \
        --publish --name storage-cpu2                        # ffcv storage choices, into bench/results/

Writes OUT/NAME.json (default runs/bench/convert-<host>.json; --publish: bench/results/), a PNG of
each table, and prints the markdown tables. `--replot JSON` redraws the PNGs from a result file.
The table encodes as ffcv's RGBImageField does (OpenCV, libjpeg-turbo) and decodes with
OpenCV's libjpeg-turbo on one core, the decoder family FFCV and DALI-CPU use.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import cli
from bench.cli import add_out, out_path
from bench.plotting import today
from bench.decode import decode_rate_per_core
from fastmix.data.convert import ConvertConfig, convert
from fastmix.data.images import open_rgb
from fastmix.data.synth import demo_source



def photo_files(images: str | None) -> list[Path]:
    if images:
        return sorted(p for p in Path(images).iterdir() if p.is_file())
    return sorted(Path(demo_source()).glob("train/*/*_[0-9]*.JPEG"))


def as_imagefolder(files: list[Path], root: Path) -> Path:
    """Symlink flat `<wnid>_*.JPEG` files (or class folders' files) into train/<wnid>/."""
    for f in files:
        wnid = f.name.split("_")[0] if f.name.startswith("n") else f.parent.name
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "train" / wnid / f.name).symlink_to(f.resolve())
    return root


def throughput(files: list[Path], workers_list: list[int]) -> list[dict]:
    import ffcv.writer  # noqa: F401  -- its ~10 s first import (numba) is not conversion work
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = as_imagefolder(files, Path(tmp) / "src")
        for workers in workers_list:
            out = Path(tmp) / f"out{workers}"
            cfg = ConvertConfig(source=str(src), out=str(out), num_classes=None, splits=("train",),
                                workers=workers, shard_size=256)
            t0 = time.perf_counter()
            m = convert(cfg)
            wall = time.perf_counter() - t0
            n = m["splits"]["train"]["written"]
            t = m["timings_s"]
            rows.append({"workers": workers, "images": n, "wall_s": round(wall, 2),
                         "wds_images_per_s": round(n / t["train.wds"], 1),
                         "wds_images_per_s_per_worker": round(n / t["train.wds"] / workers, 1),
                         "ffcv_images_per_s": round(n / t["train.ffcv"], 1),
                         "total_images_per_s": round(n / wall, 1)})
            print(rows[-1])
    return rows


def size_quality_table(files: list[Path], sides: list[int], qualities: list[int],
                       repeats: int = 5) -> list[dict]:
    import cv2
    cv2.setNumThreads(1)
    originals = [f.read_bytes() for f in files]
    rows = []
    for side in sides:
        arrays = [np.asarray(open_rgb(b, side)[0]) for b in originals]
        for q in qualities:
            encoded = [cv2.imencode(".jpg", cv2.cvtColor(a, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, q])[1] for a in arrays]
            rate = decode_rate_per_core(encoded, repeats)
            decoded = [cv2.imdecode(e, cv2.IMREAD_COLOR) for e in encoded]
            err = [np.mean((d[..., ::-1].astype(np.float32) - a) ** 2) for d, a in zip(decoded, arrays)]
            psnr = float(np.mean([10 * np.log10(255 ** 2 / max(e, 1e-6)) for e in err]))
            rows.append({"max_side": side, "quality": q,
                         "kb_per_image": round(float(np.mean([e.nbytes for e in encoded])) / 1e3, 1),
                         "raw_kb_per_image": round(float(np.mean([a.nbytes for a in arrays])) / 1e3, 1),
                         "decode_images_per_s_1core": round(rate, 1),
                         "psnr_db": round(psnr, 2)})
            print(rows[-1])
    return rows


def beton_entries(path: Path):
    """Every stored image of a .beton: (mode 0 jpg / 1 raw, height, width, bytes view), label order."""
    from ffcv.reader import Reader
    reader = Reader(str(path))
    meta, labels = reader.metadata["f0"], reader.metadata["f1"]
    labels = labels[labels.dtype.names[0]] if labels.dtype.names else labels  # IntField: plain ints
    sizes = {int(p): int(n) for p, n in zip(reader.alloc_table["ptr"], reader.alloc_table["size"])}
    mm = np.memmap(path, np.uint8, mode="r")
    ptrs = [int(m["data_ptr"]) for m in meta]
    return [(int(m["mode"]), int(m["height"]), int(m["width"]), mm[p:p + sizes[p]])
            for m, p in zip(meta, ptrs)], labels.astype(int)


def center_crop(img: np.ndarray, size: int, crop_ratio: float = 224 / 256) -> np.ndarray:
    """The val transform at `size`: shorter side to size / crop_ratio (INTER_AREA), center crop."""
    import cv2
    h, w = img.shape[:2]
    s = round(size / crop_ratio) / min(h, w)
    img = cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * np.log10(255 ** 2 / max(mse, 1e-4))  # identical images: 88 dB, not infinity


def storage_table(files: list[Path], configs: list[str], quality: int, train_size: int,
                  repeats: int = 3) -> list[dict]:
    """ffcv write modes x max sides, each written by fastmix.data.convert (ffcv's RGBImageField):
    bytes per image, the decode limit's rate (bench/decode.py, one core; raw: nothing to decode;
    proportion: per image of the mix), decode + RandomResizedCrop
    to `train_size` through loaders/ffcv_decode.py's path, and PSNR against the source photo, both
    at the stored size and after the val transform at `train_size`."""
    import cv2
    from ffcv.fields.rgb_image import get_random_crop
    from ffcv.libffcv import imdecode, resize_crop

    from loaders.geometry import dct_denominator, scaled_span
    cv2.setNumThreads(1)
    sources = [np.asarray(open_rgb(f.read_bytes(), 1 << 20)[0]) for f in files]  # full size, RGB
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src" / "train"
        for k, f in enumerate(files):  # one class per photo: label k is files[k]
            (src / f"n{k:08d}").mkdir(parents=True)
            (src / f"n{k:08d}" / f.name).symlink_to(f.resolve())
        for spec in configs:
            mode, _, side = spec.partition(":")
            mode, prob = (mode.split("@") + ["0.5"])[:2] if "@" in mode else (mode, "0.5")
            out = Path(tmp) / spec.replace(":", "-").replace("@", "-")
            m = convert(ConvertConfig(source=str(src.parent), out=str(out), num_classes=None, splits=("train",),
                                      formats=("ffcv",), max_side=int(side), quality=quality, write_mode=mode,
                                      compress_probability=float(prob)))
            beton = out / m["splits"]["train"]["beton"]
            entries, labels = beton_entries(beton)
            bufs = [np.empty((h, w, 3), np.uint8) for _, h, w, _ in entries]
            jpegs = [data for mo, _, _, data in entries if mo == 0]
            # The one decode limit (bench/decode.py) over the JPEG entries; raw ones cost no decode.
            rate = len(entries) / (len(jpegs) / decode_rate_per_core(jpegs, repeats)) if jpegs else float("inf")
            for (mo, h, w, data), b in zip(entries, bufs):
                if mo == 0:
                    imdecode(data, b, h, w, h, w, 0, 0, 1, 1, False, False)
            images = [b.copy() if mo == 0 else data.reshape(h, w, 3) for (mo, h, w, data), b in zip(entries, bufs)]
            np.random.seed(0)
            crops = [get_random_crop(h, w, np.array((0.08, 1.0)), np.array((3 / 4, 4 / 3))) for _, h, w, _ in entries]
            dst = np.empty((train_size, train_size, 3), np.uint8)

            def decode_crop():  # as ScaledRandomResizedCropDecoder does per image
                for (mo, h, w, data), b, (i, j, ch, cw) in zip(entries, bufs, crops):
                    d = dct_denominator(ch, cw, train_size, train_size) if mo == 0 else 1
                    if mo == 0:
                        imdecode(data, b, h, w, h, w, 0, 0, 1, d, False, False)
                        sh, sw = -(-h // d), -(-w // d)
                        img = b.reshape(-1)[:3 * sh * sw].reshape(sh, sw, 3)
                    else:
                        img, sh, sw = data.reshape(h, w, 3), h, w
                    r0, r1 = scaled_span(i, ch, d, sh)
                    c0, c1 = scaled_span(j, cw, d, sw)
                    resize_crop(img, r0, r1, c0, c1, dst)
            crop_rate = len(entries) / min(_timed(decode_crop) for _ in range(repeats))
            stored, at_size = [], []
            for img, label in zip(images, labels):
                ref = sources[label]
                if ref.shape[:2] != img.shape[:2]:  # shrunk as the converter shrinks it (open_rgb)
                    ref = np.asarray(open_rgb(files[label].read_bytes(), int(side))[0])
                stored.append(psnr(img, ref))
                at_size.append(psnr(center_crop(img, train_size), center_crop(sources[label], train_size)))
            rows.append({"write_mode": mode, "compress_probability": float(prob) if mode == "proportion" else None,
                         "max_side": int(side), "quality": quality,
                         "kb_per_image": round(sum(e[3].nbytes for e in entries) / len(entries) / 1e3, 1),
                         "beton_mb": round(beton.stat().st_size / 1e6, 1),
                         "jpeg_share": round(float(np.mean([e[0] == 0 for e in entries])), 2),
                         "decode_images_per_s_1core": round(rate, 1) if jpegs else None,
                         f"decode_crop_{train_size}_images_per_s_1core": round(crop_rate, 1),
                         "psnr_stored_db": round(float(np.mean(stored)), 2),
                         f"psnr_at_{train_size}_db": round(float(np.mean(at_size)), 2)})
            print(rows[-1], flush=True)
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def storage_markdown(rows: list[dict], train_size: int) -> str:
    lines = [f"| write mode | max side | KB/image | ImageNet-100 train GB | JPEG share | decode img/s (1 core) | "
             f"decode + crop to {train_size} img/s (1 core) | PSNR stored dB | PSNR at {train_size} px dB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mode = r["write_mode"] + (f" p={r['compress_probability']}" if r["compress_probability"] is not None else "")
        decode = "no decode" if r["decode_images_per_s_1core"] is None else r["decode_images_per_s_1core"]
        lines.append(f"| {mode} | {r['max_side']} | {r['kb_per_image']} | {r['kb_per_image'] * 126_689 / 1e6:.1f} | "
                     f"{r['jpeg_share']} | {decode} | {r[f'decode_crop_{train_size}_images_per_s_1core']} | "
                     f"{r['psnr_stored_db']} | {r[f'psnr_at_{train_size}_db']} |")
    return "\n".join(lines)


def storage_plot(rows: list[dict], train_size: int, path: Path, on: str = "") -> None:
    """Disk per image against loader work per image, one point per storage choice, PSNR labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        x, y = r["kb_per_image"], r[f"decode_crop_{train_size}_images_per_s_1core"]
        ax.scatter(x, y, color="C0" if r["write_mode"] == "jpg" else "C1" if r["write_mode"] == "raw" else "C2")
        ax.annotate(f"{r['write_mode']} {r['max_side']}\n{r[f'psnr_at_{train_size}_db']} dB", (x, y), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set(xlabel="KB per image (log)", ylabel=f"decode + crop to {train_size} px, img/s on one core")
    ax.set_title(f"ffcv storage choices: size vs decode speed (PSNR at {train_size} px against the source)\n{on}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(rows: list[dict], n_images: int) -> str:
    lines = ["| max side | quality | KB/image | raw KB/image | decode img/s (1 core) | PSNR dB | ImageNet-100 train GB |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gb = r["kb_per_image"] * 126_689 / 1e6
        lines.append(f"| {r['max_side']} | {r['quality']} | {r['kb_per_image']} | {r['raw_kb_per_image']} "
                     f"| {r['decode_images_per_s_1core']} | {r['psnr_db']} | {gb:.1f} |")
    return "\n".join(lines) + f"\n\n({n_images} images; GB = KB/image x 126,689 train images.)"


def plot(rows: list[dict], path: Path, on: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for q in sorted({r["quality"] for r in rows}):
        sub = [r for r in rows if r["quality"] == q]
        axes[0].plot([r["max_side"] for r in sub], [r["kb_per_image"] for r in sub], "o-", label=f"q{q}")
        axes[1].plot([r["max_side"] for r in sub], [r["decode_images_per_s_1core"] for r in sub], "o-", label=f"q{q}")
    axes[0].set(xlabel="max side (px)", ylabel="KB / image", title="Stored size")
    axes[1].set(xlabel="max side (px)", ylabel="images / s, one core", title="libjpeg-turbo decode speed")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"JPEG re-encode at each max side and quality\n{on}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plots(result: dict, out: Path, source: Path | None = None) -> list[Path]:
    """The charts a result holds data for, titled with what, on what, and when."""
    from bench.plotting import when
    on = f"{result.get('n_images', '?')} photos, {result.get('cpus', '?')}-core {result.get('host', 'host')}; " \
         f"measured {when(result, source)}"
    written = []
    if "table" in result:
        plot(result["table"], out.with_suffix(".png"), on)
        written.append(out.with_suffix(".png"))
    if "storage" in result:
        size = next(int(k.split("_")[2]) for k in result["storage"][0] if k.startswith("decode_crop_"))
        png = out.with_name(out.stem + ("-storage.png" if "table" in result else ".png"))
        storage_plot(result["storage"], size, png, on)
        written.append(png)
    return written


def build_parser():
    p = cli.parser("bench.convert", __doc__)
    p.add_argument("--images", help="folder of JPEGs (flat <wnid>_*.JPEG files); default: the demo source")
    p.add_argument("--sides", default="256,320,384,448,512,640")
    p.add_argument("--qualities", default="75,85,90,95")
    p.add_argument("--workers", default=f"1,{os.cpu_count() or 1}")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-quality", action="store_true", help="skip the max side x quality table")
    p.add_argument("--storage", default=None,
                   help="ffcv storage table: MODE:MAXSIDE,... (MODE jpg | raw | proportion@P), e.g. "
                        "jpg:512,jpg:320,jpg:256,proportion@0.5:512,raw:320,raw:256")
    p.add_argument("--storage-size", type=int, default=160, help="training resolution for the storage table")
    p.add_argument("--storage-quality", type=int, default=90)
    add_out(p, "convert-<host>", "the JSON and PNGs")
    p.add_argument("--replot", metavar="JSON", help="redraw the PNGs beside a bench.convert JSON; measure nothing")
    return p


@cli.one_line_errors
def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.replot:
        return cli.replot(p, a, lambda d, png, src: ", ".join(map(str, plots(d, src, src))) or "nothing: no chart data")
    a.out = str(out_path(p, a, f"convert-{platform.node() or 'host'}"))
    if a.images and not Path(a.images).is_dir():
        raise FileNotFoundError(f"--images {a.images}: not a folder")
    files = photo_files(a.images)
    result = {"host": platform.node(), "cpus": os.cpu_count(), "images_source": a.images or "demo",
              "n_images": len(files), "platform": platform.platform(), "measured_at": today()}
    if not a.skip_throughput:
        result["throughput"] = throughput(files, sorted({int(w) for w in a.workers.split(",")}))
    if not a.skip_quality:
        result["table"] = size_quality_table(files, [int(s) for s in a.sides.split(",")],
                                             [int(q) for q in a.qualities.split(",")])
    if a.storage:
        result["storage"] = storage_table(files, a.storage.split(","), a.storage_quality, a.storage_size)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    if "table" in result:
        print(markdown(result["table"], len(files)))
    if "storage" in result:
        print(storage_markdown(result["storage"], a.storage_size))
    print(f"wrote {a.out}" + "".join(f", {png}" for png in plots(result, Path(a.out), Path(a.out))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
