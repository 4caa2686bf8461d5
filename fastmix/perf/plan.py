"""The planner: what a user asks before renting a GPU.

    plan_run("convmixer_768_32", epochs=100, sizes=[128, 160, 192, 224], catalog=load_catalog(),
             cores=4, loader_rates=load_loader_rates("bench/results/loaders-cpu2.json"))

For each catalog GPU: the largest micro-batch that fits at the largest resolution the schedule
visits (fastmix.perf.memory, with a DALI pool per resolution), the accumulation steps to the
optimizer batch, hours and dollars with their ranges (fastmix.perf.cost, summed epoch by epoch:
with n sizes over E epochs, epoch i trains at sizes[floor(i * n / E)]), and whether the user's CPU
loader keeps up: images/s the GPU consumes at each size / the loader's measured images/s per
CPU core at that size (bench.loaders: images_per_s / cpu_cores_used) = cores needed, against
the cores the user has.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fastmix.devices.catalog import Device

from .cost import IMAGENET100_TRAIN, Efficiency, predict_step
from .memory import device_training_memory, largest_micro_batch

NOT_CPU_LOADERS = ("synthetic",)  # no decode: nothing to plan


def precision_for(gpu: Device, asked: str = "auto") -> str:
    if asked != "auto":
        return asked
    return "bf16" if gpu.bf16_tensor else ("fp16" if gpu.fp16_tensor else "fp32")


def epoch_sizes(epochs: int, sizes: list[int]) -> list[int]:
    """The resolution of each epoch: epoch i of E trains at sizes[floor(i * n / E)]."""
    if epochs < 1 or not sizes:
        raise ValueError(f"need epochs >= 1 and at least one size (got {epochs}, {sizes})")
    if len(sizes) > epochs:
        raise ValueError(f"{len(sizes)} sizes do not fit in {epochs} epochs")
    return [sizes[(i * len(sizes)) // epochs] for i in range(epochs)]


def load_loader_rates(path: str | Path) -> dict[str, dict[int, float]]:
    """{backend: {image size: images/s per CPU core}} from a bench.loaders result file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: loader benchmark results not found (run python -m bench.loaders)")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bench.loaders result ({e})") from None
    rates: dict[str, dict[int, float]] = {}
    for r in rows:
        # a `variant_of` row is a "before" kept for comparison (bench.loaders), not a loader to plan with
        if r["backend"] in NOT_CPU_LOADERS or r.get("variant_of") or not r.get("cpu_cores_used"):
            continue
        rates.setdefault(r["backend"], {})[int(r["image_size"])] = r["images_per_s"] / r["cpu_cores_used"]
    return rates


def loader_source(path: str | Path) -> str:
    """One line naming the bench.loaders file the loader columns come from, and what it measured on."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return f"Loader rates per core: {path}."
    on = ", ".join(str(x) for x in (data.get("device"), f"{data['cpu_count']} cores" if data.get("cpu_count") else None,
                                    data.get("measured_at")) if x)
    return f"Loader rates per core: {path}" + (f" ({on})." if on else ".")


def per_core_rate(rates: dict[int, float], size: int) -> float:
    """The rate measured at the smallest size >= `size` (larger images decode and resize no
    faster); beyond the largest measured size, that size's rate scaled by pixel count."""
    above = [s for s in rates if s >= size]
    if above:
        return rates[min(above)]
    top = max(rates)
    return rates[top] * (top / size) ** 2


