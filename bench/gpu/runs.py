"""Phases on real JPEGs: decoding and loaders against the training rates, the T4 fit, end-to-end.

The photos (`--images`, a flat folder of `<wnid>_*.JPEG`) are converted on the machine with
tools/convert_subset.py. Each photo is linked `--repeat` times under other names (so ~150 photos
give enough batches for 100 updates); every copy still goes through a real JPEG decode.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
from argparse import Namespace
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


from fastmix.devices.telemetry import Telemetry

from .steps import fastest_eager

ROOT = Path(__file__).resolve().parents[2]
# A T4 shows 15,109 MiB (15.8 GB); its CUDA context takes ~0.4 GB outside torch's allocator. The cap
# binds torch's allocator only: DALI's pools and nvJPEG's buffers come on top (the report says so).
T4_USABLE_GB = 15.0


def prepare_data(ctx) -> Path:
    """A converted folder (train + val): --data as given, else --images converted, else synthetic."""
    if ctx.data:
        return Path(ctx.data)
    out = ctx.work / "data"
    if (out / "manifest.json").is_file():
        return out
    src = ctx.work / "src"
    if ctx.images:
        photos = sorted(p for p in Path(ctx.images).iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        if not photos:
            raise FileNotFoundError(f"{ctx.images}: no .JPEG files")
        for p in photos:
            wnid = p.name.split("_")[0]
            for k in range(ctx.repeat):  # copy k of every class goes to val when k is the last
                split = "val" if k == ctx.repeat - 1 else "train"
                (src / split / wnid).mkdir(parents=True, exist_ok=True)
                link = src / split / wnid / f"{p.stem}-{k}{p.suffix}"
                if not link.exists():
                    link.symlink_to(p.resolve())
    else:
        from fastmix.data.synth import write_imagefolder
        # enough for ~10 updates an epoch at batch 64 on a GPU (100 updates must not mean 100 epochs)
        per_class = {"train": 16, "val": 4} if ctx.smoke else {"train": 160, "val": 10}
        write_imagefolder(src, 4, per_class, seed=0, sizes=[(160, 120), (120, 160)])
    cmd = [sys.executable, str(ROOT / "tools" / "convert_subset.py"), "--source", str(src), "--out", str(out),
           "--all-classes", "--overwrite", "--workers", str(os.cpu_count() or 1),
           "--formats", "wds,ffcv" if _importable("ffcv") else "wds"]  # a bare GPU machine has no ffcv
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"tools/convert_subset.py failed ({run.returncode}): {run.stderr[-2000:]}")
    return out


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module) is not None


def loader_backends(ctx) -> tuple[list[str], dict[str, str]]:
    """The backends to measure here, and why the others are skipped."""
    gpu = ctx.device.type == "cuda"
    wanted = ["nvjpeg", "dali-gpu", "dali-cpu", "opencv", "ffcv", "pil-wds"] if gpu else ["nvjpeg", "dali-cpu", "pil-wds"]
    skipped = {}
    if not _importable("nvidia.dali"):
        skipped.update({b: "DALI is not installed (README: installing DALI offline)" for b in wanted if "dali" in b})
    if not _importable("ffcv"):  # opencv reads the .beton through ffcv's Reader
        skipped.update({b: "ffcv is not installed" for b in ("ffcv", "opencv")})
    return [b for b in wanted if b not in skipped], skipped


def loaders(ctx) -> dict:
    from bench.loaders import measure
    data = prepare_data(ctx)
    backends, skipped = loader_backends(ctx)
    args = Namespace(batch_size=ctx.batch, device=str(ctx.device), workers=os.cpu_count() or 1,
                     dtype="float16" if ctx.device.type == "cuda" else "float32", imagefolder=None,
                     epochs=1 if ctx.smoke else 2)
    rows = []
    # Spawned, not forked: this process has initialized CUDA already.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for backend in backends:
            try:
                rows.append(pool.submit(measure, backend, str(data), ctx.image_size, args).result())
            except Exception as e:
                rows.append({"backend": backend, "error": f"{type(e).__name__}: {e}"})
    train_rates = {m: c["images_per_s"] for m in ctx.variants if (c := fastest_eager(ctx, m))}
    for r in rows:
        if "images_per_s" not in r:
            continue
        per_core = r["images_per_s"] / max(r["cpu_cores_used"], 1e-6)
        r["feeds"] = {m: {"can_feed": r["images_per_s"] >= rate, "cores_needed": round(rate / per_core, 2)}
                      for m, rate in train_rates.items()}
    head = {f"{r['backend']} img/s": r["images_per_s"] for r in rows if "images_per_s" in r}
    return {"headline": head, "rows": rows, "skipped_backends": skipped, "training_rates": train_rates,
            "cores": os.cpu_count(), "data": str(data)}


def train_run(ctx, name: str, args: list[str], memory_gb: float | None = None, timeout: float = 600) -> dict:
    """tools/train.py in a child process (bench.gpu.capped: optional memory cap, peak memory, OOM)."""
    out = ctx.work / name
    report = ctx.work / f"{name}.report.json"
    cmd = [sys.executable, "-m", "bench.gpu.capped", "--report", str(report)]
    cmd += ["--memory-gb", str(memory_gb)] if memory_gb else []
    cmd += ["--", "--out", str(out), *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(report.read_text()) if report.is_file() else {}
    result.update(returncode=run.returncode, out=str(out))
    if run.returncode != 0 and not result.get("oom"):
        result["log_tail"] = (run.stdout + run.stderr)[-3000:]
    summary = out / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        result.update(updates=s["updates"], median_update_s=s["median_update_s"], compile_s=s.get("compile_s"),
                      micro_batch=s["micro_batch"], micro_batch_retries=s.get("micro_batch_retries", []),
                      accum_steps=s["accum_steps"],
                      channels_last=s["channels_last"], backend=s["config"]["backend"])
        if s["median_update_s"]:
            result["images_per_s"] = s["config"]["batch_size"] / s["median_update_s"]
    return result


def gpu_loader(ctx) -> str:
    """The fastest measured GPU-decoding loader (nvjpeg or DALI mixed), else nvjpeg."""
    rows = ctx.results.get("loaders", {}).get("result", {}).get("rows", [])
    gpu_rows = [r for r in rows if r.get("backend") in ("nvjpeg", "dali-gpu") and "images_per_s" in r]
    best = max(gpu_rows, key=lambda r: r["images_per_s"], default={"backend": "nvjpeg"})["backend"]
    return "dali" if best == "dali-gpu" else best


def smoke_sets(ctx) -> list[str]:
    """--smoke: the same commands on a CPU with a tiny ConvMixer."""
    if not ctx.smoke:
        return []
    return ["--device", "cpu", "--precision", "fp32", "--no-compile", "--set", "image_size=32",
            "--set", "model_overrides={dim: 32, depth: 2, kernel: 5, patch: 4}", "--batch-size", "8",
            "--micro-batch", "4", "--set", "workers=2"]


def t4_fit(ctx) -> dict:
    """The t4 recipe (fp16 + GradScaler, its micro-batches, loader, EMA and compile) in a T4's memory."""
    data = prepare_data(ctx)
    backend = "dali" if _importable("nvidia.dali") else "nvjpeg"
    rows = []
    for model in ctx.t4_variants:
        args = ["--recipe", "t4", "--model", model, "--data", str(data), "--backend", backend, "--epochs", "1",
                "--set", f"max_steps_per_epoch={ctx.fit_updates}", *smoke_sets(ctx)]
        r = train_run(ctx, f"t4-{model}", args, memory_gb=None if ctx.smoke else T4_USABLE_GB)
        # fits as the recipe has it: an out-of-memory retry at half the micro-batch is not a fit
        r.update(model=model, fits=r["returncode"] == 0 and not r.get("oom") and not r.get("micro_batch_retries"))
        rows.append(r)
    head = {f"{r['model']} img/s": r["images_per_s"] for r in rows if r.get("images_per_s")}
    if not head:
        head = {"runs": len(rows)}
    note = "" if backend == "dali" else "DALI is not installed: the t4 recipe's dali loader was replaced by nvjpeg"
    return {"headline": head, "rows": rows, "loader_note": note, "memory_cap_gb": T4_USABLE_GB,
            "claim": "only the fit is claimed (torch's allocator capped; DALI/nvJPEG memory is outside the cap); "
                     "img/s here is this GPU's, not a T4's"}


