"""Calibrate on one configuration, predict the others, and write it all down.

    run_calibration([ProfileSpec("convmixer_768_32", 64, precision="bf16"), ...], out="runs/calib")

writes `calibration.json` (device, driver, versions, ceilings, every measurement, the fitted
efficiencies; fastmix.perf.cost.Efficiency.load reads it back), `predicted_vs_measured.md` and `.png`.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from fastmix.devices.catalog import load_catalog, present_device
from fastmix.train.speed import resolve_device

from .cost import Efficiency, predict_step
from .profiler import ProfileSpec, calibrate, ceilings, environment, measure


def run_calibration(specs: list[ProfileSpec], out: str | Path, calibrate_on: int = 0, steps: int = 20,
                    warmup: int = 5, device: str = "auto", catalog: str | None = None,
                    with_ceilings: bool = True) -> dict:
    dev = resolve_device(device)
    gpu = present_device(load_catalog(catalog)) if dev.type == "cuda" else load_catalog(catalog)["cpu"]
    measurements = []
    for i, spec in enumerate(tqdm(specs, desc="profiling", disable=None)):
        measurements.append(measure(spec, dev, gpu, steps, warmup, breakdown=i == calibrate_on))
    eff = calibrate(measurements[calibrate_on], gpu)
    rows = []
    for m in measurements:
        spec = ProfileSpec(**m["spec"])
        pred = predict_step(spec.model, spec.batch, m["precision"], gpu, eff, spec.image_size, spec.num_classes)
        default = predict_step(spec.model, spec.batch, m["precision"], gpu, Efficiency(), spec.image_size,
                               spec.num_classes)
        rows.append({"label": spec.label, "calibration": spec == specs[calibrate_on],
                     "measured_s": m["median_s"], "spread_s": [m["p10_s"], m["p90_s"]],
                     "predicted_s": pred["step_s"], "error": pred["step_s"] / m["median_s"] - 1,
                     "uncalibrated_s": default["step_s"], "uncalibrated_error": default["step_s"] / m["median_s"] - 1,
                     "achieved_tflops": m["achieved_tflops"], "mfu": m["mfu"], "images_per_s": m["images_per_s"]})
    result = {"fastmix_calibration": 1, "environment": environment(dev), "catalog_entry": gpu.key,
              "catalog_peaks": {"fp32": gpu.fp32, "fp16_tensor": gpu.fp16_tensor, "bf16_tensor": gpu.bf16_tensor,
                                "bandwidth_gbs": gpu.bandwidth_gbs},
              "conventions": "model FLOPs: conv + linear, multiply-add = 2 FLOPs, forward + backward",
              "ceilings": ceilings(dev, measurements[calibrate_on]["precision"]) if with_ceilings else None,
              "efficiency": eff.values, "overhead_per_op_s": eff.overhead_per_op_s, "calibrated_on": eff.source,
              "measurements": measurements, "predictions": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "predicted_vs_measured.md").write_text(table(rows, result))
    plot(rows, out / "predicted_vs_measured.png", result["environment"]["device"])
    return result


def table(rows: list[dict], result: dict) -> str:
    lines = [f"Device: {result['environment']['device']} ({result['environment']['cpu']}); "
             f"torch {result['environment']['torch']}. Calibrated on: {result['calibrated_on']}.", "",
             "| configuration | measured step (s) | p10-p90 | predicted (s) | error | uncalibrated error | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (calibration)" if r["calibration"] else ""
        lines.append(f"| {r['label']}{mark} | {r['measured_s']:.3f} | {r['spread_s'][0]:.3f}-{r['spread_s'][1]:.3f} | "
                     f"{r['predicted_s']:.3f} | {100 * r['error']:+.1f} % | {100 * r['uncalibrated_error']:+.0f} % | "
                     f"{r['achieved_tflops']:.3f} | {100 * r['mfu']:.1f} % |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    top = max(max(r["measured_s"], r["predicted_s"]) for r in rows) * 1.15
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="exact")
    ax.fill_between([0, top], [0, top * 0.75], [0, top * 1.25], color="0.9", label="±25 %")
    for r in rows:
        ax.plot(r["measured_s"], r["predicted_s"], "s" if r["calibration"] else "o", ms=8)
        ax.annotate(r["label"], (r["measured_s"], r["predicted_s"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured step time (s)", ylabel="predicted step time (s)",
           title=f"cost model vs measurement: {device}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

