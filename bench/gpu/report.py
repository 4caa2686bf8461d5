"""summary.md, one PNG per chart, and the short table printed last."""
from __future__ import annotations

from pathlib import Path


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> list[str]:
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(k)) for _, k in cols) + " |")
    return out


def phase_table(record: dict) -> list[str]:
    rows = []
    for name, e in record["phases"].items():
        head = e.get("result", {}).get("headline", {}) if e.get("status") == "ok" else {}
        note = ", ".join(f"{k} {_fmt(v)}" for k, v in head.items()) or e.get("reason") or e.get("error", "")
        rows.append({"phase": name, "status": e.get("status", "running"), "planned_s": e.get("estimate_s"),
                     "took_s": e.get("duration_s"), "note": note[:160]})
    return table(rows, [("phase", "phase"), ("status", "status"), ("planned s", "planned_s"), ("took s", "took_s"),
                        ("headline / reason", "note")])


def summary_markdown(record: dict) -> str:
    ph = record["phases"]
    env = ph.get("environment", {}).get("result", {})
    lines = ["# bench.gpu summary", "",
             f"Device: {env.get('device', '?')} (capability {env.get('capability', '-')}, driver "
             f"{env.get('nvml', {}).get('driver', '-')}), CUDA {env.get('cuda')}, cuDNN {env.get('cudnn', '-')}, "
             f"CPU {env.get('cpu', '?')} x {env.get('cpu_cores', '?')}; "
             + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()),
             f"Budget {record['suite']['budget_s']} s, took {record['suite'].get('total_s', '?')} s"
             f"{' (--smoke: tiny sizes on the CPU)' if record['suite']['smoke'] else ''}.", "", "## Phases", "",
             *phase_table(record), ""]
    cell_cols = [("model", "model"), ("layout", "layout"), ("precision", "precision"), ("img/s", "images_per_s"),
                 ("median s", "median_s"), ("p10 s", "p10_s"), ("p90 s", "p90_s"), ("TFLOP/s", "achieved_tflops"),
                 ("MFU (catalog)", "mfu_catalog"), ("MFU (measured matmul)", "mfu_measured_ceiling"),
                 ("peak GB", "peak_memory_gb"), ("compile s", "compile_s"), ("error", "error")]
    for name, title in (("matrix", "Training-step matrix (eager)"), ("compiled", "torch.compile, faster layout")):
        if ph.get(name, {}).get("status") == "ok":
            lines += [f"## {title}", "", *table(ph[name]["result"]["cells"], cell_cols), ""]
    if ph.get("matrix", {}).get("status") == "ok":
        lines += ["Layout: " + "; ".join(f"{k}: {v['faster']} ({v['channels_last_speedup']:.2f}x channels_last)"
                                         for k, v in ph["matrix"]["result"]["layout"].items()), ""]
    if ph.get("memory", {}).get("status") == "ok":
        lines += ["## Memory model vs max_memory_allocated", "", *table(ph["memory"]["result"]["rows"], [
            ("model", "model"), ("micro-batch", "micro_batch"), ("measured GB", "measured_gb"),
            ("predicted GB", "predicted_gb"), ("error", "error")]), ""]
    if ph.get("cost", {}).get("status") == "ok":
        lines += [f"## Cost model ({ph['cost']['result']['calibrated_on']})", "", *table(ph["cost"]["result"]["rows"], [
            ("model", "model"), ("layout", "layout"), ("precision", "precision"), ("measured s", "measured_s"),
            ("predicted s", "predicted_s"), ("error", "error"), ("uncalibrated error", "uncalibrated_error")]), ""]
    if ph.get("loaders", {}).get("status") == "ok":
        lines += loader_lines(ph["loaders"]["result"])
    if ph.get("t4_fit", {}).get("status") == "ok":
        lines += ["## T4 fit (torch capped at 15 GB, a T4 less its context; fp16 + GradScaler, the t4 recipe)", "", *table(ph["t4_fit"]["result"]["rows"], [
            ("model", "model"), ("fits", "fits"), ("micro-batch", "micro_batch"), ("accum", "accum_steps"),
            ("peak reserved GB", "peak_reserved_gb"), ("img/s (this GPU)", "images_per_s"), ("error", "error")]), ""]
    if ph.get("end_to_end", {}).get("status") == "ok":
        r = ph["end_to_end"]["result"]
        tel = r.get("telemetry", {})
        lines += [f"## End to end (tools/train.py, {r.get('images', '?')} images)", "",
                  f"{r['model']}: {r.get('updates')} updates, backend {r.get('backend')}, channels_last "
                  f"{r.get('channels_last')}, compile {_fmt(r.get('compile_s'))} s; step log median "
                  f"{_fmt(r.get('step_images_per_s'))} img/s, MFU {_fmt(r.get('step_mfu'))}, loader-wait share "
                  f"{_fmt(r.get('loader_wait_share'))}, loader cost {_fmt(r.get('loader_slowdown'))} (the last "
                  "epoch's rate against the same update with no loader running).",
                  f"NVML over the steady steps ({tel.get('samples', 0)} samples in {_fmt(tel.get('window_s'))} s): " + (", ".join(f"{k} {_fmt(v.get('median'))}" for k, v in tel.items() if isinstance(v, dict)
                                        and "median" in v) or tel.get("reason", "no samples")), ""]
    lines += ["## How to read this", "",
              "Each phase is measured, skipped with its reason (budget, missing package, no CUDA), or failed with "
              "its traceback in gpu.json. MFU is model FLOPs (multiply-add = 2, forward + backward) over the "
              "catalog's dense peak, and over the matmul ceiling measured here. Cost-model errors are "
              "predicted / measured - 1.", ""]
    return "\n".join(lines)