def plan_gpu(model: str, gpu: Device, epochs: int, sizes: list[int], batch: int = 64, precision: str = "auto",
             train_images: int = IMAGENET100_TRAIN, eff: Efficiency | None = None, cores: int = 1,
             loader_rates: dict | None = None, ema: bool = False, compile: bool = False, loader: str = "dali",
             num_classes: int = 100, schedule: list[int] | None = None) -> dict:
    """`sizes` in equal blocks of epochs, or `schedule`: the size of every epoch (the trainer's
    progressive resizing, fastmix.train.recipe.image_size_at), its sizes then those it visits."""
    if schedule is not None:
        if len(schedule) != epochs:
            raise ValueError(f"a schedule of {len(schedule)} epoch sizes for {epochs} epochs")
        sizes = list(dict.fromkeys(schedule))
    prec = precision_for(gpu, precision)
    extras = {"ema": ema, "compile": compile, "loader": loader, "resolutions": sorted(set(sizes))}
    top = max(sizes)
    micro = largest_micro_batch(model, gpu, prec, batch, top, **extras)
    row = {"model": model, "gpu": gpu.key, "precision": prec, "batch": batch, "micro_batch": micro,
           "sizes": sizes, "epochs": epochs, "train_images": train_images, "cores": cores}
    if not micro:
        return {**row, "fits": False}
    steps = math.ceil(train_images / micro)
    per_size = {}
    for size in sorted(set(sizes)):
        p = predict_step(model, micro, prec, gpu, eff, size, num_classes)
        per_size[size] = {"step_s": p["step_s"], "range_s": p["range_s"], "images_per_s": micro / p["step_s"],
                          "range_source": p["range_source"], "efficiency_source": p["efficiency_source"]}
    schedule = schedule or epoch_sizes(epochs, sizes)
    hours = sum(per_size[s]["step_s"] for s in schedule) * steps / 3600
    low = sum(per_size[s]["range_s"][0] for s in schedule) * steps / 3600
    high = sum(per_size[s]["range_s"][1] for s in schedule) * steps / 3600
    feed = {}
    for backend, rates in (loader_rates or {}).items():
        need = max(per_size[s]["images_per_s"] / per_core_rate(rates, s) for s in set(sizes))
        # the GPU may be as fast as the low end of its step-time range
        fastest = max(micro / per_size[s]["range_s"][0] / per_core_rate(rates, s) for s in set(sizes))
        feed[backend] = {"cores_needed": need, "keeps_up": need <= cores,
                         "cores_needed_at_fastest": fastest, "keeps_up_at_fastest": fastest <= cores}
    return {**row, "fits": True, "accum_steps": batch // micro, "steps_per_epoch": steps,
            "memory_gb": device_training_memory(model, micro, prec, top, num_classes, **extras)["total"] / 1e9,
            "per_size": per_size, "hours": hours, "hours_range": (low, high), "dollars": hours * gpu.price_per_hour,
            "dollars_range": (low * gpu.price_per_hour, high * gpu.price_per_hour), "loader": feed,
            "range_source": per_size[top]["range_source"], "efficiency_source": per_size[top]["efficiency_source"]}


def plan_run(model: str, epochs: int, sizes: list[int], gpus: list[Device], **kw) -> list[dict]:
    return [plan_gpu(model, g, epochs, sizes, **kw) for g in gpus]


def verdict(feed: dict) -> str:
    """ok: enough cores even if the GPU runs at the fast end of its range; tight: enough at the
    estimate only; TOO FEW: not even at the estimate."""
    return "ok" if feed["keeps_up_at_fastest"] else "tight" if feed["keeps_up"] else "TOO FEW"


def markdown(rows: list[dict]) -> str:
    backends = sorted({b for r in rows for b in r.get("loader", {})})
    out = ["| GPU | precision | micro-batch x accumulation | memory (GB) | hours | $ | "
           + " | ".join(f"{b}: cores needed" for b in backends) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(backends)]
    for r in rows:
        if not r["fits"]:
            out.append(f"| {r['gpu']} | {r['precision']} | does not fit (not even 1 image) | | | |" + " |" * len(backends))
            continue
        lo, hi = r["hours_range"]
        dlo, dhi = r["dollars_range"]
        feed = " | ".join(f"{f['cores_needed']:.1f} (≤{f['cores_needed_at_fastest']:.1f}) {verdict(f)}"
                          for f in (r["loader"][b] for b in backends))
        out.append(f"| {r['gpu']} | {r['precision']} | {r['micro_batch']} x {r['accum_steps']} | {r['memory_gb']:.1f} | "
                   f"{r['hours']:.1f} ({lo:.1f}-{hi:.1f}) | {r['dollars']:.0f} ({dlo:.0f}-{dhi:.0f}) |"
                   + (f" {feed} |" if backends else ""))
    r0 = rows[0]
    out += ["", f"{r0['model']}, {r0['epochs']} epochs at {':'.join(map(str, r0['sizes']))} px, {r0['train_images']:,} "
            f"images/epoch, batch {r0['batch']}; cores available: {r0['cores']}.",
            "Ranges: " + "; ".join(sorted({r["range_source"] for r in rows if r["fits"]}))]
    return "\n".join(out)
