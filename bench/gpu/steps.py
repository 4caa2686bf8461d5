"""Phases on synthetic tensors: environment, ceilings, the training-step matrix, memory, cost, compile.

Every cell is a real full training step (forward, backward, AdamW, GradScaler for fp16) built by
the profiler (fastmix.perf.profiler.build_step), timed with CUDA events (wall clock on a CPU).
"""
from __future__ import annotations

import statistics
import time

import torch

from fastmix.devices.catalog import load_catalog, lookup
from fastmix.devices.ceilings import ceilings, sync
from fastmix.devices.environment import describe
from fastmix.model.flops import convmixer_ops, totals
from fastmix.perf.cost import Efficiency, predict_step
from fastmix.perf.memory import allocator_visible_gb
from fastmix.perf.profiler import ProfileSpec, build_step, calibrate, op_breakdown, time_steps

LAYOUTS = {"nchw": "off", "channels_last": "on"}


def catalog_device(ctx):
    """The catalog entry of this device, or None ("peak unknown") for a device it does not list."""
    catalog = load_catalog()
    if ctx.device.type != "cuda":
        return catalog["cpu"]
    try:
        return lookup(catalog, torch.cuda.get_device_name(ctx.device))
    except KeyError:
        return None


def environment(ctx) -> dict:
    env = describe(ctx.device)
    head = {"memory_gb": env["memory_gb"]} if ctx.device.type == "cuda" else {"cpu_cores": env["cpu_cores"]}
    dev = catalog_device(ctx)
    env["catalog_entry"] = dev.key if dev else "not in the catalog: peak-based figures say 'peak unknown'"
    return {"headline": head, **env}


def ceiling_phase(ctx) -> dict:
    size = {"n": 256, "nbytes": 2**24} if ctx.smoke else {}
    out = {p: ceilings(ctx.device, p, **size) for p in ctx.precisions}
    head = {f"matmul_{p}_tflops": out[p]["matmul_tflops"] for p in ctx.precisions}
    head["copy_gbs"] = out[ctx.precisions[0]]["copy_gbs"]
    return {"headline": head, **out}


