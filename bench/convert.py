"""Conversion benchmark: throughput per worker, and output size / decode speed vs max side and quality.

    python -m bench.convert --images ../shared/data/imagenet-sample   # real photos
    python -m bench.convert                                           # demo source

Writes bench/results/convert-<host>.json, a PNG of the table, and prints the markdown table.
The table encodes as ffcv's RGBImageField does (OpenCV, libjpeg-turbo) and decodes with
OpenCV's libjpeg-turbo on one core, the decoder family FFCV and DALI-CPU use.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.decode import decode_rate_per_core
from fastmix.data.convert import ConvertConfig, convert
from fastmix.data.images import open_rgb
from fastmix.data.synth import demo_source

RESULTS = Path(__file__).resolve().parent / "results"


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


def markdown(rows: list[dict], n_images: int) -> str:
    lines = ["| max side | quality | KB/image | raw KB/image | decode img/s (1 core) | PSNR dB | ImageNet-100 train GB |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gb = r["kb_per_image"] * 126_689 / 1e6
        lines.append(f"| {r['max_side']} | {r['quality']} | {r['kb_per_image']} | {r['raw_kb_per_image']} "
                     f"| {r['decode_images_per_s_1core']} | {r['psnr_db']} | {gb:.1f} |")
    return "\n".join(lines) + f"\n\n({n_images} images; GB = KB/image x 126,689 train images.)"


def plot(rows: list[dict], path: Path) -> None:
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", help="folder of JPEGs (flat <wnid>_*.JPEG files); default: the demo source")
    p.add_argument("--sides", default="256,320,384,448,512,640")
    p.add_argument("--qualities", default="75,85,90,95")
    p.add_argument("--workers", default=f"1,{os.cpu_count() or 1}")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--out", default=str(RESULTS / f"convert-{platform.node() or 'host'}.json"))
    a = p.parse_args(argv)
    files = photo_files(a.images)
    result = {"host": platform.node(), "cpus": os.cpu_count(), "images_source": a.images or "demo",
              "n_images": len(files), "platform": platform.platform()}
    if not a.skip_throughput:
        result["throughput"] = throughput(files, sorted({int(w) for w in a.workers.split(",")}))
    result["table"] = size_quality_table(files, [int(s) for s in a.sides.split(",")],
                                         [int(q) for q in a.qualities.split(",")])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    plot(result["table"], Path(a.out).with_suffix(".png"))
    print(markdown(result["table"], len(files)))
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
