"""docs/benchmarks.md, generated from the result files under bench/results/.

    python -m bench.report            # rewrite docs/benchmarks.md
    python -m bench.report --check    # exit 1, naming the first differing line, if it is stale

Every table comes from a JSON file; the prose around it is fixed text (bench/report_text.py) plus
sentences whose numbers are computed from the same JSON, so no number is typed by hand. The page is
a list of sections, each a heading, the JSON it reads (relative to the results folder) and a
function JSON -> markdown. A new measurement is a new entry in SECTIONS.
"""
from __future__ import annotations

import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import cli
from bench import report_text as text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Section:
    title: str
    source: str                      # JSON path under the results folder
    render: Callable[[dict], str]    # the parsed JSON -> the section's markdown body
    missing: str | None = None       # what the page says while the file does not exist; None: required
    beside: bool = False             # render(data, results folder): it reads other files there too


def convert_quality(d: dict) -> str:
    from bench.convert import markdown
    return text.CONVERT_QUALITY + "\n\n" + markdown(d["table"], d["n_images"])


def convert_throughput(d: dict) -> str:
    lines = ["| `--workers` | shards: img/s (per worker) | `.beton`: img/s | end to end: img/s |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['wds_images_per_s']:.0f} ({r['wds_images_per_s_per_worker']:.0f}) | "
              f"{r['ffcv_images_per_s']:.0f} | {r['total_images_per_s']:.0f} |" for r in d["throughput"]]
    return text.CONVERT_THROUGHPUT.format(n=d["n_images"], cpus=d["cpus"]) + "\n\n" + "\n".join(lines)


def _pil_rate(rows: list[dict], size: int) -> float | None:
    return next((r["images_per_s"] for r in rows if r["backend"] == "pil" and r["image_size"] == size), None)