def _peak_memory_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_cell(ctx, model: str, layout: str, precision: str, compile_: bool = False, batch: int | None = None,
                 num_classes: int = 100) -> dict:
    """One cell: img/s, median and p10/p90 step time, TFLOP/s, MFU (catalog peak and measured
    matmul ceiling), peak memory; with compile, the first step's extra time is the compile time."""
    batch = batch or ctx.batch
    if precision == "bf16" and ctx.device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return {"skipped": "no bf16 on this GPU"}
    _peak_memory_reset(ctx.device)
    spec = ProfileSpec(model, batch, ctx.image_size, precision, LAYOUTS[layout], compile_, num_classes)
    step, _ = build_step(spec, ctx.device)
    t0 = time.perf_counter()
    step()  # pays compilation (and cuDNN autotuning) once
    sync(ctx.device)
    first_s = time.perf_counter() - t0
    if ctx.device.type == "cuda":  # autotuning tries workspaces the steps never use again
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times, _ = time_steps(step, ctx.device, ctx.steps, ctx.warmup)
    median = statistics.median(times)
    qs = statistics.quantiles(times, n=10) if len(times) > 1 else [median] * 9
    flops = batch * totals(convmixer_ops(model, ctx.image_size, num_classes)).train_model_flops
    dev = catalog_device(ctx)
    ceiling = ctx.results.get("ceilings", {}).get("result", {}).get(precision, {}).get("matmul_tflops")
    cell = {"model": model, "layout": layout, "precision": precision, "compile": compile_, "batch": batch,
            "num_classes": num_classes,
            "image_size": ctx.image_size, "images_per_s": batch / median, "median_s": median, "p10_s": qs[0],
            "p90_s": qs[-1], "achieved_tflops": flops / median / 1e12, "first_step_s": first_s,
            "mfu_catalog": flops / median / (dev.peak_tflops(precision) * 1e12) if dev and dev.supports(precision) else None,
            "mfu_measured_ceiling": flops / median / (ceiling * 1e12) if ceiling else None}
    if compile_:
        cell["compile_s"] = max(0.0, first_s - median)
    if ctx.device.type == "cuda":
        cell["peak_memory_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1e9
    del step
    _peak_memory_reset(ctx.device)
    return cell


def _cells(ctx, compile_: bool, which) -> list[dict]:
    out = ctx.partial.setdefault("cells", [])  # a phase stopped at its deadline keeps these
    for model, layout, precision in which:
        out.append(_cell(ctx, {"model": model, "layout": layout, "precision": precision, "batch": ctx.batch,
                               "num_classes": 100}, compile_))
    return out


def measured(cells: list[dict]) -> list[dict]:
    return [c for c in cells if "images_per_s" in c]


def matrix(ctx) -> dict:
    which = [(m, lay, p) for m in ctx.variants for lay in LAYOUTS for p in ctx.precisions]
    cells = _cells(ctx, False, which)
    winners = {}
    for model in ctx.variants:
        for precision in ctx.precisions:
            pair = {c["layout"]: c["median_s"] for c in measured(cells) if c["model"] == model and c["precision"] == precision}
            if len(pair) == 2:
                winners[f"{model} {precision}"] = {"faster": min(pair, key=pair.get),
                                                   "channels_last_speedup": pair["nchw"] / pair["channels_last"]}
    best = {m: max((c["images_per_s"] for c in measured(cells) if c["model"] == m), default=None) for m in ctx.variants}
    return {"headline": {f"{m} best img/s": v for m, v in best.items() if v}, "cells": cells, "layout": winners}


def fastest_eager(ctx, model: str) -> dict | None:
    cells = measured(ctx.results.get("matrix", {}).get("result", {}).get("cells", []))
    return min((c for c in cells if c["model"] == model), key=lambda c: c["median_s"], default=None)


def compiled(ctx) -> dict:
    """torch.compile of each variant at the configuration t4_fit's child trained it in (precision,
    micro-batch, measured layout, the data's class count), so the graph is the one that child left
    in inductor's on-disk cache; eager at the same configuration gives the speed-up."""
    from .capped import compile_backend
    from .runs import t4_configuration
    which = [t4_configuration(ctx, m) for m in ctx.variants]
    cells = ctx.partial.setdefault("cells", [])
    with compile_backend("aot_eager" if ctx.smoke else None):  # inductor's C++ takes minutes on a small CPU
        for conf in which:
            pair = [_cell(ctx, conf, False), _cell(ctx, conf, True)]
            if all("images_per_s" in c for c in pair):
                pair[1]["speedup_vs_eager"] = pair[0]["median_s"] / pair[1]["median_s"]
            cells += pair
    done = [c for c in measured(cells) if c["compile"]]
    return {"headline": {f"{c['model']} compiled img/s": c["images_per_s"] for c in done}, "cells": cells,
            "configuration": "t4_fit's: " + "; ".join(f"{c['model']} {c['precision']} {c['layout']} micro-batch "
                                                       f"{c['batch']} {c['num_classes']} classes" for c in which)}


def _cell(ctx, conf: dict, compile_: bool) -> dict:
    try:
        return measure_cell(ctx, conf["model"], conf["layout"], conf["precision"], compile_, batch=conf["batch"],
                            num_classes=conf["num_classes"])
    except Exception as e:  # e.g. out of memory: this cell only
        _peak_memory_reset(ctx.device)
        return {**conf, "compile": compile_, "error": f"{type(e).__name__}: {e}"}


def memory(ctx) -> dict:
    """fastmix's training-memory model against torch.cuda.max_memory_allocated, two micro-batches: the
    model less the CUDA context (the allocator never sees it), the peak taken after the first,
    autotuning step."""
    if ctx.device.type != "cuda":
        return {"skipped": "max_memory_allocated needs a CUDA device"}
    rows = ctx.partial.setdefault("rows", [])
    for model in ctx.variants:
        for batch in (ctx.batch, ctx.batch // 2):
            cell = measure_cell(ctx, model, "channels_last", "fp16", batch=batch) if batch > 1 else None
            if not cell or "peak_memory_gb" not in cell:
                continue
            predicted = allocator_visible_gb(model, batch, "fp16", ctx.image_size)
            rows.append({"model": model, "micro_batch": batch, "precision": "fp16", "measured_gb": cell["peak_memory_gb"],
                         "predicted_gb": predicted, "error": predicted / cell["peak_memory_gb"] - 1})
    worst = max((abs(r["error"]) for r in rows), default=None)
    return {"headline": {"rows": len(rows)}, "rows": rows, "worst_abs_error": worst}


def cost(ctx) -> dict:
    """Calibrate on one matrix cell (fastmix's own calibration), predict every other measured cell."""
    gpu = catalog_device(ctx)
    cells = measured(ctx.results.get("matrix", {}).get("result", {}).get("cells", []))
    if gpu is None:
        return {"skipped": "this GPU is not in the catalog (add it with --catalog) so the roofline has no peaks"}
    cells = [c for c in cells if gpu.supports(c["precision"])]
    if not cells:
        return {"skipped": f"no matrix cell was measured at a precision the catalog gives {gpu.key} a peak for"}
    anchor = next((c for c in cells if c["model"] == ctx.variants[0] and c["layout"] == "channels_last"), cells[0])
    spec = ProfileSpec(anchor["model"], anchor["batch"], ctx.image_size, anchor["precision"], LAYOUTS[anchor["layout"]])
    step, _ = build_step(spec, ctx.device)
    breakdown = op_breakdown(step, ctx.device)
    del step
    eff = calibrate({"spec": spec.__dict__, "precision": anchor["precision"], "breakdown_s": breakdown,
                     "median_s": anchor["median_s"], "channels_last": anchor["layout"] == "channels_last"}, gpu)
    rows = []
    for c in cells:
        cl = c["layout"] == "channels_last"  # the cost model's layout term, as measured
        predicted = predict_step(c["model"], c["batch"], c["precision"], gpu, eff, ctx.image_size, channels_last=cl)["step_s"]
        uncal = predict_step(c["model"], c["batch"], c["precision"], gpu, Efficiency(), ctx.image_size,
                             channels_last=cl)["step_s"]
        rows.append({"model": c["model"], "layout": c["layout"], "precision": c["precision"], "measured_s": c["median_s"],
                     "predicted_s": predicted, "error": predicted / c["median_s"] - 1,
                     "uncalibrated_error": uncal / c["median_s"] - 1, "calibration": c is anchor})
    calibration = {"environment": ctx.results.get("environment", {}).get("result", {}), "catalog_entry": gpu.key,
                   "efficiency": eff.values, "overhead_per_op_s": eff.overhead_per_op_s, "calibrated_on": eff.source,
                   "breakdown_s": breakdown, "predictions": rows}
    ctx.write_json("calibration.json", calibration)
    held_out = [abs(r["error"]) for r in rows if not r["calibration"]]
    return {"headline": {"cells_predicted": len(rows)}, "calibrated_on": eff.source, "rows": rows,
            "worst_abs_error_held_out": max(held_out, default=None), "calibration_file": "calibration.json"}
