"""Where each loader's CPU time goes: microseconds per image per stage, on the same images.

    python -m bench.loaders --images PHOTOS --stages   # with the loader table
    python -m bench.stages --data data/bench-imagenet-sample --sizes 224,160   # stages only

Each stage of a backend's train path (read, decode, crop/resize, flip, collate, convert +
normalize) is run on its own, on one core (one thread for OpenCV, torch and DALI), over every
stored image, best of `repeats` passes; a stage's cost is its CPU time per image. DALI's stages
run inside its pipeline, so they are measured as differences between pipelines that stop one
operator later (reader; + fused crop-decode; + resize; + crop_mirror). With the loader table
(bench.loaders --stages), "hand-off + other" is what the loader spent beyond those stages:
its CPU time per image (cores used / images per s) minus their sum: worker IPC or thread
hand-off, batching, scheduling, and contention between the busy cores. Next to each bar, the
decode-only limit for the same stored bytes (bench/decode.py). The stages are best-of-N on an
idle core and the loader is one long window with every core busy, so on a shared machine the
residual absorbs the difference; a negative one means the run was too noisy to split.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench import cli
from bench.cli import add_out, out_path
from bench.plotting import today
from bench.variants import apply_suffix, side_variant, unknown_backends

CPU_BACKENDS = ("pil", "pil-wds", "ffcv", "ffcv-fulldecode", "opencv", "dali-cpu", "nvjpeg")
STAGES = ("read", "decode", "crop/resize", "flip", "collate", "convert+normalize", "hand-off+other")


def best_us(fn, n: int, repeats: int) -> float:
    """Best-of-`repeats` CPU time of fn() (this process, all its threads) in microseconds per
    item: CPU time, as the loader's cost per image is, so time spent descheduled on a busy
    machine does not count as work."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def one_core():
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _normalize_us(batches: list[torch.Tensor], size: int, repeats: int) -> float:
    from loaders.common import LoaderConfig, normalize
    cfg = LoaderConfig(data=".", image_size=size)
    n = sum(len(b) for b in batches)
    return best_us(lambda: [normalize(b, cfg) for b in batches], n, repeats)


def _batched(items: list, batch: int) -> list[list]:
    return [items[k:k + batch] for k in range(0, len(items), batch)]


def pil_stages(data: str, size: int, batch: int, repeats: int, from_shards: bool, imagefolder: str | None) -> dict:
    """pil / pil-wds: the torchvision transforms of loaders.pil, one op at a time."""
    from PIL import Image
    from torch.utils.data import default_collate

    from loaders.common import LoaderConfig
    from loaders.pil import pil_transform
    from loaders.shardindex import ShardIndex
    cfg = LoaderConfig(data=data, image_size=size)
    crop, flip, to_tensor = pil_transform(cfg).transforms  # the backend's own ops
    index = ShardIndex(cfg)
    if from_shards:
        read = lambda: [index.read(i) for i in range(len(index))]  # noqa: E731
    else:
        if not imagefolder:
            raise FileNotFoundError("pil stages: need the ImageFolder tree (--imagefolder or the manifest's source)")
        files = sorted(Path(imagefolder, "train").glob("*/*"))
        read = lambda: [f.read_bytes() for f in files]  # noqa: E731
    blobs = read()
    n = len(blobs)
    out = {"read": best_us(read, n, repeats)}
    out["decode"] = best_us(lambda: [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], n, repeats)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    torch.manual_seed(0)
    out["crop/resize"] = best_us(lambda: [crop(im) for im in images], n, repeats)
    cropped = [crop(im) for im in images]
    out["flip"] = best_us(lambda: [flip(im) for im in cropped], n, repeats)
    out["convert+normalize"] = best_us(lambda: [to_tensor(im) for im in cropped], n, repeats)
    samples = _batched([(to_tensor(im), 0) for im in cropped], batch)
    out["collate"] = best_us(lambda: [default_collate(s) for s in samples], n, repeats)
    out["convert+normalize"] += _normalize_us([default_collate(s)[0] for s in samples], size, repeats)
    return out