def loader_lines(res: dict) -> list[str]:
    """The loaders against the training rates; every verdict names the images it was measured on."""
    synthetic = res.get("images") == "synthetic"
    label = "SYNTHETIC images: 160x120 JPEGs, several times cheaper to decode than photos; " \
            "the verdicts are labelled synthetic" if synthetic else f"{res.get('images', '?')}"
    rows = [{**r, "feeds": "; ".join(f"{m}: {'synthetic: ' if synthetic else ''}{'yes' if f['can_feed'] else 'no'} "
                                     f"({f['cores_needed']} cores)" for m, f in r.get("feeds", {}).items())}
            for r in res["rows"]]
    cols = [("backend", "backend"), ("img/s", "images_per_s"), ("cores used", "cpu_cores_used"),
            ("first epoch s", "first_epoch_s"), ("can it feed (cores needed)", "feeds"), ("error", "error")]
    lines = [f"## Loaders ({res['cores']} cores) against the training rates ({label})", "", *table(rows, cols), ""]
    lines += [f"Skipped: {b}: {why}" for b, why in res["skipped_backends"].items()] + [""]
    if res.get("small_rows"):
        lines += [f"### At 64 px ({res['small_rows'][0].get('images', '?')} images)", "",
                  *table(res["small_rows"], cols[:4] + cols[5:]), ""]
    return lines


def charts(record: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ph, written = record["phases"], []
    env = ph.get("environment", {}).get("result", {})
    # Every chart's title ends with what it ran on and when: the device, and the suite's start date.
    device = env.get("device", "device unknown")
    on = f"{device if device != 'cpu' else 'cpu (' + str(env.get('cpu', '?')) + ')'}; " \
         f"measured {str(record.get('suite', {}).get('started', 'date unknown'))[:10]}"

    def save(fig, name):
        ax = fig.axes[0]
        ax.set_title(f"{ax.get_title()}\n{on}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    if ph.get("matrix", {}).get("status") == "ok":
        cells = [c for c in ph["matrix"]["result"]["cells"] + ph.get("compiled", {}).get("result", {}).get("cells", [])
                 if "images_per_s" in c]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        labels = [f"{c['model'].replace('convmixer_', '')}\n{c['layout']} {c['precision']}{' compiled' if c['compile'] else ''}"
                  for c in cells]
        ax.bar(range(len(cells)), [c["images_per_s"] for c in cells], color=["C1" if c["compile"] else "C0" for c in cells])
        ax.set_xticks(range(len(cells)), labels, fontsize=6, rotation=60, ha="right")
        ax.set(ylabel="images / s", title="Training step throughput (real full steps)")
        save(fig, "matrix.png")
    for name, xkey, ykey, title in (("memory", "measured_gb", "predicted_gb", "Training memory (GB)"),
                                    ("cost", "measured_s", "predicted_s", "Step time (s)")):
        rows = ph.get(name, {}).get("result", {}).get("rows") if ph.get(name, {}).get("status") == "ok" else None
        if not rows:  # e.g. memory on a GPU where no cell reported its peak
            continue
        fig, ax = plt.subplots(figsize=(5.5, 5))
        top = max(max(r[xkey], r[ykey]) for r in rows) * 1.15
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.fill_between([0, top], [0, 0.9 * top], [0, 1.1 * top], color="0.9", label="±10 %")
        for r in rows:
            ax.plot(r[xkey], r[ykey], "s" if r.get("calibration") else "o")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured", ylabel="predicted", title=title)
        ax.legend()
        save(fig, f"{name}.png")
    if ph.get("loaders", {}).get("status") == "ok":
        res = ph["loaders"]["result"]
        rows = [r for r in res["rows"] if "images_per_s" in r]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar([r["backend"] for r in rows], [r["images_per_s"] for r in rows])
        for k, (m, rate) in enumerate(res["training_rates"].items()):
            ax.axhline(rate, color=f"C{k + 1}", ls="--", label=f"{m} trains at {rate:.0f}/s")
        ax.set(ylabel="images / s", title=f"Loaders on {res['cores']} cores vs training rates")
        ax.legend(fontsize=7)
        save(fig, "loaders.png")
    return written
