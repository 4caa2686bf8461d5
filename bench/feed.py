"""Cores to feed each catalog GPU: its training rate over each loader's measured rate per core.

    python -m bench.feed                                    # reads bench/results/loaders-cpu2.json
    python -m bench.feed --loaders runs/bench/loaders-cpu2.json --sizes 64
    python -m bench.feed --sizes 224,160 --calibration runs/calib-t4/calibration.json \\
        --measured runs/gpu/gpu.json --measured-gpu t4

The training rate of `--model` per GPU and image size is the cost model's
(fastmix.perf.cost.predict_step at `--batch-size`, fp16 where the GPU has fp16 tensor cores, else
bf16, else fp32), or the GPU suite's measured rate where `--measured` has one (bench.gpu's
matrix cells, fastest layout; `--measured-gpu` names the catalog GPU it ran on). A loader's
rate per core is images/s over CPU cores used, from a bench.loaders JSON (same image size; the
loaders were measured on that machine's cores, so the answer is in cores of that kind).
--sizes defaults to the sizes the loaders file measured; a size it lacks is refused, by name.
Writes JSON + a markdown table into --out (default runs/bench/; --publish: bench/results/), as
feed-<what follows loaders- in the loaders file's name>.{json,md}; never over the loaders file.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench import cli
from bench.cli import PUBLISHED, add_out, alias, out_path
from fastmix.devices.catalog import load_catalog
from fastmix.perf.cost import Efficiency, predict_step


def is_variant(row: dict) -> bool:
    """bench.loaders' before-measurements (`ffcv-fulldecode`, `<name>:mmap`): not loaders a user picks."""
    return "variant_of" in row or ":" in row["backend"] or row["backend"].endswith("-fulldecode")


def per_core_rates(loaders: dict, path: Path) -> dict[tuple[str, int], float]:
    """(backend, image size) -> images/s per CPU core used, from a bench.loaders JSON."""
    rates = {}
    rows = loaders.get("rows") if isinstance(loaders, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"backend", "image_size"} <= set(r) for r in rows):
        raise ValueError(f"{path}: not a bench.loaders result (its rows need 'backend' and 'image_size')")
    for r in rows:
        if is_variant(r) or r["backend"] == "synthetic":
            continue
        if r.get("cpu_cores_used", 0) <= 0 or r.get("images_per_s", 0) <= 0:
            raise ValueError(f"{path}: row {r['backend']} at {r['image_size']} px has no positive "
                             "images_per_s / cpu_cores_used")
        rates[(r["backend"], int(r["image_size"]))] = r["images_per_s"] / r["cpu_cores_used"]
    if not rates:
        raise ValueError(f"{path}: no loader rows (run python -m bench.loaders first)")
    return rates


def precision_for(device) -> str:
    return next(p for p in ("fp16", "bf16", "fp32") if device.supports(p))


def measured_rates(path: str | None, gpu: str | None, model: str) -> dict[tuple[str, int], float]:
    """(gpu key, image size) -> the fastest measured eager training rate of `model` in a gpu.json."""
    if not path:
        return {}
    if not gpu:
        raise ValueError("--measured needs --measured-gpu (the catalog key of the GPU it ran on)")
    data = json.loads(Path(path).read_text())
    cells = data.get("phases", {}).get("matrix", {}).get("result", {}).get("cells", [])
    out: dict[tuple[str, int], float] = {}
    for c in cells:
        if c.get("model") == model and "images_per_s" in c and not c.get("compile"):
            key = (gpu, int(c.get("image_size", 224)))
            out[key] = max(out.get(key, 0.0), c["images_per_s"])
    if not out:
        raise ValueError(f"{path}: no measured matrix cells for {model}")
    return out


