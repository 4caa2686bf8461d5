"""Calibrate, predict configurations that were not used to calibrate, and write it all down.

    run_calibration([ProfileSpec("convmixer_768_32", 64, precision="bf16"), ...], out="runs/calib")
    run_op_calibration(quick_cases(device, "fp16"), [ProfileSpec(...), ...], out="runs/calib-quick")

`run_calibration` is the end-to-end calibration (one configuration's profiler breakdown -> per
class efficiencies; kept as a cross-check). `run_op_calibration` is the op-level one
(fastmix.perf.opbench): every end-to-end configuration is then held out. Both write
`calibration.json` (device, versions, ceilings, every measurement, the fitted efficiencies;
fastmix.perf.cost.Efficiency.load reads it back), `predicted_vs_measured.md` and `.png`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from fastmix.train.speed import resolve_device

from .cost import Efficiency, predict_step
from .opbench import OpCase, op_calibration
from .profiler import ProfileSpec, calibrate, ceilings, device_entry, environment, measure, pooled


def run_calibration(specs: list[ProfileSpec], out: str | Path, calibrate_on: int = 0, steps: int = 20,
                    warmup: int = 5, device: str = "auto", catalog: str | None = None,
                    with_ceilings: bool = True) -> dict:
    dev = resolve_device(device)
    steady_host_allocator(dev)
    gpu, peak_known = device_entry(dev, catalog)
    measurements = []
    for i, spec in enumerate(tqdm(specs, desc="profiling", disable=None)):
        measurements.append(measure(spec, dev, gpu, steps, warmup, breakdown=i == calibrate_on))
    eff = calibrate(measurements[calibrate_on], gpu)
    rows = []
    for m in measurements:
        spec = ProfileSpec(**m["spec"])
        pred = predict_step(spec.model, spec.batch, m["precision"], gpu, eff, spec.image_size, spec.num_classes,
                            m["channels_last"])
        default = predict_step(spec.model, spec.batch, m["precision"], gpu, Efficiency(), spec.image_size,
                               spec.num_classes, m["channels_last"])
        rows.append({"label": spec.label, "calibration": spec == specs[calibrate_on],
                     "measured_s": m["median_s"], "spread_s": [m["p10_s"], m["p90_s"]],
                     "predicted_s": pred["step_s"], "error": pred["step_s"] / m["median_s"] - 1,
                     "uncalibrated_s": default["step_s"], "uncalibrated_error": default["step_s"] / m["median_s"] - 1,
                     "achieved_tflops": m["achieved_tflops"], "mfu": m["mfu"], "images_per_s": m["images_per_s"]})
    held_out = [abs(r["error"]) for r in rows if not r["calibration"]]
    result = {**header(dev, gpu, peak_known), "ceilings": ceilings(dev, measurements[calibrate_on]["precision"])
              if with_ceilings else None,
              "efficiency": eff.values, "overhead_per_op_s": eff.overhead_per_op_s, "calibrated_on": eff.source,
              "held_out_error": max(held_out) if held_out else None, "measurements": measurements, "predictions": rows}
    write(result, rows, out)
    return result


def header(dev, gpu, peak_known: bool) -> dict:
    return {"fastmix_calibration": 2, "environment": environment(dev), "catalog_entry": gpu.key,
            "catalog_peaks": {"fp32": gpu.fp32, "fp16_tensor": gpu.fp16_tensor, "bf16_tensor": gpu.bf16_tensor,
                              "bandwidth_gbs": gpu.bandwidth_gbs},
            "peak": "catalog" if peak_known else "peak unknown: measured ceilings stand in for the peaks",
            "conventions": "model FLOPs: conv + linear, multiply-add = 2 FLOPs, forward + backward"}


def steady_host_allocator(device) -> None:
    """On a CPU, time what a training run gets: its loaders keep batch-sized buffers in glibc's heap
    (fastmix.devices.allocator). Without that, a fresh process mmaps and zeroes large temporaries on every
    call (channels_last depthwise backward most), and timings depend on what ran before: measured
    0.99 s vs 0.47 s for the same 768/32 channels_last step."""
    if device.type == "cpu":
        from fastmix.devices.allocator import keep_batch_buffers
        keep_batch_buffers()


def measured_in_sweeps(specs: list[ProfileSpec], sweeps: int, measure_one) -> list[dict]:
    """measure_one(sweep, index, spec) for every spec in turn, `sweeps` times over; each spec's
    sweeps pooled into one measurement, in the order of `specs`."""
    runs = [(k, i, s) for k in range(sweeps) for i, s in enumerate(specs)]
    swept = [measure_one(k, i, s) for k, i, s in tqdm(runs, desc="end-to-end", disable=None)]
    return [pooled(swept[i::len(specs)]) for i in range(len(specs))]


def run_op_calibration(cases: list[OpCase], specs: list[ProfileSpec], out: str | Path, steps: int = 5,
                       warmup: int = 2, device: str = "auto", catalog: str | None = None, reps: int = 3,
                       with_ceilings: bool = True, cross_check: bool = True, sweeps: int = 1) -> dict:
    """Op-level calibration on `cases`, then every spec measured end to end and predicted from
    it (all held out); `cross_check` also fits the end-to-end calibration on specs[0] and
    predicts the rest from that, for comparison. With `sweeps` > 1 the specs are measured in
    that many sweeps of `steps` steps each, pooled per spec: on a shared machine a slow spell
    then spreads over every spec rather than falling on one (as the op benchmark's round-robin)."""
    dev = resolve_device(device)
    steady_host_allocator(dev)
    gpu, peak_known = device_entry(dev, catalog)
    cal = op_calibration(cases, dev, gpu, reps)
    eff = Efficiency(ops=cal["op_efficiency"], step_overhead_s=cal["step_overhead_s"],
                     overhead_per_op_s=cal["overhead_per_op_s"], source="op-level calibration")
    measurements = measured_in_sweeps(specs, sweeps, lambda k, i, s: measure(
        s, dev, gpu, steps, warmup, breakdown=cross_check and i == 0 and k == 0))
    e2e = calibrate(measurements[0], gpu) if cross_check else None
    rows = []
    for m in measurements:
        spec = ProfileSpec(**m["spec"])
        args = (spec.model, spec.batch, m["precision"], gpu)
        kw = {"image_size": spec.image_size, "num_classes": spec.num_classes, "channels_last": m["channels_last"]}
        pred = predict_step(*args, eff, **kw)["step_s"]
        default = predict_step(*args, Efficiency(), **kw)["step_s"]
        row = {"label": spec.label + (" cl" if m["channels_last"] else ""), "calibration": False,
               "measured_s": m["median_s"], "spread_s": [m["p10_s"], m["p90_s"]], "predicted_s": pred,
               "error": pred / m["median_s"] - 1, "uncalibrated_s": default,
               "uncalibrated_error": default / m["median_s"] - 1, "achieved_tflops": m["achieved_tflops"],
               "mfu": m["mfu"], "images_per_s": m["images_per_s"]}
        if "max_memory_allocated_gb" in m:  # CUDA: the memory model's check
            row["memory_gb"] = {"measured": m["max_memory_allocated_gb"], "predicted": m["memory_predicted_gb"]}
        if e2e is not None:
            row["end_to_end_calibration_error"] = predict_step(*args, e2e, **kw)["step_s"] / m["median_s"] - 1
        rows.append(row)
    result = {**header(dev, gpu, peak_known),
              "ceilings": ceilings(dev, measurements[0]["precision"]) if with_ceilings else None,
              "calibrated_on": f"op-level benchmark of {len(cases)} cases ({len(cal['op_measurements'])} op timings)",
              **cal, "held_out_error": max(abs(r["error"]) for r in rows),
              "end_to_end_cross_check": {"calibrated_on": e2e.source, "efficiency": e2e.values,
                                         "overhead_per_op_s": e2e.overhead_per_op_s} if e2e else None,
              "measurements": measurements, "predictions": rows}
    write(result, rows, out)
    return result


def write(result: dict, rows: list[dict], out: str | Path) -> None:
    out = Path(out)
    result.setdefault("measured_at", time.strftime("%Y-%m-%d", time.gmtime()))  # the chart's title says when
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "predicted_vs_measured.md").write_text(table(rows, result))
    plot(rows, out / "predicted_vs_measured.png", f"{result['environment']['device']} "
         f"({result['environment'].get('cpu', '?')}); measured {result.get('measured_at', 'date unknown')}")


