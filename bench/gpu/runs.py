"""Training runs in child processes: the T4 fit and the end-to-end run, through tools/train.py.

t4_fit compiles each variant's graph as the t4 recipe trains it; end_to_end (768/32, the t4 recipe)
and the compiled phase (bench.gpu.steps) use the same graphs, so only t4_fit's compiles are cold.
Children take the memory layout from the matrix phase's measured winner at their precision
(`--channels-last on|off`): no compiled channels_last probe in a child, so each child compiles
its model once, and inductor's on-disk cache (bench.gpu.children) is shared by all of them.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from fastmix.devices.telemetry import Telemetry
from loaders import unavailable

from .children import run_child
from .data import data_classes, images_label, prepare_data
from .steady import StepWatcher

# A T4 shows 15,109 MiB (15.8 GB); its CUDA context takes ~0.4 GB outside torch's allocator. The cap
# binds torch's allocator only: DALI's pools and nvJPEG's buffers come on top (the report says so).
T4_USABLE_GB = 15.0
SMOKE_MICRO_BATCH = 4  # smoke_sets' --micro-batch
SMOKE_COMPILE_BACKEND = "aot_eager"  # dynamo + AOT autograd, without inductor's minutes of C++ on a CPU


def last_epoch_value(path, key: str):
    """A column of a run's last epochs.csv row (None if absent): the trainer's loader cost, which no
    wait share shows (fastmix/train/loadercost.py)."""
    import csv
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1][key]) if rows and rows[-1].get(key) not in ("", None) else None
    except (OSError, KeyError, ValueError):
        return None


def train_run(ctx, name: str, args: list[str], memory_gb: float | None = None) -> dict:
    """tools/train.py in a child process (bench.gpu.capped: optional memory cap, peak memory, OOM,
    compilations), with what is left of the phase as its timeout."""
    out = ctx.work / name
    report = ctx.work / f"{name}.report.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu.capped", "--report", str(report)]
    cmd += ["--memory-gb", str(memory_gb)] if memory_gb else []
    cmd += ["--compile-backend", SMOKE_COMPILE_BACKEND] if ctx.smoke else []
    cmd += ["--", "--out", str(out), *args]
    code, log = run_child(ctx, name, cmd)
    result = json.loads(report.read_text()) if report.is_file() else {}
    result.update(returncode=code, out=str(out))
    if code != 0 and not result.get("oom"):
        result["log_tail"] = log
    summary = out / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        result.update(updates=s["updates"], median_update_s=s["median_update_s"], compile_s=s.get("compile_s"),
                      micro_batch=s["micro_batch"], micro_batch_retries=s.get("micro_batch_retries", []),
                      accum_steps=s["accum_steps"], channels_last=s["channels_last"], backend=s["config"]["backend"])
        if s["median_update_s"]:
            result["images_per_s"] = s["config"]["batch_size"] / s["median_update_s"]
    return result


def measured_layout(ctx, model: str, precision: str) -> tuple[str, str]:
    """`on`/`off` for --channels-last from the matrix phase's winner, and where it came from."""
    winner = ctx.results.get("matrix", {}).get("result", {}).get("layout", {}).get(f"{model} {precision}")
    if winner:
        return ("on" if winner["faster"] == "channels_last" else "off"), f"matrix: {winner['faster']} faster"
    return "on", "not measured (matrix phase missing): channels_last assumed, no probe"


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
    return ["--device", "cpu", "--precision", "fp32", "--set", "image_size=32",
            "--set", "model_overrides={dim: 32, depth: 2, kernel: 5, patch: 4}", "--batch-size", "8",
            "--micro-batch", str(SMOKE_MICRO_BATCH), "--set", "workers=2"]