def table(model: str, batch: int, sizes: list[int], rates: dict, measured: dict, eff: Efficiency,
          catalog: dict) -> list[dict]:
    rows = []
    backends = list(dict.fromkeys(b for b, _ in rates))
    for key, device in catalog.items():
        if key == "cpu":
            continue
        precision = precision_for(device)
        for size in sizes:
            if (key, size) in measured:
                train, source, fastest = measured[(key, size)], "measured (bench.gpu)", None
            else:
                pred = predict_step(model, batch, precision, device, eff, image_size=size)
                train, source = pred["images_per_s"], f"predicted ({eff.source}; range: {pred['range_source']})"
                slowest, fastest = (batch / s for s in reversed(pred["range_s"]))
            row = {"gpu": key, "gpu_name": device.name, "model": model, "image_size": size, "precision": precision,
                   "train_images_per_s": round(train, 1), "train_rate_source": source, "cores_to_feed": {},
                   "loader_images_per_s_per_core": {}}
            if fastest is not None:  # a prediction: the GPU may be as fast as the top of its range
                row["train_images_per_s_range"] = [round(slowest, 1), round(fastest, 1)]
                row["cores_to_feed_at_fastest"] = {}
            for b in backends:
                per_core = rates.get((b, size))
                if per_core:
                    row["loader_images_per_s_per_core"][b] = round(per_core, 1)
                    row["cores_to_feed"][b] = float(f"{train / per_core:.3g}")
                    if fastest is not None:
                        row["cores_to_feed_at_fastest"][b] = float(f"{fastest / per_core:.3g}")
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    backends = list(dict.fromkeys(b for r in rows for b in r["cores_to_feed"]))
    lines = ["| GPU | size | precision | train img/s | " + " | ".join(f"{b} cores" for b in backends) + " |",
             "|---|---:|---|---:|" + "---:|" * len(backends)]
    def up(x: float) -> float:  # cores round up: 0.31 cores need 0.4 of a core's time, not 0.3
        return math.ceil(x * 10) / 10

    for r in rows:
        top = r.get("cores_to_feed_at_fastest", {})
        cells = " | ".join((f"{up(r['cores_to_feed'][b])}" + (f" (≤{up(top[b])})" if b in top else ""))
                           if b in r["cores_to_feed"] else "–" for b in backends)
        rate = f"{r['train_images_per_s']:.0f}"
        rate += " ({:.0f}–{:.0f})".format(*r["train_images_per_s_range"]) if "train_images_per_s_range" in r \
            else " (measured)"
        lines.append(f"| {r['gpu_name']} | {r['image_size']} | {r['precision']} | {rate} | {cells} |")
    per_core = {b: {s: v for r in rows for bb, v in r["loader_images_per_s_per_core"].items() if bb == b
                    for s in [r["image_size"]]} for b in backends}
    lines.append("")
    lines.append("Loader images/s per core: " + "; ".join(
        f"{b} " + ", ".join(f"{v:.0f} @{s}" for s, v in sorted(d.items(), reverse=True)) for b, d in per_core.items()))
    return "\n".join(lines)


def build_parser():
    p = cli.parser("bench.feed", __doc__)
    p.add_argument("--loaders", default=str(PUBLISHED / "loaders-cpu2.json"),
                   help="a bench.loaders JSON (default: bench/results/loaders-cpu2.json)")
    p.add_argument("--model", default="convmixer_768_32")
    p.add_argument("--batch-size", type=int, default=64, help="the training batch the rates are predicted at")
    p.add_argument("--sizes", help="image sizes in px (default: every size the loaders file measured)")
    p.add_argument("--calibration", help="calibration.json (tools/profile_gpu.py); default: stated efficiencies")
    p.add_argument("--catalog", help="GPU catalog YAML overriding/adding entries (fastmix.devices.catalog)")
    p.add_argument("--measured", help="a bench.gpu gpu.json whose measured training rates replace predictions")
    p.add_argument("--measured-gpu", help="catalog key of the GPU the --measured file ran on")
    add_out(p, "feed-<what follows loaders- in its name>", "the JSON and markdown")
    alias(p, "--batch", "--batch-size")
    return p


def sizes_of(p, given: str | None, rates: dict, path: Path) -> list[int]:
    """--sizes, each one the loaders file measured (else refused, naming it), or all it measured."""
    measured = sorted({s for _, s in rates}, reverse=True)
    if not given:
        return measured
    try:
        sizes = [int(s) for s in given.split(",")]
    except ValueError:
        p.error(f"--sizes {given!r}: expected comma-separated pixel sizes, e.g. 224,160")
    lacking = [s for s in sizes if s not in measured]
    if lacking:
        p.error(f"--sizes: {path} has no loader rows at {', '.join(map(str, lacking))} px "
                f"(it has {', '.join(map(str, measured))})")
    return sizes


@cli.one_line_errors
def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    path = Path(a.loaders)
    out = out_path(p, a, cli.derived_name(path.stem, "feed"), inputs=[path, a.measured, a.calibration])
    if not path.is_file():
        raise SystemExit(f"python -m bench.feed: {path}: not found (run python -m bench.loaders first)")
    print(f"loader rates from {path}", flush=True)
    loaders = json.loads(path.read_text())
    rates = per_core_rates(loaders, path)
    sizes = sizes_of(p, a.sizes, rates, path)
    eff = Efficiency.load(a.calibration) if a.calibration else Efficiency()
    rows = table(a.model, a.batch_size, sizes, rates, measured_rates(a.measured, a.measured_gpu, a.model), eff,
                 load_catalog(a.catalog))
    result = {"loaders": str(path), "loader_device": loaders.get("device"),
              "loader_cpu_count": loaders.get("cpu_count"),
              "model": a.model, "batch": a.batch_size, "efficiency": eff.source, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(rows)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