def ffcv_jpegs(data: str):
    """(bytes views into the .beton as ffcv's page-cache reader sees them, heights, widths)."""
    from fastmix.data.betonread import StoredImages
    path = Path(data) / "ffcv" / "train.beton"
    store = StoredImages(path)
    if not store.is_jpeg.all():
        raise ValueError(f"{path}: stages assume JPEG-stored images (write_mode jpg)")
    return store, [store.encoded(i) for i in range(len(store))], store.heights, store.widths


def psnr_vs_pil(jpegs, boxes, outputs: np.ndarray) -> float:
    """Median PSNR (dB) of a backend's train outputs (N x S x S x 3, unflipped) against what
    torchvision's RandomResizedCrop makes of the same stored bytes and the same crop boxes
    (PIL decode, crop, bilinear with antialias): how far its faster path is from the same
    augmentation."""
    from PIL import Image
    size, db = outputs.shape[1], []
    for b, (x1, y1, x2, y2), out in zip(jpegs, boxes, outputs):
        # crop, then resize, as torchvision does (resize(box=) would let the filter see past the box)
        ref = Image.open(io.BytesIO(bytes(b))).convert("RGB").crop((x1, y1, x2, y2)).resize((size, size), Image.BILINEAR)
        mse = np.mean((np.asarray(ref, np.float64) - out) ** 2)
        db.append(10 * np.log10(255 ** 2 / max(mse, 1e-10)))
    return float(np.median(db))


def opencv_stages(data: str, size: int, batch: int, repeats: int) -> dict:
    """opencv: the backend's own decode (DCT-scaled) and resize_into, one image at a time."""
    import cv2

    from loaders.geometry import dct_denominator, resized_crop_boxes, scaled_span
    from loaders.opencv_loader import decode_rgb, resize_into
    store, views, heights, widths = ffcv_jpegs(data)
    n = len(views)
    boxes = resized_crop_boxes(heights, widths, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)).tolist()
    dens = [dct_denominator(y2 - y1, x2 - x1, size, size) for x1, y1, x2, y2 in boxes]
    out = {"read": best_us(lambda: [store.encoded(i) for i in range(n)], n, repeats)}
    out["decode"] = best_us(lambda: [decode_rgb(v, d) for v, d in zip(views, dens)], n, repeats)
    crops = []
    for v, d, (x1, y1, x2, y2) in zip(views, dens, boxes):
        image = decode_rgb(v, d)
        r0, r1 = scaled_span(y1, y2 - y1, d, image.shape[0])
        c0, c1 = scaled_span(x1, x2 - x1, d, image.shape[1])
        crops.append(image[r0:r1, c0:c1])
    dst = np.empty((n, size, size, 3), np.uint8)
    out["crop/resize"] = best_us(lambda: [resize_into(c, dst[k]) for k, c in enumerate(crops)], n, repeats)
    resized = dst.copy()
    # The flip is written by the resize (cv2.flip into the batch slot): its cost is that pass, on half the images.
    out["flip"] = best_us(lambda: [cv2.flip(resized[k], 1, dst=dst[k]) for k in range(0, n, 2)], n, repeats)
    out["collate"] = 0.0  # written straight into the batch
    batches = [torch.from_numpy(resized[k:k + batch]).permute(0, 3, 1, 2) for k in range(0, n, batch)]
    out["convert+normalize"] = _normalize_us(batches, size, repeats)
    return out, psnr_vs_pil(views, boxes, resized)