def t4_fit(ctx) -> dict:
    """The t4 recipe (fp16 + GradScaler, its micro-batches, loader and compile; no EMA) in a T4's memory."""
    data = prepare_data(ctx)
    backend = "nvjpeg" if unavailable("dali") else "dali"
    precision = t4_precision(ctx)
    rows = ctx.partial.setdefault("rows", [])
    for model in ctx.t4_variants:
        layout, source = measured_layout(ctx, model, precision)
        args = ["--recipe", "t4", "--model", model, "--data", str(data), "--backend", backend, "--epochs", "1",
                "--channels-last", layout, "--set", f"max_steps_per_epoch={ctx.fit_updates}", *smoke_sets(ctx)]
        r = train_run(ctx, f"t4-{model}", args, memory_gb=None if ctx.smoke else T4_USABLE_GB)
        # fits as the recipe has it: an out-of-memory retry at half the micro-batch is not a fit
        r.update(model=model, layout_from=source,
                 fits=r["returncode"] == 0 and not r.get("oom") and not r.get("micro_batch_retries"))
        rows.append(r)
    head = {f"{r['model']} img/s": r["images_per_s"] for r in rows if r.get("images_per_s")}
    if not head:
        head = {"runs": len(rows)}
    note = "" if backend == "dali" else f"DALI is unavailable ({unavailable('dali')}): the t4 recipe's dali loader " \
                                        "was replaced by nvjpeg"
    return {"headline": head, "rows": rows, "loader_note": note, "memory_cap_gb": T4_USABLE_GB,
            "images": images_label(ctx),
            "claim": "only the fit is claimed (torch's allocator capped; DALI/nvJPEG memory is outside the cap); "
                     "img/s here is this GPU's, not a T4's"}


def t4_precision(ctx) -> str:
    return "fp32" if ctx.smoke else "fp16"  # the t4 recipe's; a CPU has no fp16 arithmetic


def t4_configuration(ctx, model: str) -> dict:
    """What t4_fit's child trains `model` with, so the graph it compiles: precision, micro-batch (the
    one the child used, else the recipe's), the matrix's layout, the converted data's class count."""
    from fastmix.train.recipe import load_recipe
    precision = t4_precision(ctx)
    rows = ctx.results.get("t4_fit", {}).get("result", {}).get("rows", [])
    used = next((r["micro_batch"] for r in rows if r.get("model") == model and r.get("micro_batch")), None)
    batch = SMOKE_MICRO_BATCH if ctx.smoke else used or load_recipe("t4", model=model).micro_batch_size
    layout, _ = measured_layout(ctx, model, precision)
    return {"model": model, "precision": precision, "layout": "channels_last" if layout == "on" else "nchw",
            "batch": batch, "num_classes": data_classes(ctx)}


def end_to_end(ctx) -> dict:
    """>= 100 updates of convmixer_768_32 with the t4 recipe (the graph t4_fit compiled: warm in
    inductor's cache) through tools/train.py, the fastest GPU loader; NVML over the steady step windows
    only. The step log streams into ctx.partial, so a stopped run keeps the updates it logged."""
    data = prepare_data(ctx)
    manifest = json.loads((data / "manifest.json").read_text())
    model = ctx.variants[0]
    batch = 8 if ctx.smoke else ctx.batch  # the t4 recipe's batch (64), in micro-batches of its own
    per_epoch = max(1, manifest["splits"]["train"]["written"] // batch)
    epochs = math.ceil(ctx.e2e_updates / per_epoch)
    log_every = 2 if ctx.smoke else 10  # each log line reads the device: a host sync per 10 updates at most
    layout, source = measured_layout(ctx, model, t4_precision(ctx))
    args = ["--recipe", "t4", "--model", model, "--data", str(data), "--backend", gpu_loader(ctx),
            "--epochs", str(epochs), "--set", f"log_every={log_every}", "--channels-last", layout, *smoke_sets(ctx)]
    steps_file = ctx.work / "e2e" / "steps.jsonl"
    steps_file.unlink(missing_ok=True)
    watcher = StepWatcher(steps_file)
    ctx.partial = {"model": model, "layout_from": source, "log_every": log_every, "steps": watcher.records}
    with Telemetry(ctx.device.index or 0) as tel, watcher:
        r = train_run(ctx, "e2e", args)
    steps = watcher.records
    last = max((s["update"] for s in steps), default=0)
    steady = [s for s in steps if s["update"] >= 0.2 * last]  # after compile and warm-up

    def median(key):
        vals = sorted(s[key] for s in steady if s.get(key) is not None)
        return vals[len(vals) // 2] if vals else None
    r.update(model=model, layout_from=source, log_every=log_every, images=images_label(ctx),
             telemetry=tel.summary(windows=watcher.windows()), step_images_per_s=median("images_per_s"),
             step_mfu=median("mfu"), loader_wait_share=median("data_wait_share"), logged_updates=len(steps),
             loader_slowdown=last_epoch_value(ctx.work / "e2e" / "epochs.csv", "loader_slowdown"))
    ctx.partial = r
    if r["returncode"] != 0:
        raise RuntimeError(f"tools/train.py exited {r['returncode']}: {r.get('log_tail', '')}")
    head = {"updates": r.get("updates", 0), "images_per_s": r.get("step_images_per_s") or 0}
    return {"headline": head, **r}
