"""The one command for a lent GPU machine: run the suite, and bring its results back in any case.

    python3 -m bench.gpu.lent --images out/gpu-loan/photos --small-images out/gpu-loan/photos-64  # into $OUT
    python -m bench.gpu.lent --rehearse --out /tmp/lent   # the same on this CPU, DALI and ffcv hidden

Prints the plan, then runs `python -m bench.gpu --out <temporary folder> --budget-s B ...` under an
outer timeout (B + GRACE_S: SIGTERM to the suite, which writes gpu.json and summary.md and stops;
SIGKILL to every process of the run KILL_AFTER_S later), then copies gpu.json, summary.md,
calibration.json, the PNGs and the run's log tail (at most 8 files, one folder, none over 16 MiB)
into --out (default $OUT). A SIGTERM or SIGINT to this command (a command time limit shorter than
the plan) does the same within seconds: the suite is stopped (SIGKILL after STOP_GRACE_S), every
process of the run is ended, wherever it was re-parented, and what exists is copied; gpu.json then
names the phase that was running. Exit status: the suite's; 124 when the outer timeout fired;
128 + the signal when this command was stopped.

`--rehearse` is the loan on a CPU: --smoke sizes, DALI and ffcv hidden from the suite and every child
it starts (bench/gpu/bare/sitecustomize.py), every phase with a child run at tiny size.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cli import alias
from bench.gpu import plan, report
from bench.gpu.procs import new_tag, stop_tagged

GRACE_S = 30         # past the budget: the suite's reserve, the charts, a slow stop
KILL_AFTER_S = 10    # after the outer timeout's SIGTERM
STOP_GRACE_S = 8     # after a signal to this command: the suite's stop, its children's 3 s grace
MAX_FILES, MAX_BYTES = 8, 16 * 2**20
RESULTS = ["gpu.json", "summary.md", "calibration.json"]  # then the PNGs, then run.log
ROOT = Path(__file__).resolve().parents[2]
RUN_TAG = "BENCH_GPU_RUN"  # in the suite's environment and so in every process of the run
BARE = ROOT / "bench" / "gpu" / "bare"  # on PYTHONPATH when rehearsing: no DALI, no ffcv


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def collect(src: Path, dest: Path, log: Path | None) -> list[str]:
    """The result files of `src` copied into `dest` (flat), at most MAX_FILES, each < MAX_BYTES."""
    dest.mkdir(parents=True, exist_ok=True)
    files = [src / n for n in RESULTS if (src / n).is_file()] + sorted(src.glob("*.png"))
    copied = []
    for f in files[:MAX_FILES - 1]:
        if f.stat().st_size < MAX_BYTES:
            shutil.copyfile(f, dest / f.name)
            copied.append(f.name)
    if log is not None and log.is_file():  # the last MiB: what a failed run printed
        data = log.read_bytes()[-2**20:]
        (dest / "run.log").write_bytes(data)
        copied.append("run.log")
    return copied


def running_phase(log: Path) -> str | None:
    """The phase the suite announced (`NAME planned ...`) and did not finish (`NAME STATUS in ...`)."""
    if not log.is_file():
        return None
    name = None
    for line in log.read_text(errors="replace").splitlines():
        if m := re.match(r"^(\w+)\s+planned \d", line):
            name = m.group(1)
        elif name and re.match(rf"^{name}\s+\w+ in [\d.]+ s$", line):
            name = None
    return name


def record_stop(dest: Path, log: Path, code: int, why: str, budget_s: float, smoke: bool) -> dict:
    """gpu.json and summary.md in `dest` say how the run ended: the suite's own record with this
    command's account added, or only that account when the suite was killed before writing one."""
    path = dest / "gpu.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"suite": {"budget_s": budget_s, "smoke": smoke}, "plan": [], "phases": {}}
    phase = running_phase(log) or next((n for n, e in record["phases"].items() if e.get("status") == "stopped"), None)
    record["lent"] = {"exit": code, "ended_by": why, "running_phase": phase}
    if phase and phase not in record["phases"]:  # the suite was killed before it recorded the stop
        record["phases"][phase] = {"status": "stopped", "partial": {},
                                   "reason": f"{why}: the suite was killed before it recorded this phase"}
    path.write_text(json.dumps(record, indent=1) + "\n")
    (dest / "summary.md").write_text(report.summary_markdown(record))
    return record


def stop_suite(proc: subprocess.Popen | None, tag: str, grace_s: float) -> None:
    """SIGTERM to the suite (it stops its phase and child, writes its record), then SIGKILL to every
    process of the run that is left after grace_s, the suite's children in their own sessions too."""
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:  # it exited meanwhile
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    stop_tagged(RUN_TAG, tag)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def say(text: str | bytes) -> bool:
    """Onto this command's output; False once that is closed (a reader that went away): the run,
    its log and the copy go on without it."""
    try:
        sys.stdout.buffer.write(text if isinstance(text, bytes) else text.encode() + b"\n")
        sys.stdout.flush()
        return True
    except (OSError, ValueError):
        return False


