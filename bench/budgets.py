"""Top-1 against the time budget: one recipe on one dataset at several `time_budget_min`, each the
whole tools/train.py command timed from outside, its best.pt then scored by tools/evaluate.py.

    python -m bench.budgets --data data/tinyimagenet-b --minutes 15,32.5,60             # runs/bench/budgets/
    python -m bench.budgets --data data/tinyimagenet-b --minutes 15,32.5,60 --publish   # bench/results/tiny64-budgets/
    python -m bench.budgets --replot --publish                                          # only redraw

What a budget buys is budget x speed, a number of updates: a 60-minute budget on one machine buys
about what 30 minutes buy on one twice as fast, so the budgets of one machine stand in for machines
of other speeds. Each run needs the machine to itself (nothing else CPU-heavy beside it: on 2
cores a second process slows the loop many times over). The budgets run one after another.

The runs, checkpoints included, go to runs/bench/budgets/runs/<M>min/ and its log to <M>min.log
there (never committed). OUT gets per budget <M>min/ with the run's summary.json, epochs.csv,
curves.png, evaluate.json and command.json (the command, its exit code and wall-clock seconds),
then budgets.json, budgets.md (the table docs/benchmarks.md shows) and budgets.png, with every budget
OUT holds (an earlier call's too). A budget whose command.json records a finished run of the same
settings (recipe, data, --set) is kept, so an interrupted sweep resumes; a finished run of other
settings, or a run folder left by a stopped run, is refused without --overwrite, which runs it
again. --publish writes bench/results/<recipe>-budgets/.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import cli, plotting

ROOT = Path(__file__).resolve().parents[1]
RUNS = cli.RUNS / "budgets" / "runs"
COPIED = ("summary.json", "epochs.csv", "curves.png", "evaluate.json", "command.json")
OWN_KEYS = ("time_budget_min", "out", "data")  # set by this benchmark: a --set of them is refused


def build_parser():
    p = cli.parser("bench.budgets", __doc__)
    p.add_argument("--data", help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--recipe", default="tiny64", help="training recipe (default: tiny64)")
    p.add_argument("--minutes", help="comma-separated budgets in minutes, e.g. 15,32.5,60")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every budget, as tools/train.py --set")
    p.add_argument("--out", help="folder for budgets.json/.md/.png and the runs' records "
                                 "(default: runs/bench/budgets; with --publish bench/results/tiny64-budgets)")
    cli.add_publish(p)
    p.add_argument("--overwrite", action="store_true", help="run a budget again although it has a record")
    p.add_argument("--replot", action="store_true", help="only rewrite budgets.json/.md/.png from the records")
    return p


def parse_args(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    a.out = Path(a.out) if a.out else (cli.PUBLISHED / f"{a.recipe}-budgets" if a.publish else cli.RUNS / "budgets")
    cli.check_writable(p, a.out / "budgets.json", a.publish)
    if not a.replot:
        if not a.data or not a.minutes:
            p.error("--data and --minutes are needed (or --replot)")
        try:
            a.minutes = [float(m) for m in a.minutes.split(",")]
        except ValueError:
            p.error(f"--minutes {a.minutes!r}: comma-separated numbers")
        if any(m <= 0 for m in a.minutes):
            p.error("--minutes: each budget must be positive")
        taken = [s for s in a.set if s.partition("=")[0].strip() in OWN_KEYS]
        if taken:
            p.error(f"--set {taken[0]}: bench.budgets sets it (--minutes, --data)")
    return a


def name(minutes: float) -> str:
    return f"{minutes:g}min"


def settings(a) -> dict:
    """What makes two runs at one budget the same measurement."""
    return {"recipe": a.recipe, "data": str(Path(a.data).resolve()), "set": list(a.set)}


def recorded(done: dict) -> dict:
    """A record's settings; from its command line where it has none (a run recorded by hand)."""
    if "settings" in done:
        return done["settings"]
    argv = done["argv"]
    value = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in ("--recipe", "--data")}
    sets = [argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag == "--set" and
            not argv[i + 1].startswith("time_budget_min=")]
    return {"recipe": value.get("--recipe"), "data": str(Path(value.get("--data", "")).resolve()), "set": sets}


def finished(done: dict) -> bool:
    return done.get("rc") == 0 and done.get("evaluate_rc") == 0


def run_budget(a, minutes: float) -> dict:
    """tools/train.py at `minutes`, timed from outside, then tools/evaluate.py on its best.pt."""
    run = RUNS / name(minutes)
    record = run / "command.json"
    if record.is_file() and not a.overwrite:
        done = json.loads(record.read_text())
        if finished(done) and recorded(done) == settings(a):
            print(f"{name(minutes)}: already run ({done['wall_s'] / 60:.1f} min), kept")
            return done
        if finished(done):
            raise FileExistsError(f"{run}: a run of other settings ({recorded(done)}); "
                                  "--overwrite runs this budget again")
    if run.exists() and not a.overwrite:
        raise FileExistsError(f"{run}: a run folder without a finished record (a stopped run?); "
                              "--overwrite runs this budget again")
    for own in ("command.json", "evaluate.json"):  # this benchmark's records: an interrupted rerun leaves none
        (run / own).unlink(missing_ok=True)
    sets = [x for s in a.set for x in ("--set", s)]
    argv = [sys.executable, str(ROOT / "tools" / "train.py"), "--recipe", a.recipe, "--data", a.data,
            "--set", f"time_budget_min={minutes:g}", *sets, "--out", str(run), "--overwrite"]
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / f"{name(minutes)}.log"
    print(f"{name(minutes)}: {' '.join(argv[1:])} (log: {log})", flush=True)
    started = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    done = {"argv": argv[1:], "settings": settings(a), "rc": rc, "wall_s": round(time.time() - started, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
    if rc == 0:
        rc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--checkpoint", str(run / "best.pt"),
                             "--data", a.data, "--json", str(run / "evaluate.json")]).returncode
        done["evaluate_rc"] = rc
    record.write_text(json.dumps(done, indent=1) + "\n")
    print(f"{name(minutes)}: exit {done['rc']} after {done['wall_s'] / 60:.1f} min", flush=True)
    return done