def end_to_end(ctx) -> dict:
    """>= 100 updates of convmixer_768_32 through tools/train.py: best GPU loader, compile, best layout."""
    data = prepare_data(ctx)
    manifest = json.loads((data / "manifest.json").read_text())
    model = ctx.variants[0]
    best = fastest_eager(ctx, model)
    batch = 8 if ctx.smoke else ctx.batch
    per_epoch = max(1, manifest["splits"]["train"]["written"] // batch)
    epochs = math.ceil(ctx.e2e_updates / per_epoch)
    args = ["--recipe", "h100", "--model", model, "--data", str(data), "--backend", gpu_loader(ctx),
            "--epochs", str(epochs), "--set", "log_every=1", "--micro-batch", str(batch), "--batch-size", str(batch)]
    if best:
        args += ["--precision", best["precision"], "--channels-last", "on" if best["layout"] == "channels_last" else "off"]
    args += smoke_sets(ctx)
    with Telemetry(ctx.device.index or 0) as tel:
        r = train_run(ctx, "e2e", args, timeout=900)
    steps = [json.loads(line) for line in (Path(r["out"]) / "steps.jsonl").read_text().splitlines()] \
        if (Path(r["out"]) / "steps.jsonl").is_file() else []
    steady = steps[len(steps) // 5:]  # after compile and warm-up

    def median(key):
        vals = sorted(s[key] for s in steady if s.get(key) is not None)
        return vals[len(vals) // 2] if vals else None
    r.update(model=model, telemetry=tel.summary(), step_images_per_s=median("images_per_s"), step_mfu=median("mfu"),
             loader_wait_share=median("data_wait_share"), logged_updates=len(steps))
    if r["returncode"] != 0:
        raise RuntimeError(f"tools/train.py exited {r['returncode']}: {r.get('log_tail', '')}")
    head = {"updates": r.get("updates", 0), "images_per_s": r.get("step_images_per_s") or 0}
    return {"headline": head, **r}
