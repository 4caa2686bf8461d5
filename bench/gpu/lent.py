"""The one command for a lent GPU machine: run the suite, and bring its results back in any case.

    python -m bench.gpu.lent --images PHOTOS --small-images tiny-imagenet-200.tar.gz   # results into $OUT

Runs `python -m bench.gpu --out <temporary folder> --budget-s B ...` under an outer timeout
(B + GRACE_S: SIGTERM to the suite, which writes gpu.json and summary.md and stops; SIGKILL
KILL_AFTER_S later), then copies gpu.json, summary.md, calibration.json, the PNGs and the run's
log tail (at most 8 files, one folder, none over 16 MiB) into --out (default $OUT), also
after a timeout or a crash. Exit status: the suite's; 124 when the outer timeout fired.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.cli import alias

GRACE_S = 45         # past the budget: the suite's reserve, the charts, a slow stop
KILL_AFTER_S = 15    # after SIGTERM
MAX_FILES, MAX_BYTES = 8, 16 * 2**20
RESULTS = ["gpu.json", "summary.md", "calibration.json"]  # then the PNGs, then run.log
ROOT = Path(__file__).resolve().parents[2]


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.lent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder that comes back (default: $OUT)")
    p.add_argument("--budget-s", type=float, default=420.0, help="the suite's budget (outer timeout: + %d s)" % GRACE_S)
    p.add_argument("--smoke", action="store_true", help="rehearse on the CPU")
    alias(p, "--results", "--out")
    a, suite_args = p.parse_known_args(argv)
    if not a.out:
        print("bench.gpu.lent: no results folder: pass --out DIR or set $OUT", file=sys.stderr)
        return 2
    dest = Path(a.out)
    if dest.exists() and not dest.is_dir():
        print(f"bench.gpu.lent: {dest}: not a folder", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    log = work / "run.log"
    cmd = [sys.executable, "-m", "bench.gpu", "--out", str(work / "out"), "--budget-s", str(a.budget_s),
           *(["--smoke"] if a.smoke else []), *suite_args]
    code = 124
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=a.budget_s + GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the suite writes what it has, then stops
            try:
                proc.wait(timeout=KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except BaseException:  # interrupted ourselves: stop the suite, still copy what it wrote
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=KILL_AFTER_S)
            code = 130
    copied = collect(work / "out", dest, log)
    shutil.rmtree(work, ignore_errors=True)  # ours: converted photos, runs, compile cache
    print(f"bench.gpu.lent: suite exit {code}; copied {', '.join(copied) or 'nothing'} into {dest}")
    return code


if __name__ == "__main__":
    sys.exit(main())