def row(minutes: float, folder: Path) -> dict:
    """One budget's line: what it bought (updates, epochs, sizes, model) and what it reached."""
    summary = json.loads((folder / "summary.json").read_text())
    command = json.loads((folder / "command.json").read_text())
    scored = json.loads((folder / "evaluate.json").read_text())
    plan, epochs = summary["time_budget"], summary["epochs"]
    return {"minutes": minutes, "host": summary.get("host_cpu"), "precision": summary["precision"],
            "first_plan_updates": (plan.get("first_plan") or plan)["updates"], "updates": summary["updates"],
            "planned_updates": plan["updates"], "epochs": len(epochs), "updates_per_epoch": plan["updates_per_epoch"],
            "sizes": sorted({int(r["image_size"]) for r in epochs}), "val_size": scored["image_size"],
            "model": plan.get("model", {}), "best_top1": summary["best_top1"], "top1": scored["top1"],
            "top5": scored["top5"], "last_top1": float(epochs[-1]["top1"]),
            "replans": [(r["size"], r["ratio"]) for r in plan.get("replans") or [] if "size" in r],
            "command_s": command["wall_s"], "unused_s": round(60 * minutes - command["wall_s"], 1),
            "curve": [(float(r["wall_s"]) / 60, float(r["top1"])) for r in epochs]}


def table(result: dict) -> str:
    lines = ["| budget | updates (first plan) | epochs | sizes | top-1 | top-5 | last epoch | whole command | unused |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["budgets"]:
        sizes = f"{r['sizes'][0]}-{r['sizes'][-1]}" if len(r["sizes"]) > 1 else str(r["sizes"][0])
        lines.append(f"| {r['minutes']:g} min | {r['updates']:,} ({r['first_plan_updates']:,}) | "
                     f"{r['updates'] / r['updates_per_epoch']:.1f} | {sizes} px, test {r['val_size']} | {r['top1']:.2f} % | "
                     f"{r['top5']:.1f} % | {r['last_top1']:.1f} % | {r['command_s'] / 60:.1f} min | "
                     f"{r['unused_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path, source: Path | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = result["budgets"]
    left.plot([r["updates"] for r in rows], [r["top1"] for r in rows], "o-")
    for r in rows:
        left.annotate(f"{r['minutes']:g} min", (r["updates"], r["top1"]), textcoords="offset points", xytext=(4, -12))
        right.plot(*zip(*r["curve"]), "o-", ms=3, label=f"{r['minutes']:g} min")
    left.set(xlabel="updates bought", ylabel="val top-1 of best.pt (%)", title="top-1 against the budget")
    right.set(xlabel="wall-clock minutes (start-up excluded)", ylabel="val top-1 per epoch (%)", title="each run")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend()
    fig.suptitle(plotting.title(f"{result['recipe']} on {result['data']}", result["host"], result, source))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collect(a, out: Path) -> dict:
    """Copy each finished budget's records into OUT/<M>min/ and write budgets.json/.md/.png there."""
    minutes = set() if a.replot else set(a.minutes)
    for p in out.glob("*min"):  # the budgets reported before stay in the table
        try:
            minutes.add(float(p.name[:-3])) if (p / "command.json").is_file() else None
        except ValueError:  # another folder
            pass
    rows = []
    for m in sorted(minutes):
        folder = out / name(m)
        if not a.replot and m in a.minutes:
            folder.mkdir(parents=True, exist_ok=True)
            for f in COPIED:  # a file the run lacks is not left over from an earlier one
                source = RUNS / name(m) / f
                shutil.copyfile(source, folder / f) if source.is_file() else (folder / f).unlink(missing_ok=True)
        if all((folder / f).is_file() for f in ("summary.json", "command.json", "evaluate.json")):
            rows.append(row(m, folder))
    if not rows:
        raise FileNotFoundError(f"{out}: no finished budget to report")
    summary = json.loads((out / name(rows[0]["minutes"]) / "summary.json").read_text())
    result = {"recipe": a.recipe, "data": Path(summary["config"]["data"]).name, "host": rows[0]["host"],
              "measured_at": plotting.today(), "budgets": rows}
    if a.replot and (out / "budgets.json").is_file():  # a redraw keeps what it measured and when
        old = json.loads((out / "budgets.json").read_text())
        result.update({k: old[k] for k in ("recipe", "measured_at") if k in old})
    (out / "budgets.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "budgets.md").write_text(table(result))
    plot(result, out / "budgets.png", out / "budgets.json")
    return result


@cli.one_line_errors
def main(argv=None) -> int:
    a = parse_args(argv)
    if not a.replot:
        cli.read_converted(a.data)
        for m in a.minutes:
            if not finished(run_budget(a, m)):
                print(f"bench.budgets: {name(m)}: tools/train.py or tools/evaluate.py failed "
                      f"(see {RUNS / (name(m) + '.log')})", file=sys.stderr)
                return 1
    print(table(collect(a, a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