def loaders(d: dict) -> str:
    from bench.loaders import loader_rows
    rows = loader_rows(d["rows"])
    lines = ["| backend | size | img/s | × pil | CPU cores used | decode limit img/s | vs limit | first epoch s | "
             "peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pil = _pil_rate(rows, r["image_size"])
        lines.append(f"| {r['backend']} | {r['image_size']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s'] / pil:.2f} | {r['cpu_cores_used']} | {r['decode_limit_images_per_s']:.0f} | "
                     f"{r['images_per_s'] / r['decode_limit_images_per_s']:.2f} | {r['first_epoch_s']} | "
                     f"{r['peak_rss_mb']:.0f} |" if pil else f"| {r['backend']} | {r['image_size']} | … |")
    best = []
    for size in dict.fromkeys(r["image_size"] for r in rows):
        real = [r for r in rows if r["image_size"] == size]
        top = max(real, key=lambda r: r["images_per_s"])
        same = max((r for r in real if "@" not in r["backend"]), key=lambda r: r["images_per_s"])
        best.append(f"at {size} px `{same['backend']}` {same['images_per_s'] / _pil_rate(rows, size):.2f}× pil on "
                    f"the same storage" + (f", `{top['backend']}` {top['images_per_s'] / _pil_rate(rows, size):.2f}×"
                                           if top is not same else ""))
    head = text.LOADERS.format(images=d["images"], workers=d["workers"], cpus=d["cpu_count"], batch=d["batch_size"],
                               dtype=d["dtype"], torch=d["torch"])
    return head + "\n\n" + "\n".join(lines) + "\n\nFastest real backend per size: " + "; ".join(best) + ".\n\n" + \
        text.LOADERS_AFTER


def four_times_pil(stage_rows: list[dict], loader_rows: list[dict], backend: str = "opencv") -> list[str]:
    """Per size: the CPU time per image `backend` may spend to deliver 4x pil's images/s on the cores
    it uses, against what its work stages alone cost on an idle core (why a bar can be out of reach)."""
    out = []
    for s in stage_rows:
        r = next((r for r in loader_rows if r["backend"] == backend == s["backend"] and
                  r["image_size"] == s["image_size"]), None)
        pil = _pil_rate(loader_rows, s["image_size"])
        if r is None or not pil:
            continue
        budget = r["cpu_cores_used"] / (4 * pil) * 1e6
        work = sum(s["us_per_image"].get(k, 0) for k in ("decode", "crop/resize", "flip", "convert+normalize"))
        out.append(f"at {s['image_size']} px, 4× pil ({4 * pil:.0f} img/s on the {r['cpu_cores_used']} cores "
                   f"`{backend}` uses) leaves {budget:.0f} µs per image; its decode, crop/resize, flip and "
                   f"normalize alone take {work:.0f} µs ({s['us_per_image'].get('decode', 0):.0f} of them decode)")
    return out


def stages(d: dict, results: Path = RESULTS) -> str:
    from bench.stages import markdown
    loaders_json = results / "loaders-cpu2.json"  # the same run's loader rows (d["loader_rows"] says so)
    budget = four_times_pil(d["rows"], json.loads(loaders_json.read_text())["rows"]) if loaders_json.is_file() else []
    tail = ("\n\nHow far a CPU backend can go on these cores: " + "; ".join(budget) + ". Where the stages alone "
            "exceed the budget, no hand-off can reach 4× pil on that storage; a smaller stored side "
            "(`opencv@320`) cuts the decode instead.") if budget else ""
    return text.STAGES.format(repeats=d["repeats"]) + "\n\n" + markdown(d["rows"]) + tail + "\n\n" + \
        text.STAGES_AFTER


def storage(d: dict) -> str:
    from bench.convert import storage_markdown
    size = next(int(k.split("_")[2]) for k in d["storage"][0] if k.startswith("decode_crop_"))
    return text.STORAGE.format(n=d["n_images"], size=size) + "\n\n" + storage_markdown(d["storage"], size) + \
        "\n\n" + text.STORAGE_AFTER


def feed(d: dict) -> str:
    from bench.feed import markdown
    return text.FEED.format(model=d["model"], batch=d["batch"], efficiency=d["efficiency"],
                            cpus=d["loader_cpu_count"]) + "\n\n" + markdown(d["rows"])


def calibration_summary(d: dict) -> str:
    """How many held-out steps are within 15 %, and the worst, from one calibration.json."""
    held = [r for r in d["predictions"] if not r["calibration"]]
    within = sum(abs(r["error"]) <= 0.15 for r in held)
    worst = max(held, key=lambda r: abs(r["error"]))
    return f"{within} of {len(held)} held-out steps within 15 %, worst {100 * worst['error']:+.1f} % ({worst['label']})"


def calibration(d: dict, results: Path = RESULTS) -> str:
    from fastmix.perf.calibration import table
    others = []
    for name in ("calibration-cpu2-repeat", "calibration-cpu2-load8"):
        path = results / name / "calibration.json"
        if path.is_file():
            others.append(f"`bench/results/{name}/`: {calibration_summary(json.loads(path.read_text()))}")
    load = d.get("load_average", {})
    head = text.CALIBRATION.format(summary=calibration_summary(d), before=load.get("before", ["?"])[0],
                                   after=load.get("after", ["?"])[0])
    held = [r for r in d["predictions"] if not r["calibration"]]
    unc = sorted(100 * r["uncalibrated_error"] for r in held)
    head += (f" Without the calibration (the stated default efficiencies) the same predictions are off by "
             f"{unc[0]:+.0f} to {unc[-1]:+.0f} %.")
    return head + "\n\n" + table(d["predictions"], d).rstrip("\n") + "\n\nOther runs of the same command: " + \
        "; ".join(others) + ".\n\n" + text.CALIBRATION_AFTER


def tiny64(folder: str) -> Callable[[dict], str]:
    """A tiny64 acceptance run: tools/train.py's summary.json, copied with its curves.png into `folder`."""
    def render(d: dict) -> str:
        rows, cfg = d["epochs"], d["config"]
        best = max(rows, key=lambda r: float(r["top1"]))
        sizes = " → ".join(dict.fromkeys(f"{r['image_size']} px" for r in rows))
        lines = [text.TINY64_BEFORE.format(
            model=cfg["model"], overrides=_overrides(cfg["model_overrides"]), precision=d["precision"], sizes=sizes,
            host=d.get("host_cpu", "a host not recorded"), epochs=cfg["epochs"], best=float(best["top1"]),
            epoch=best["epoch"], wall=float(rows[-1]["wall_s"]) / 60, peak=d["mfu_peak"], budget=budget(d),
            total=(f"{d['command_wall_s'] / 60:.1f} minutes for the whole command, start-up included"
                   if d.get("command_wall_s") else "the command's own start-up not measured")), "",
            "| epoch | size | val top-1 | top-5 | train loss | images/s | MFU | data wait | loader cost | minutes |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            def pct(key, digits=0):
                return f"{100 * float(r[key]):.{digits}f} %" if r.get(key) not in ("", None) else "n/a"
            lines.append(f"| {r['epoch']} | {r['image_size']} | {float(r['top1']):.1f} % | {float(r['top5']):.1f} % | "
                         f"{float(r['train_loss']):.3f} | {float(r['images_per_s']):.0f} | {pct('mfu')} | "
                         f"{pct('data_wait_share', 1)} | {loader_cost(r)} | {float(r['wall_s']) / 60:.1f} |")
        return "\n".join(lines) + f"\n\n![tiny64 curves](../bench/results/{folder}/curves.png)\n\n" + evaluated(d)
    return render


def budget_run(folder: str) -> Callable[[dict, Path], str]:
    """One run of bench.budgets (`folder` under the results): tiny64()'s table, with the command's
    wall-clock and tools/evaluate.py's score from the records beside its summary, and how its speed
    compares with the AMX Xeon of issue 29 (AMX_RUN)."""
    def render(d: dict, results: Path) -> str:
        command = json.loads((results / folder / "command.json").read_text())
        scored = json.loads((results / folder / "evaluate.json").read_text())
        d = {**d, "command_wall_s": command["wall_s"], "evaluate_best": scored}
        rate, amx = d["updates"] / command["wall_s"], text.AMX_RUN["updates"] / text.AMX_RUN["wall_s"]
        matched = text.AMX_MATCH.format(rate=rate, amx=amx, ratio=amx / rate, budget=29.5 * amx / rate,
                                        minutes=d["config"]["time_budget_min"], **text.AMX_RUN)
        return matched + "\n\n" + tiny64(folder)(d)
    return render


def loader_cost(row: dict) -> str:
    """An epoch's loader cost as the console says it (loadercost.describe): noise is not a figure."""
    from fastmix.train.loadercost import describe
    return "n/a" if row.get("loader_slowdown") in ("", None) else describe(float(row["loader_slowdown"]))


def budget(d: dict) -> str:
    """What the run's time budget chose (budget.py), as the trainer printed it."""
    b = d.get("time_budget")
    if not b:
        return "No time budget: a fixed number of epochs"
    from fastmix.train.budget import bought, timed_sizes
    timed = f"an update timed at {timed_sizes(b['update_s'])}, an evaluation at {b['eval_s']:.0f} s"
    if "updates" not in b:  # a record from before budgets planned updates: whole epochs
        return f"The {d['config']['time_budget_min']:g}-minute budget fitted {b['epochs']} epochs ({timed})"
    first, steps = b.get("first_plan"), b.get("replans") or ([b["replan"]] if "ratio" in b.get("replan", {}) else [])
    trims, steps = [r for r in steps if r.get("trim")], [r for r in steps if not r.get("trim")]
    # each re-plan: after the first epoch at a size, that size's measured/timed ratio
    ratios = ", ".join(f"{r['size']} px {r['ratio']:.2f}x" if "size" in r else f"{r['ratio']:.2f}x" for r in steps)
    replanned = (f"; re-planned from {first['updates']:,} updates after the first epoch at each size, which took "
                 f"{ratios} the timed rate" if first and steps else "")
    replanned += "".join(f"; the last epoch re-cut after epoch {r['after_epoch']} with {r['left_s']:.0f} s left"
                         for r in trims)
    return f"The {d['config']['time_budget_min']:g}-minute budget bought {bought(b)} ({timed}{replanned})"


def evaluated(d: dict) -> str:
    """tools/evaluate.py's result on the run's best checkpoint, recorded beside the run's summary."""
    e = d.get("evaluate_best")
    if not e:
        return "The run's best checkpoint has not been evaluated separately."
    return text.TINY64_AFTER.format(top1=e["top1"], top5=e["top5"], images=e["eval_images"], backend=e["backend"],
                                    precision=e["precision"], size=e["image_size"], best=d["best_top1"])


def _overrides(o: dict | None) -> str:
    """"act gelu, dim 256, ...": a tiny64 variant's overrides (convmixer_256_8's act is GELU)."""
    return ", ".join(f"{k} {v}" for k, v in {"act": "gelu", **(o or {})}.items())


def cpu_step(name: str) -> Callable[[dict], str]:
    """bench.cpu_step's NAME.json, with its NAME.png."""
    def render(d: dict) -> str:
        from bench.cpu_step import table
        return (text.CPU_STEP_BEFORE.format(
            host=d["host"], model=d["model"], batch=d["batch"], size=d["image_size"],
            overrides=_overrides(d["model_overrides"])) + "\n\n"
                + table(d) + f"\n![variants and ops](../bench/results/{name}.png)")
    return render


def budget_sweep(d: dict) -> str:
    """bench.budgets: top-1 against the budget, with what each budget bought and how it re-planned."""
    from bench.budgets import table
    rows = d["budgets"]
    replans = "; ".join(f"{r['minutes']:g} min: " + ", ".join(f"{size} px {ratio:.2f}x" for size, ratio in r["replans"])
                        for r in rows)
    models = {" ".join(f"{k} {v}" for k, v in r["model"].items()) for r in rows}
    return text.BUDGETS_BEFORE.format(recipe=d["recipe"], count=len(rows), host=d["host"], date=d["measured_at"],
                                      minutes=",".join(f"{r['minutes']:g}" for r in rows)) + "\n\n" + table(d) + \
        f"\nEvery budget trained ConvMixer {' / '.join(sorted(models))} at {rows[0]['precision']}. Each size's first " \
        f"epoch against its timing (measured/timed, the ratio its re-plan used): {replans}.\n\n" \
        "![top-1 against the budget](../bench/results/tiny64-budgets/budgets.png)"


def time_to_accuracy(d: dict) -> str:
    from bench.tta import table
    run = next(r for r in d["backends"].values() if r["status"] == "done")
    model = _overrides(run["model_overrides"])
    return text.TTA_BEFORE.format(date=d["date"], host=d["host"], recipe=d["settings"]["recipe"], model=model,
                                  batch=run["batch_size"]) + "\n\n" + table(d) + "\n![top-1 against minutes](../bench/results/tta/tta.png)\n\n" + \
        text.TTA_AFTER


SECTIONS = [
    Section("Conversion: max side and quality", "convert-quality-cpu2.json", convert_quality),
    Section("Conversion throughput", "convert-cpu2.json", convert_throughput),
    Section("Loader throughput", "loaders-cpu2.json", loaders),
    Section("Where the time goes: per-stage cost", "stages-cpu2.json", stages, beside=True),
    Section("Storage choices: write mode and max side", "storage-cpu2.json", storage),
    Section("Cores to feed each GPU", "feed-cpu2.json", feed),
    Section("Cost model calibration on this CPU", "calibration-cpu2/calibration.json", calibration, beside=True),
    Section("The CPU training step: options and ops", "cpu-step-tiny64.json", cpu_step("cpu-step-tiny64"),
            missing=text.CPU_STEP_MISSING),
    Section("The CPU training step on 2 AVX2 cores (fp32)", "cpu-step-tiny64-avx2.json",
            cpu_step("cpu-step-tiny64-avx2"), missing=text.CPU_STEP_MISSING),
    Section("Tiny ImageNet: top-1 against the time budget", "tiny64-budgets/budgets.json", budget_sweep,
            missing=text.BUDGETS_MISSING),
    Section("Tiny ImageNet at the budget of a 2-core AMX Xeon's 30 minutes", "tiny64-budgets/32.5min/summary.json",
            budget_run("tiny64-budgets/32.5min"), missing=text.BUDGETS_MISSING, beside=True),
    Section("Tiny ImageNet in 30 minutes on 2 cores with native bf16, planned in updates", "tiny64-cpu2-bf16/summary.json",
            tiny64("tiny64-cpu2-bf16"), missing=text.TINY64_BF16_MISSING),
    Section("Tiny ImageNet in 30 minutes on 2 AVX2 cores (fp32)", "tiny64-cpu2-avx2/summary.json",
            tiny64("tiny64-cpu2-avx2"), missing=text.TINY64_AVX2_MISSING),
    Section("Tiny ImageNet in 30 minutes on 2 cores with native bf16 (earlier recipe)", "tiny64-cpu2/summary.json",
            tiny64("tiny64-cpu2"), missing=text.TINY64_MISSING),
    Section("Time to accuracy", "tta/tta.json", time_to_accuracy, missing=text.TTA_MISSING),
]


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def render(results: Path = RESULTS, sections: list[Section] = SECTIONS) -> str:
    parts = [text.HEADER, "\n".join(f"- [{s.title}](#{anchor(s.title)})" for s in sections)]
    for s in sections:
        path = results / s.source
        if not path.is_file():
            if s.missing is None:
                raise SystemExit(f"bench.report: {path}: result file not found (section {s.title!r})")
            parts.append(f"## {s.title}\n\n{s.missing}")
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise SystemExit(f"bench.report: {path}: not JSON ({e})") from e
        try:
            body = (s.render(data, results) if s.beside else s.render(data)).strip()
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a result file of another shape
            raise SystemExit(f"bench.report: {path}: not what section {s.title!r} reads ({type(e).__name__}: {e})") from e
        parts.append(f"## {s.title}\n\n{body}\n\nSource: `bench/results/{s.source}`.")
    return "\n\n".join(parts) + "\n"


def build_parser():
    p = cli.parser("bench.report", __doc__)
    p.add_argument("--results", default=str(RESULTS), help="the folder of result files (default: bench/results)")
    p.add_argument("--page", default=str(PAGE), help="the page to write or check (default: docs/benchmarks.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page differs")
    return p


@cli.one_line_errors
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    print(f"results read from {a.results}/: " + ", ".join(s.source for s in SECTIONS if (Path(a.results) / s.source).is_file()))
    page, out = render(Path(a.results)), Path(a.page)
    old = out.read_text() if out.is_file() else ""
    if old == page:  # not rewritten: an up-to-date page stays untouched
        print(f"{out}: up to date")
        return 0
    if a.check:
        diff = list(difflib.unified_diff(old.splitlines(), page.splitlines(), str(out), "generated", n=0, lineterm=""))
        print(f"{out}: differs from what `python -m bench.report` generates:", *diff[:12], sep="\n", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