def tee(pipe, log) -> None:
    """The suite's output into run.log and onto this command's output (all a killed command leaves)."""
    echo = True
    for line in iter(pipe.readline, b""):
        log.write(line)
        log.flush()
        echo = echo and say(line)


OWN_END = "the suite's own end"


def run_suite(cmd: list[str], env: dict, tag: str, log: Path, timeout_s: float) -> tuple[int, str]:
    """The suite, its output into `log` and onto ours, until it ends, `timeout_s` passes, or this
    command gets SIGTERM/SIGINT; then nothing of the run is left. Returns (exit status, what ended it)."""
    cleaning = []  # once the run is being stopped, a further signal is ignored: the copy must happen

    def interrupted(signum, frame):
        if not cleaning:
            raise Interrupted(signum)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, interrupted)
    proc, echo, t0 = None, None, time.monotonic()
    f = log.open("wb")
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        echo = threading.Thread(target=tee, args=(proc.stdout, f), daemon=True)
        echo.start()
        try:
            return proc.wait(timeout=timeout_s), OWN_END
        except subprocess.TimeoutExpired:
            cleaning.append(0)
            stop_suite(proc, tag, KILL_AFTER_S)
            return 124, f"the outer timeout ({timeout_s:.0f} s)"
    except Interrupted as e:
        cleaning.append(e.signum)
        stop_suite(proc, tag, STOP_GRACE_S)
        return 128 + e.signum, f"{signal.Signals(e.signum).name} to bench.gpu.lent after {time.monotonic() - t0:.0f} s"
    finally:
        cleaning.append(0)
        stop_tagged(RUN_TAG, tag)  # nothing of the run outlives this command
        if echo is not None:
            echo.join(timeout=2)  # the pipe ends with the run's last process
        f.close()


def suite_env(tag: str, rehearse: bool) -> dict:
    env = {**os.environ, RUN_TAG: tag, "PYTHONUNBUFFERED": "1"}
    if rehearse:
        env["PYTHONPATH"] = os.pathsep.join([str(BARE), *filter(None, [env.get("PYTHONPATH")])])
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.lent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder that comes back (default: $OUT)")
    p.add_argument("--budget-s", type=float, help=f"the suite's budget (default {plan.BUDGET_S:.0f}; "
                   f"{plan.SMOKE_BUDGET_S:.0f} with --smoke or --rehearse); the outer timeout is {GRACE_S} s more")
    p.add_argument("--smoke", action="store_true", help="run the suite's --smoke sizes on the CPU")
    p.add_argument("--rehearse", action="store_true", help="the loan on this CPU: --smoke with DALI and ffcv hidden")
    alias(p, "--results", "--out")
    a, suite_args = p.parse_known_args(argv)
    if not a.out:
        print("bench.gpu.lent: no results folder: pass --out DIR or set $OUT", file=sys.stderr)
        return 2
    dest = Path(a.out)
    if dest.exists() and not dest.is_dir():
        print(f"bench.gpu.lent: {dest}: not a folder", file=sys.stderr)
        return 2
    smoke = a.smoke or a.rehearse
    budget = a.budget_s if a.budget_s is not None else (plan.SMOKE_BUDGET_S if smoke else plan.BUDGET_S)
    say("\n".join(plan.plan_lines(plan.BUDGET_S if smoke else budget)))  # the GPU's, even when rehearsing
    if smoke:
        say(f"now: --smoke sizes on this CPU in {budget:.0f} s{', DALI and ffcv hidden' if a.rehearse else ''}")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    log, tag = work / "run.log", new_tag()
    cmd = [sys.executable, "-m", "bench.gpu", "--out", str(work / "out"), "--budget-s", str(budget),
           *(["--smoke"] if smoke else []), *suite_args]
    code, why = run_suite(cmd, suite_env(tag, a.rehearse), tag, log, budget + GRACE_S)
    copied = collect(work / "out", dest, log)
    if why != OWN_END or "gpu.json" not in copied:
        record = record_stop(dest, log, code, why, budget, smoke)
        copied = sorted(set(copied) | {"gpu.json", "summary.md"})
    else:
        record = json.loads((dest / "gpu.json").read_text())
    shutil.rmtree(work, ignore_errors=True)  # ours: converted photos, runs, compile cache
    say("\n".join(report.phase_table(record)))
    say(f"bench.gpu.lent: suite exit {code} ({why}); copied {', '.join(copied)} into {dest}")
    return code


if __name__ == "__main__":
    sys.exit(main())
