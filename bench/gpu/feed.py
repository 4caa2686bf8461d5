"""The loaders phase: every loader that can run here, each in its own child process, against the
training rates the matrix measured; `synthetic` (no decode at all) is the ceiling.

A loader whose compiled parts do not import here (loaders.unavailable) is one skipped row with
the import error. Each row is a child (`python -m bench.gpu.feed`) with its share of the phase's
time: a loader that hangs loses its row, not the phase. Verdicts say which images they were
measured on; on synthetic JPEGs they are labelled `synthetic`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from loaders import unavailable

from .children import run_child, time_left
from .data import SMALL_SIZE, images_label, prepare_data
from .steps import fastest_eager

GPU_LOADERS = ["nvjpeg", "dali-gpu", "dali-cpu", "opencv", "ffcv", "pil-wds", "resident", "synthetic"]
CPU_LOADERS = ["nvjpeg", "pil-wds", "resident", "synthetic"]  # what a CPU run measures (the rest: GPU machines)
SMALL_LOADERS = ["nvjpeg", "opencv", "ffcv", "pil-wds"]  # the 64 px photos: decoders, not the ceiling


def loader_backends(ctx, wanted: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The backends to measure here, and why the others are skipped. A CPU run measures CPU_LOADERS
    and lists the GPU machine's other rows as skipped: why they would not import, else that a CPU
    run does not measure them."""
    cpu = ctx.device.type != "cuda" and wanted is None
    wanted = wanted or GPU_LOADERS
    skipped = {b: why for b in wanted if (why := unavailable(b))}
    if cpu:
        skipped.update({b: "not measured by a CPU run (the GPU machine measures it)" for b in wanted if b not in CPU_LOADERS and b not in skipped})
    return [b for b in wanted if b not in skipped], skipped


def measure_rows(ctx, data: Path, backends: list[str], size: int, tag: str) -> list[dict]:
    """One row per backend at `size` px; each set of rows (tag) is its own list, kept in ctx.partial."""
    rows = ctx.partial.setdefault(f"{tag}_rows", [])
    for k, backend in enumerate(backends):
        share = time_left(ctx) / (len(backends) - k)  # a hanging loader loses its row only
        out = ctx.work / f"loader-{tag}-{backend}.json"
        cmd = [sys.executable, "-m", "bench.gpu.feed", "--backend", backend, "--data", str(data),
               "--image-size", str(size), "--batch-size", str(ctx.batch), "--device", str(ctx.device),
               "--report", str(out),
               "--epochs", "1" if ctx.smoke else "2", "--min-seconds", "0.5" if ctx.smoke else "2"]
        code, log = run_child(ctx, f"loader-{tag}-{backend}", cmd, timeout=max(share, 5.0))
        row = json.loads(out.read_text()) if code == 0 and out.is_file() else \
            {"backend": backend, "error": f"exit {code}" + (" (its share of the phase's time ran out)" if code == -9
                                                           else f": {log[-600:]}")}
        row["set"] = tag
        rows.append(row)
    return rows


def loaders(ctx) -> dict:
    data = prepare_data(ctx)
    backends, skipped = loader_backends(ctx)
    label = images_label(ctx)
    rows = measure_rows(ctx, data, backends, ctx.image_size, "main")
    train_rates = {m: c["images_per_s"] for m in ctx.variants if (c := fastest_eager(ctx, m))}
    for r in rows:
        r["images"] = label
        if "images_per_s" not in r:
            continue
        per_core = r["images_per_s"] / max(r["cpu_cores_used"], 1e-6)
        r["feeds"] = {m: {"can_feed": r["images_per_s"] >= rate, "cores_needed": round(rate / per_core, 2),
                          "images": label} for m, rate in train_rates.items()}
    small, small_skipped = [], {}
    if ctx.small_images:
        small_data = prepare_data(ctx, small=True)
        small_backends, small_skipped = loader_backends(ctx, SMALL_LOADERS)
        small = measure_rows(ctx, small_data, small_backends, SMALL_SIZE, "small")
        for r in small:
            r["images"] = images_label(ctx, small=True)
    head = {f"{r['backend']} img/s": r["images_per_s"] for r in rows if "images_per_s" in r}
    head.update({f"{r['backend']} img/s at {SMALL_SIZE} px": r["images_per_s"] for r in small if "images_per_s" in r})
    return {"headline": head, "rows": rows, "small_rows": small, "skipped_backends": skipped,
            "small_skipped_backends": small_skipped, "training_rates": train_rates, "images": label,
            "cores": os.cpu_count(), "data": str(data)}


def main(argv=None) -> int:
    """One loader row, in a child: bench.loaders.measure on all cores, written as JSON."""
    p = argparse.ArgumentParser(description="one loader row of bench.gpu's loaders phase")
    for flag in ("--backend", "--data", "--device"):
        p.add_argument(flag, required=True)
    p.add_argument("--report", required=True, help="JSON file to write")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    from bench.loaders import measure
    args = argparse.Namespace(batch_size=a.batch_size, device=a.device, workers=os.cpu_count() or 1,
                              dtype="float16" if a.device.startswith("cuda") else "float32", imagefolder=None,
                              epochs=a.epochs, min_seconds=a.min_seconds)
    Path(a.report).write_text(json.dumps(measure(a.backend, a.data, a.image_size, args)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
