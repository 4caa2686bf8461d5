"""Child processes of the suite: one environment for all, a timeout from the phase's deadline, and
no orphans when a phase is stopped.

Every child gets the repo first on PYTHONPATH, keeping what was there (packages carried onto a
lent machine with `pip --target` stay importable), and one on-disk compile cache
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) shared by all children and the parent, so only the
first compilation of a graph is cold.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .procs import new_tag, stop_tagged
from .runner import STOPPED_AT_DEADLINE, Stop, disarm

ROOT = Path(__file__).resolve().parents[2]
CHILD_TAG = "BENCH_GPU_CHILD"  # in each child's environment: finds its descendants in sessions of their own


def compile_cache_env(work: Path) -> dict[str, str]:
    cache = Path(work).resolve() / "compile-cache"
    return {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}


def child_env(work: Path, base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    carried = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *carried])
    env.update(compile_cache_env(work))
    return env


def time_left(ctx) -> float:
    """Seconds to the running phase's deadline (a large number outside the suite)."""
    deadline = getattr(ctx, "deadline", None)
    return 1e9 if deadline is None else deadline - time.monotonic()


def run_child(ctx, name: str, cmd: list[str], timeout: float | None = None) -> tuple[int, str]:
    """Run `cmd` in its own process group, output to work/NAME.log; returns (exit code, output tail).
    It gets at most what is left of the phase (or `timeout`, if shorter); past that, or when the
    phase is stopped by a signal, the whole group is killed. A child that ran out of its time
    raises Stop(`stopped at deadline`) unless `timeout` was its own (shorter) share: then -9."""
    limit = min(time_left(ctx), timeout if timeout is not None else float("inf"))
    if limit <= 0:
        raise Stop(STOPPED_AT_DEADLINE)
    log = Path(ctx.work) / f"{name}.log"
    tag = new_tag()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**child_env(ctx.work), CHILD_TAG: tag}, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc, tag)
            if timeout is None or time_left(ctx) <= timeout:
                raise Stop(STOPPED_AT_DEADLINE) from None
            code = -9
        except BaseException:  # the phase is stopped (deadline, SIGTERM): the child goes with it
            disarm()  # else a retry every 0.5 s cuts kill_group's 3 s grace before the SIGKILL
            kill_group(proc, tag)
            raise
    return code, tail(log)


def kill_group(proc: subprocess.Popen, tag: str | None = None, grace_s: float = 3.0) -> None:
    """SIGTERM the child's group, SIGKILL it after grace_s; then SIGKILL whatever carries the child's
    tag (descendants that started sessions of their own, which no signal to the group reaches)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    if tag:
        stop_tagged(CHILD_TAG, tag)


def tail(path: Path, chars: int = 3000) -> str:
    text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    return text[-chars:]
