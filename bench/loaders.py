"""Loader throughput per backend and image size, against the decode limit and the model.

    python -m bench.loaders --data data/demo --backends opencv,ffcv --sizes 64
    python -m bench.loaders --images PHOTOS         # converts real photos first
    python -m bench.loaders --images PHOTOS --publish   # update bench/results/loaders-cpu2.json
    python -m bench.loaders --replot runs/bench/loaders-cpu2.json   # redraw the chart only

Per (backend, size): time of the first epoch (numba compilation, DALI pipeline build, worker
start-up), steady-state images/s over the following epochs, CPU cores used (process CPU time,
waited-for children included, / wall time), and peak RSS. Reference lines from the same run:
the raw decode limit (libjpeg-turbo decode of the same stored bytes on one core, times the
cores given) and the training-step throughput of `--model` on the present device. Writes JSON
+ PNG into --out (default runs/bench/; --publish: bench/results/, which tools/estimate_cost.py
--plan and bench.feed read) and prints a markdown table. `--stages` adds the per-stage cost
breakdown of each CPU backend (bench/stages.py) from the same run: stages-*.json + PNG.
Every name in --backends is checked before anything is measured.

Before/after in one run: `ffcv-fulldecode` is ffcv with its own full-decode decoders (before
loaders/ffcv_decode.py); any name with `:mmap` hands its batches to normalization on fresh
mmap'd pages (before fastmix/devices/allocator.py). Their rows carry `variant_of`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench import cli
from bench.cli import add_out, alias, out_path
from bench.decode import decode_rate_per_core
from bench.plotting import today
from bench.variants import BETON_READERS, apply_suffix, ffcv_side, prepare_side_variant, side_variant, \
    unknown_backends, NOT_MEASURED
from loaders import make_loader


def cpu_seconds() -> float:
    """CPU time of this process, its live children (persistent loader workers) and exited ones."""
    import psutil
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


class PeakRSS:
    """Largest RSS of this process plus its children (loader workers), sampled every 50 ms."""

    def __init__(self):
        import psutil
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(True))
            except Exception:  # a worker exited between listing and reading
                continue
            self.peak = max(self.peak, rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def loader_rows(rows: list[dict]) -> list[dict]:
    """The rows of loaders that make images: not `synthetic` (an older result has it; see NOT_MEASURED)."""
    return [r for r in rows if r["backend"] not in NOT_MEASURED]


def run_epoch(loader) -> int:
    n = 0
    for images, labels in loader:
        n += len(labels)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n


def build_loader(backend: str, data: str, size: int, args):
    """A benchmark name -> its loader. Besides the backends: `dali-cpu`/`dali-gpu` (the decode
    device), `ffcv-fulldecode` (ffcv's own decoders: the before of the DCT-scaled decode),
    `ffcv@SIDE` (ffcv on the same photos stored at max side SIDE: prepare_side_variant), and a
    `:mmap` suffix on any name (the normalized batches are fresh mmap'd pages, as before
    fastmix/devices/allocator.py). The suffix must be applied in the measuring process, before any batch."""
    side = ffcv_side(backend)
    if side:
        data, backend = side_variant(data, side), backend.replace(f"@{side}", "", 1)
    name = apply_suffix(backend)
    kw = {"batch_size": args.batch_size, "image_size": size, "device": args.device, "workers": args.workers,
          "dtype": args.dtype}
    if name in ("dali-cpu", "dali-gpu"):
        kw["decode_device"] = "cpu" if name == "dali-cpu" else "mixed"
        name = "dali"
    if name == "pil":
        kw["imagefolder"] = args.imagefolder
    fast = name != "ffcv-fulldecode"
    loader = make_loader("ffcv" if not fast else name, data, "train", **kw)
    if not fast:
        loader.fast_decode = False
    return loader


def variant_of(backend: str) -> str:
    """The loader a benchmark name measures: `ffcv-fulldecode` and `<name>:mmap` are its befores."""
    name = backend.partition(":")[0]
    return "ffcv" if name == "ffcv-fulldecode" else name


def measure(backend: str, data: str, size: int, args) -> dict:
    rss = PeakRSS()
    loader = build_loader(backend, data, size, args)
    t0 = time.perf_counter()
    run_epoch(loader)  # warm-up: compilation, pipeline build, first reads
    first = time.perf_counter() - t0
    c0, t0, n, e = cpu_seconds(), time.perf_counter(), 0, 0
    # At least `epochs` epochs and `min_seconds` of wall time: CPU time is counted in 10 ms ticks
    # per process, so a window of milliseconds (the synthetic loader) would report nonsense cores.
    while e < args.epochs or time.perf_counter() - t0 < getattr(args, "min_seconds", 2.0):
        e += 1
        loader.set_epoch(e)
        n += run_epoch(loader)
    wall = time.perf_counter() - t0
    return {"backend": backend, "image_size": size, "images_per_s": round(n / wall, 1),
            "first_epoch_s": round(first, 2), "cpu_cores_used": round((cpu_seconds() - c0) / wall, 2),
            "peak_rss_mb": round(rss.stop()), "images": n, "epochs": e, "seconds": round(wall, 2)}


def stored_jpegs(data: str, limit: int) -> dict[str, list[bytes]]:
    """The JPEG bytes each format actually stores (the .beton holds its own q-encoded copies)."""
    from loaders.common import LoaderConfig, manifest_split
    from loaders.shardindex import ShardIndex
    out = {}
    if manifest_split(LoaderConfig(data=data))["shards"]:  # an ffcv-only conversion has none
        index = ShardIndex(LoaderConfig(data=data))
        out["wds"] = [index.read(i) for i in range(min(limit, len(index)))]
    beton = Path(data) / "ffcv" / "train.beton"
    if beton.is_file():
        from fastmix.data.betonread import read_jpegs
        out["ffcv"] = [j for j in read_jpegs(beton) if j is not None][:limit]  # raw-stored images need no decode
    return out


def model_rate(name: str, size: int, args) -> float:
    """Training images/s of `name` on the present device (fwd + bwd + AdamW, channels_last):
    the profiler's own step. fp16 on CUDA (a T4 has no bf16); fp32 on CPU, where bf16
    without AMX ran 23x slower."""
    from fastmix.perf.profiler import ProfileSpec, build_step, time_steps
    device = torch.device(args.device)
    spec = ProfileSpec(name, args.model_batch, size, "fp16" if device.type == "cuda" else "fp32", "on")
    step, _ = build_step(spec, device)
    times, _ = time_steps(step, device, args.model_steps, warmup=1)
    return args.model_batch / float(np.median(times))


def significant(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def verdicts(rows: list[dict], cpu_count: int) -> None:
    """Per row: loader- or compute-bound, and the cores this loader needs to feed the model
    (model img/s over the loader's img/s per core used). A row claiming more cores than the
    machine has is a measurement error, and is refused rather than printed."""
    for r in rows:
        if r["cpu_cores_used"] > cpu_count * 1.05:
            raise ValueError(f"{r['backend']} at {r['image_size']} px: {r['cpu_cores_used']} cores used on a "
                             f"{cpu_count}-core machine (measurement window too short?)")
        r["bound"] = "loader-bound" if r["images_per_s"] < r["model_images_per_s"] else "compute-bound"
        per_core = r["images_per_s"] / max(r["cpu_cores_used"], 0.01)
        r["cores_to_feed_model"] = significant(r["model_images_per_s"] / per_core)


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | size | img/s | first epoch s | CPU cores used | peak RSS MB | decode limit img/s | "
             "vs decode limit | model img/s | verdict | cores to feed model |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['image_size']} | {r['images_per_s']} | {r['first_epoch_s']} | "
                     f"{r['cpu_cores_used']} | {r['peak_rss_mb']:.0f} | {r['decode_limit_images_per_s']} | "
                     f"{r['images_per_s'] / r['decode_limit_images_per_s']:.2f} | {r['model_images_per_s']} | "
                     f"{r['bound']} | {r['cores_to_feed_model']} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, source: Path | None = None) -> None:
    """Real backends on their own linear axis, grouped by size, one colour per backend (a before-variant
    in its base's lighter shade), each bar's decode limit as a black tick and the model's training
    rate as a red line (the ceiling: no loader can make training faster). A `synthetic` row of an
    older result is left out: it timed the loop handing back one batch held in memory (tens of millions
    of "images"/s), not a loader. The title says what, on what, and when."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plotting import backend_colors, is_before, title
    rows = real = loader_rows(result["rows"])
    sizes = list(dict.fromkeys(r["image_size"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in real))
    colors = backend_colors(backends)
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.85 / max(len(backends), 1)
    for k, b in enumerate(backends):
        for i, s in enumerate(sizes):
            r = next((r for r in real if r["backend"] == b and r["image_size"] == s), None)
            if r is None:
                continue
            x = i + (k - (len(backends) - 1) / 2) * width
            ax.bar(x, r["images_per_s"], width, color=colors[b], label=b if i == 0 else None,
                   hatch="//" if is_before(b) else None, edgecolor="white", lw=0.3)
            ax.plot([x - width / 2, x + width / 2], [r["decode_limit_images_per_s"]] * 2, color="k", lw=1.2,
                    label="decode limit of the stored bytes" if k == 0 and i == 0 else None)
    for i, s in enumerate(sizes):
        m = next((r["model_images_per_s"] for r in rows if r["image_size"] == s), None)
        if m:
            ax.plot([i - 0.45, i + 0.45], [m, m], color="r", lw=2,
                    label=f"{rows[0]['model']} training step ({m:g} img/s at {s} px)" if i == 0 else None)
    ax.set_xticks(range(len(sizes)), [f"{s} px" for s in sizes])
    ax.set(ylabel="images / s (steady state)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    on = f"{result.get('images', '?')} images, batch {result.get('batch_size', '?')}, {result.get('workers', '?')} " \
         f"workers on a {result.get('cpu_count', '?')}-core {result.get('device', '?')}"
    fig.suptitle(title("Loader throughput per backend and image size", on, result, source), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prepare_images(images: str) -> str:
    """Convert a flat folder of `<wnid>_*.JPEG` photos once (train split only) for benchmarking."""
    from bench.convert import as_imagefolder
    from fastmix.data.convert import ConvertConfig, convert
    out = Path("data") / f"bench-{Path(images).name}"
    if not (out / "manifest.json").exists():
        # The symlink tree stays beside the output: the pil backend reads it as the ImageFolder.
        src = Path("data") / f"bench-{Path(images).name}-src"
        if src.exists():
            shutil.rmtree(src)
        src = as_imagefolder(sorted(Path(images).iterdir()), src)
        convert(ConvertConfig(source=str(src), out=str(out), num_classes=None, splits=("train",),
                              overwrite=True))
    return str(out)


def stage_breakdown(rows: list[dict], data: str, a, out: Path, device_name: str) -> None:
    """bench.stages for every CPU backend row, each in a fresh forked process, with the rows'
    measured CPU time per image (the residual is the hand-off)."""
    from bench import stages
    staged = []
    for r in rows:
        if r["backend"].partition(":")[0].split("@")[0] not in stages.CPU_BACKENDS:
            continue
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            staged.append(pool.submit(stages.measure_stages, r["backend"], data, r["image_size"], a.batch_size,
                                      a.repeats, a.imagefolder).result())
        print(staged[-1], flush=True)
    stages.with_loader_rows(staged, rows)
    stages.write(staged, out, {"data": data, "device": device_name, "workers": a.workers,
                               "batch_size": a.batch_size, "repeats": a.repeats, "loader_rows": "same run"})


def build_parser():
    p = cli.parser("bench.loaders", __doc__)
    p.add_argument("--data", default="data/demo", help="a converted folder (default: %(default)s)")
    p.add_argument("--images", help="flat folder of <wnid>_*.JPEG photos to convert and use instead")
    p.add_argument("--imagefolder", help="original tree for the pil backend (default: the manifest's source)")
    p.add_argument("--backends", default="pil,pil-wds,ffcv,opencv,dali-cpu,dali-gpu,nvjpeg,resident",
                   help="comma-separated (default: %(default)s); also the befores of the loader work: "
                        "ffcv-fulldecode (ffcv's own decoders), NAME:mmap (normalized batches on fresh mmap'd "
                        "pages, as before fastmix/devices/allocator.py); and ffcv@SIDE / opencv@SIDE: on the same "
                        "photos stored at max side SIDE (converted once)")
    p.add_argument("--sizes", default="160,192,224", help="image sizes in px (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="steady-state epochs after the warm-up one (at least)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="and at least this much steady-state time")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   default="float16" if torch.cuda.is_available() else "float32", help="the batches' dtype")
    p.add_argument("--model", default="convmixer_768_32")
    p.add_argument("--model-batch", type=int, default=4)
    p.add_argument("--model-steps", type=int, default=2)
    add_out(p, "loaders-<cpu|gpu><workers>", "the JSON and PNG (and the stages-* ones)")
    p.add_argument("--stages", action="store_true",
                   help="also the per-stage breakdown of each CPU backend (bench/stages.py): stages-*.json + PNG")
    p.add_argument("--repeats", type=int, default=3, help="--stages: best of this many passes per stage")
    alias(p, "--stage-repeats", "--repeats")
    p.add_argument("--replot", metavar="JSON", help="redraw the PNG beside a loaders JSON from it; measure nothing")
    return p


@cli.one_line_errors
def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.replot:
        return cli.replot(p, a, plot)
    unknown = unknown_backends(a.backends.split(","))
    if unknown:
        p.error(f"--backends: {'; '.join(unknown)}")
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes {a.sizes!r}: expected comma-separated pixel sizes, e.g. 160,224")
    out = out_path(p, a, f"loaders-{'gpu' if a.device.startswith('cuda') else 'cpu'}{a.workers}")
    data = prepare_images(a.images) if a.images else a.data
    manifest = cli.read_converted(data)
    if a.imagefolder is None and manifest["source"]["layout"] == "imagefolder":
        a.imagefolder = manifest["source"]["path"]
    backends = [b for b in a.backends.split(",") if b != "dali-gpu" or a.device.startswith("cuda")]
    jpegs = stored_jpegs(data, limit=100_000)  # every stored file (the decode limit's files: README)
    for side in sorted({ffcv_side(b) for b in backends} - {None}):
        jpegs[f"ffcv@{side}"] = stored_jpegs(prepare_side_variant(data, side), limit=100_000)["ffcv"]
    per_core = {fmt: decode_rate_per_core(b) for fmt, b in jpegs.items()}
    limits = {fmt: rate * a.workers for fmt, rate in per_core.items()}
    rows = []
    for size in sizes:
        for backend in backends:
            # A fresh forked process per measurement: its own warm-up, CPU time and memory.
            # (Forked, not spawned: spawn would make DataLoader workers spawn too.) The parent
            # has not touched CUDA yet, so forking is safe on GPU machines too.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
                try:
                    row = pool.submit(measure, backend, data, size, a).result()
                except (ImportError, FileNotFoundError) as e:
                    print(f"skip {backend}: {e}")
                    continue
            fmt = f"ffcv@{ffcv_side(backend)}" if ffcv_side(backend) else "ffcv" if backend.startswith(BETON_READERS) else "wds"
            row["decode_limit_images_per_s"] = round(limits[fmt], 1)
            if backend != variant_of(backend):  # a before-measurement, not a loader to pick (bench.feed skips it)
                row["variant_of"] = variant_of(backend)
            rows.append(row)
            print(row, flush=True)
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    model_ips = {size: round(model_rate(a.model, size, a), 2) for size in sizes}
    for row in rows:
        row.update(model=a.model, model_images_per_s=model_ips[row["image_size"]], device=device_name,
                   workers=a.workers, cpu_count=os.cpu_count())
    verdicts(rows, os.cpu_count() or 1)
    result = {"data": data, "images": manifest["splits"]["train"]["written"], "device": device_name,
              "workers": a.workers, "cpu_count": os.cpu_count(),
              "decode_limit": {"method": "bench.decode: OpenCV imdecode (libjpeg-turbo), 1 thread, best of 5, x workers",
                               "files": {fmt: f"{len(b)} JPEGs as stored in the {fmt} output"
                                         for fmt, b in jpegs.items()},
                               "per_core_images_per_s": {k: round(v, 1) for k, v in per_core.items()}}, "batch_size": a.batch_size, "dtype": a.dtype,
              "torch": torch.__version__, "platform": platform.platform(), "measured_at": today(), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(markdown(rows))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if a.stages:
        stage_breakdown(rows, data, a, out.with_name(cli.derived_name(out.stem, "stages") + ".json"), device_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