def ffcv_stages(data: str, size: int, batch: int, repeats: int, fast: bool) -> dict:
    """ffcv (DCT-scaled decode, loaders/ffcv_decode.py) or ffcv-fulldecode (ffcv's own)."""
    from ffcv.fields.rgb_image import get_random_crop
    from ffcv.libffcv import imdecode, resize_crop

    from loaders.geometry import dct_denominator, scaled_span
    store, views, heights, widths = ffcv_jpegs(data)
    n = len(views)
    np.random.seed(0)
    crops = [get_random_crop(h, w, np.array((0.08, 1.0)), np.array((3 / 4, 4 / 3))) for h, w in zip(heights, widths)]
    dens = [dct_denominator(c[2], c[3], size, size) if fast else 1 for c in crops]
    out = {"read": best_us(lambda: [store.encoded(i) for i in range(n)], n, repeats)}  # ffcv: zero-copy slices
    bufs = [np.empty((-(-h // d), -(-w // d), 3), np.uint8) for h, w, d in zip(heights, widths, dens)]

    def decode():
        for v, h, w, d, b in zip(views, heights, widths, dens, bufs):
            imdecode(v, b, h, w, h, w, 0, 0, 1, d, False, False)
    out["decode"] = best_us(decode, n, repeats)
    if not fast:  # the rejected alternative: TurboJPEG's lossless crop (tjTransform), then decode
        roi = np.empty(int(max(heights) * max(widths) * 3), np.uint8)

        def decode_roi():
            for v, h, w, (i, j, ch, cw) in zip(views, heights, widths, crops):
                y0, x0 = i // 16 * 16, j // 16 * 16  # MCU-aligned (16 px covers 4:2:0)
                imdecode(v, roi, h, w, i + ch - y0, j + cw - x0, x0, y0, 1, 1, True, False)
        out["decode_roi_tjtransform_for_reference"] = best_us(decode_roi, n, repeats)
    decode()
    dst = np.empty((n, size, size, 3), np.uint8)

    def crop_resize():
        for k, ((i, j, h, w), d, b) in enumerate(zip(crops, dens, bufs)):
            r0, r1 = scaled_span(i, h, d, b.shape[0])
            c0, c1 = scaled_span(j, w, d, b.shape[1])
            resize_crop(b, r0, r1, c0, c1, dst[k])
    out["crop/resize"] = best_us(crop_resize, n, repeats)
    db = psnr_vs_pil(views, [(j, i, j + w, i + h) for i, j, h, w in crops], dst.copy())
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import RandomHorizontalFlip

    from loaders.ffcv_decode import flip_in_place
    Compiler.set_num_threads(1)
    if fast:  # fused into the decoder: half the images mirrored in place
        flip_c = Compiler.compile(flip_in_place)
        flip_c(dst[0])  # compile outside the timing
        out["flip"] = best_us(lambda: [flip_c(dst[k]) for k in range(0, n, 2)], n, repeats)
    else:  # ffcv's RandomHorizontalFlip: every image copied, flipped or not
        flip_c = Compiler.compile(RandomHorizontalFlip().generate_code())
        flipped = np.empty_like(dst)
        flip_c(dst[:batch], flipped[:batch])
        out["flip"] = best_us(lambda: [flip_c(dst[k:k + batch], flipped[k:k + batch]) for k in range(0, n, batch)],
                              n, repeats)
    out["collate"] = 0.0  # ffcv decodes straight into the batch buffer
    batches = [torch.from_numpy(dst[k:k + batch]).permute(0, 3, 1, 2) for k in range(0, n, batch)]  # ToTorchImage
    out["convert+normalize"] = _normalize_us(batches, size, repeats)
    return out, db


def nvjpeg_stages(data: str, size: int, batch: int, repeats: int) -> dict:
    """nvjpeg backend with CPU decode (torchvision decode_jpeg + torch ops)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from loaders.common import LoaderConfig
    from loaders.geometry import resized_crop_boxes
    from loaders.shardindex import ShardIndex
    index = ShardIndex(LoaderConfig(data=data))
    n = len(index)
    read = lambda: [torch.frombuffer(bytearray(index.read(i)), dtype=torch.uint8) for i in range(n)]  # noqa: E731
    out = {"read": best_us(read, n, repeats)}
    blobs = read()
    out["decode"] = best_us(lambda: [decode_jpeg(b, mode=ImageReadMode.RGB) for b in blobs], n, repeats)
    images = [decode_jpeg(b, mode=ImageReadMode.RGB) for b in blobs]
    rng = np.random.default_rng(0)
    xyxy = resized_crop_boxes([im.shape[1] for im in images], [im.shape[2] for im in images], (0.08, 1.0), (3 / 4, 4 / 3), rng)
    boxes = [(y1, x1, y2 - y1, x2 - x1) for x1, y1, x2, y2 in xyxy.tolist()]  # top, left, height, width
    out["crop/resize"] = best_us(lambda: [F.resized_crop(im, *b, [size, size], antialias=True)
                                          for im, b in zip(images, boxes)], n, repeats)
    crops = [F.resized_crop(im, *b, [size, size], antialias=True) for im, b in zip(images, boxes)]
    out["flip"] = best_us(lambda: [F.horizontal_flip(c) for c in crops[::2]], n, repeats)
    out["collate"] = best_us(lambda: [torch.stack(c) for c in _batched(crops, batch)], n, repeats)
    out["convert+normalize"] = _normalize_us([torch.stack(c) for c in _batched(crops, batch)], size, repeats)
    return out


def dali_stages(data: str, size: int, batch: int, repeats: int) -> dict:
    """dali-cpu: per-image time of pipelines that stop one operator later, differenced."""
    from nvidia.dali import fn, pipeline_def, types

    from loaders.common import LoaderConfig
    from loaders.shardindex import ShardIndex
    index = ShardIndex(LoaderConfig(data=data))
    tars, n = [str(t) for t in index.tars], len(index)

    def build(upto: str):
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1)
        def pipe():
            jpg, _ = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
                                           ext=["jpg", "cls"], name="reader", pad_last_batch=True)
            if upto == "read":
                return jpg
            if upto == "full-decode":
                return fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
            x = fn.decoders.image_random_crop(jpg, device="cpu", output_type=types.RGB, random_area=[0.08, 1.0],
                                              random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
            if upto == "crop-decode":
                return x
            x = fn.resize(x, resize_x=size, resize_y=size, antialias=True)
            if upto == "resize":
                return x
            return fn.crop_mirror_normalize(x, dtype=types.UINT8, output_layout="HWC", crop=(size, size),
                                            mirror=fn.random.coin_flip(probability=0.5))
        p = pipe()
        p.build()
        steps = -(-n // batch)
        p.run()  # warm-up
        return best_us(lambda: [p.run() for _ in range(steps)], steps * batch, repeats)

    t = {k: build(k) for k in ("read", "full-decode", "crop-decode", "resize", "mirror")}
    out = {"read": t["read"], "decode": t["crop-decode"] - t["read"], "crop/resize": t["resize"] - t["crop-decode"],
           "flip": t["mirror"] - t["resize"], "collate": 0.0,
           "decode_full_for_reference": t["full-decode"] - t["read"]}
    batches = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
               for _ in range(-(-n // batch))]
    out["convert+normalize"] = _normalize_us(batches, size, repeats)
    return out


def measure_stages(backend: str, data: str, size: int, batch: int = 64, repeats: int = 3,
                   imagefolder: str | None = None) -> dict:
    """One backend's stage costs (us/image) at `size`, in this process, on one core."""
    one_core()
    name = apply_suffix(backend)  # as bench.loaders: `:mmap` batches on fresh mmap'd pages
    if "@" in name:  # ffcv / opencv on the same photos stored at a lower max side
        name, side = name.split("@")
        data = side_variant(data, int(side))
    if name in ("pil", "pil-wds"):
        us = pil_stages(data, size, batch, repeats, name == "pil-wds", imagefolder)
    elif name in ("ffcv", "ffcv-fulldecode"):
        us = ffcv_stages(data, size, batch, repeats, fast=name == "ffcv")
    elif name == "opencv":
        us = opencv_stages(data, size, batch, repeats)
    elif name == "dali-cpu":
        us = dali_stages(data, size, batch, repeats)
    elif name == "nvjpeg":
        us = nvjpeg_stages(data, size, batch, repeats)
    else:
        raise ValueError(f"no stage breakdown for {backend!r} (CPU backends: {', '.join(CPU_BACKENDS)})")
    us, db = us if isinstance(us, tuple) else (us, None)  # ffcv, opencv: also their distance from PIL
    row = {"backend": backend, "image_size": size, "us_per_image": {k: round(v, 1) for k, v in us.items()}}
    return row | ({"psnr_vs_pil_db": round(db, 1)} if db is not None else {})


def with_loader_rows(stage_rows: list[dict], loader_rows: list[dict]) -> None:
    """Add each backend's measured CPU us/image and the residual hand-off + other."""
    for s in stage_rows:
        r = next((r for r in loader_rows if r["backend"] == s["backend"] and r["image_size"] == s["image_size"]), None)
        if r is None:
            continue
        total = r["cpu_cores_used"] / r["images_per_s"] * 1e6
        staged = sum(v for k, v in s["us_per_image"].items() if k in STAGES)
        s["us_per_image"]["hand-off+other"] = round(total - staged, 1)
        s["loader_cpu_us_per_image"] = round(total, 1)
        s["decode_limit_us_per_image"] = round(r["workers"] / r["decode_limit_images_per_s"] * 1e6, 1)


def markdown(rows: list[dict]) -> str:
    head = ("| backend | size | " + " | ".join(STAGES) + " | loader CPU µs/img | decode-only limit µs/img | "
            "PSNR vs PIL dB |")
    lines = [head, "|---|---:|" + "---:|" * (len(STAGES) + 3)]
    for r in rows:
        us = r["us_per_image"]
        cells = " | ".join(f"{us[k]:.0f}" if k in us else "–" for k in STAGES)
        lines.append(f"| {r['backend']} | {r['image_size']} | {cells} | {r.get('loader_cpu_us_per_image', '–')} | "
                     f"{r.get('decode_limit_us_per_image', '–')} | {r.get('psnr_vs_pil_db', '–')} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, source: Path | None = None) -> None:
    """One panel per image size, a horizontal stacked bar per backend (names readable at any count),
    the decode-only limit as a black tick; the title says what, on what, and when."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plotting import title
    rows = result["rows"]
    sizes = list(dict.fromkeys(r["image_size"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(len(sizes), 1, figsize=(10, 1.0 + 0.32 * len(backends) * len(sizes) + 0.6 * len(sizes)),
                             sharex=True, squeeze=False)
    colors = dict(zip(STAGES, plt.cm.tab10.colors))
    for ax, size in zip(axes[:, 0], sizes):
        sub = [r for r in rows if r["image_size"] == size]
        y = np.arange(len(sub))
        left = np.zeros(len(sub))
        for stage in STAGES:
            vals = np.array([max(r["us_per_image"].get(stage, 0.0), 0.0) for r in sub])
            ax.barh(y, vals, 0.7, left=left, color=colors[stage], label=stage)
            left += vals
        limits = [r.get("decode_limit_us_per_image") for r in sub]
        if any(limits):
            ax.scatter([v or np.nan for v in limits], y, marker="|", s=250, color="k", zorder=3,
                       label="decode-only limit (same bytes)")
        ax.set_yticks(y, [r["backend"] for r in sub], fontsize=9)
        ax.invert_yaxis()
        ax.set_ylabel(f"{size} px", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("CPU µs per image (one core)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    on = f"train path of each CPU backend, best of {result.get('repeats', '?')}, batch {result.get('batch_size', '?')}, " \
         f"{result.get('device', 'cpu')}"
    fig.suptitle(title("Where the loader's CPU time goes, per stage", on, result, source), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(rows: list[dict], out: Path, meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**meta, "stages": list(STAGES), "measured_at": today(), "rows": rows}
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"), out)
    print(markdown(rows))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def build_parser():
    p = cli.parser("bench.stages", __doc__)
    p.add_argument("--data", default="data/bench-imagenet-sample", help="a converted folder")
    p.add_argument("--imagefolder", help="original tree for pil (default: the manifest's source)")
    p.add_argument("--backends", default=",".join(CPU_BACKENDS))
    p.add_argument("--sizes", default="224,160")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    add_out(p, "stages-cpu", "the JSON and PNG")
    p.add_argument("--replot", metavar="JSON", help="redraw the PNG beside a stages JSON from it; measure nothing")
    return p


@cli.one_line_errors
def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.replot:
        return cli.replot(p, a, plot)
    unknown = unknown_backends(a.backends.split(","), CPU_BACKENDS)
    if unknown:
        p.error(f"--backends: {'; '.join(unknown)}")
    out = out_path(p, a, "stages-cpu")
    manifest = cli.read_converted(a.data)
    folder = a.imagefolder or manifest["source"]["path"]
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        for b in a.backends.split(","):
            try:
                rows.append(measure_stages(b, a.data, size, a.batch_size, a.repeats, folder))
            except ImportError as e:
                print(f"skip {b}: {e}")
                continue
            print(rows[-1], flush=True)
    write(rows, out, {"data": a.data, "batch_size": a.batch_size, "repeats": a.repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