def table(rows: list[dict], result: dict) -> str:
    cross = all("end_to_end_calibration_error" in r for r in rows)
    lines = [f"Device: {result['environment']['device']} ({result['environment']['cpu']}); "
             f"torch {result['environment']['torch']}. Calibrated on: {result['calibrated_on']}.", "",
             "| configuration | measured step (s) | p10-p90 | predicted (s) | error | uncalibrated error |"
             + (" end-to-end calibration error |" if cross else "") + " TFLOP/s | MFU |",
             "|---|---|---|---|---|---|" + ("---|" if cross else "") + "---|---|"]
    for r in rows:
        mark = " (calibration)" if r["calibration"] else ""
        e2e = f" {100 * r['end_to_end_calibration_error']:+.1f} % |" if cross else ""
        lines.append(f"| {r['label']}{mark} | {r['measured_s']:.3f} | {r['spread_s'][0]:.3f}-{r['spread_s'][1]:.3f} | "
                     f"{r['predicted_s']:.3f} | {100 * r['error']:+.1f} % | {100 * r['uncalibrated_error']:+.0f} % |{e2e} "
                     f"{r['achieved_tflops']:.3f} | {100 * r['mfu']:.1f} % |")
    if all("memory_gb" in r for r in rows):
        lines += ["", "| configuration | max_memory_allocated (GB) | predicted, model only (GB) | error |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['memory_gb']['measured']:.2f} | {r['memory_gb']['predicted']:.2f} | "
                  f"{100 * (r['memory_gb']['predicted'] / r['memory_gb']['measured'] - 1):+.1f} % |" for r in rows]
    worst = result.get("held_out_error")
    if worst is not None:
        lines += ["", f"Worst held-out error: {100 * worst:.1f} %."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, device: str) -> None:
    """Predicted against measured step time, one point per configuration; `device` is the title's
    "on what, when" line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    # Log axes: the steps span 10x, and on linear ones the short steps pile up in a corner. One
    # colour per model (the label's first word), a square for channels_last: no per-point text.
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    lo = min(min(r["measured_s"], r["predicted_s"]) for r in rows) / 1.3
    hi = max(max(r["measured_s"], r["predicted_s"]) for r in rows) * 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="exact")
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.9", label="±15 % (the goal)")
    models = list(dict.fromkeys(r["label"].split()[0] for r in rows))
    for r in rows:
        k = models.index(r["label"].split()[0])
        ax.plot(r["measured_s"], r["predicted_s"], "s" if r["label"].endswith(" cl") else "o", ms=8 if r["calibration"] else 6,
                color=f"C{k}", mec="k" if r["calibration"] else "none")
    for k, m in enumerate(models):
        ax.plot([], [], "o", color=f"C{k}", label=m)
    ax.plot([], [], "s", color="0.5", label="channels_last (o: NCHW)")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured step time (s)",
           ylabel="predicted step time (s)", title=f"Cost model: predicted vs measured training step\n{device}")
    for axis in (ax.xaxis, ax.yaxis):  # seconds as plain numbers, not 4x10^-1
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

