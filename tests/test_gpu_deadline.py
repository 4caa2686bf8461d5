"""bench.gpu on one short loan (issue 20): a deadline that holds for phases and children, outputs
written on every phase and on SIGTERM, children that keep a carried PYTHONPATH, loaders decided
by importing their compiled parts, NVML over the steady steps only, and the lent command."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench.gpu.children import ROOT, child_env, run_child
from bench.gpu.runner import Phase, Stop, Suite, headline_problems


def slow_phase(ctx):
    """Measures one number every 50 ms, for ever."""
    ctx.partial["measured"] = []
    while True:
        ctx.partial["measured"].append(1.0)
        time.sleep(0.05)


def test_a_phase_past_the_deadline_is_stopped_with_what_it_measured(tmp_path):
    ctx = SimpleNamespace(work=tmp_path)
    phases = [Phase("first", lambda c: {"headline": {"x": 1.0}}, 0.1, 0.1, ""), Phase("slow", slow_phase, 0.1, 0.1, ""),
              Phase("late", lambda c: {"headline": {"x": 1.0}}, 0.1, 0.1, "")]
    t0 = time.perf_counter()
    record = Suite(phases, ctx, tmp_path, budget_s=1.5, smoke=True, reserve_s=0).run()
    assert time.perf_counter() - t0 < 2.5  # before the fix: never returns
    slow = record["phases"]["slow"]
    assert slow["status"] == "stopped" and slow["reason"].startswith("stopped at deadline"), slow
    assert len(slow["partial"]["measured"]) >= 5
    assert record["phases"]["late"]["status"] == "skipped"
    assert headline_problems(record) == []
    on_disk = json.loads((tmp_path / "gpu.json").read_text())
    assert on_disk["phases"]["slow"]["status"] == "stopped"


def dropping_phase(ctx):
    """Drops the first Stop, as Python does when one is raised inside a finalizer (`__del__`)."""
    import threading
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        time.sleep(5)
    except Stop:
        ctx.partial["dropped"] = True
    time.sleep(10)
    return {"headline": {"x": 1.0}}


def test_a_dropped_stop_is_raised_again(tmp_path):
    ctx = SimpleNamespace(work=tmp_path)
    phases = [Phase("dropping", dropping_phase, 0.1, 0.1, ""), Phase("late", lambda c: {"headline": {"x": 1.0}}, 0.1, 0.1, "")]
    t0 = time.perf_counter()
    suite = Suite(phases, ctx, tmp_path, budget_s=60, smoke=True, reserve_s=0)
    record = suite.run()
    assert time.perf_counter() - t0 < 5  # a few RETRY_S; before: the phase's whole 10 s
    entry = record["phases"]["dropping"]
    assert entry["status"] == "stopped" and "SIGTERM" in entry["reason"] and entry["partial"]["dropped"], entry
    assert suite.signum == signal.SIGTERM and record["suite"]["stopped_by"] == "SIGTERM"
    assert "late" not in record["phases"]


STUBBORN = "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def test_a_child_that_ignores_sigterm_is_killed_when_the_suite_is_stopped(tmp_path):
    """The Stop's retries must not cut kill_group's grace short: they did, and the SIGKILL never came."""
    import threading
    pidfile = tmp_path / "child.pid"

    def stop_once_the_child_runs():
        while not pidfile.is_file() or not pidfile.read_text():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    def phase(ctx):
        threading.Thread(target=stop_once_the_child_runs, daemon=True).start()
        run_child(ctx, "stubborn", [sys.executable, "-c", STUBBORN, str(pidfile)])
        return {"headline": {"x": 1.0}}
    record = Suite([Phase("stubborn", phase, 0.1, 0.1, "")], SimpleNamespace(work=tmp_path), tmp_path,
                   budget_s=120, smoke=True, reserve_s=0).run()
    assert record["phases"]["stubborn"]["status"] == "stopped"
    stat = Path(f"/proc/{pidfile.read_text()}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX", "the child outlived its phase"


def test_a_child_past_the_deadline_is_killed_and_the_phase_stopped(tmp_path):
    def child_phase(ctx):
        run_child(ctx, "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        return {"headline": {"x": 1.0}}
    ctx = SimpleNamespace(work=tmp_path)
    t0 = time.perf_counter()
    record = Suite([Phase("child", child_phase, 0.1, 0.1, "")], ctx, tmp_path, budget_s=2, smoke=True, reserve_s=0).run()
    assert time.perf_counter() - t0 < 8
    assert record["phases"]["child"]["reason"].startswith("stopped at deadline")


def test_children_keep_a_carried_pythonpath(tmp_path):
    env = child_env(tmp_path, {"PYTHONPATH": "/carried/site"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/carried/site"]
    assert env["TORCHINDUCTOR_CACHE_DIR"] and env["TRITON_CACHE_DIR"].startswith(env["TORCHINDUCTOR_CACHE_DIR"])
    ctx = SimpleNamespace(work=tmp_path)
    os.environ["PYTHONPATH"] = str(tmp_path / "carried")  # what a lent machine's session carries
    try:
        code, out = run_child(ctx, "path", [sys.executable, "-c", "import sys; print(sys.path[1:3])"])
    finally:
        del os.environ["PYTHONPATH"]
    assert code == 0 and str(tmp_path / "carried") in out and str(ROOT) in out


BROKEN_FFCV = {"ffcv/__init__.py": "from . import libffcv\n",
               "ffcv/libffcv.py": "raise OSError('libturbojpeg.so.0: cannot open shared object file')\n"}


def test_an_ffcv_whose_extension_fails_to_import_is_one_skipped_row(tmp_path):
    """The package is found (find_spec), its compiled part does not load: before the fix ffcv and
    opencv were measured (and failed), and the conversion asked for a .beton."""
    for name, text in BROKEN_FFCV.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    code = ("from types import SimpleNamespace as N; from bench.gpu import feed, data; import json; "
            "b, s = feed.loader_backends(N(device=N(type='cuda'))); print(json.dumps([b, s, data.beton_formats()]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    assert run.returncode == 0, run.stderr[-2000:]
    backends, skipped, formats = json.loads(run.stdout.splitlines()[-1])
    assert "ffcv" not in backends and "opencv" not in backends and formats == "wds"
    assert "libturbojpeg.so.0" in skipped["ffcv"] and "OSError" in skipped["ffcv"]
    assert {"nvjpeg", "pil-wds", "resident", "synthetic"} <= set(backends)


def test_nvml_summaries_cover_only_the_steady_steps():
    from bench.gpu.steady import steady_windows
    from fastmix.devices.telemetry import Telemetry
    # step lines at t = 10..14 (epoch 0, updates 10..50) and 20..21 (epoch 1): 20 -> 21 is steady,
    # 14 -> 20 spans the evaluation, 10 -> 11 is before a fifth of the updates
    lines = [(10 + k, {"epoch": 0, "update": 10 * (k + 1)}) for k in range(5)] + \
            [(20, {"epoch": 1, "update": 60}), (21, {"epoch": 1, "update": 70})]
    windows = steady_windows(lines)
    assert windows == [(11, 12), (12, 13), (13, 14), (20, 21)]
    tel = Telemetry()
    tel.lib = object()  # NVML "available": the samples below stand in for its readings
    tel.samples = [{"t": t, "power_w": 100.0 if 11 <= t <= 14 or 20 <= t <= 21 else 20.0} for t in range(0, 30)]
    steady, everything = tel.summary(windows), tel.summary()
    assert steady["power_w"] == {"median": 100.0, "min": 100.0, "max": 100.0} and steady["samples"] == 6
    assert everything["power_w"]["median"] == 20.0  # start-up, evaluation and idle drag it down


def test_ceilings_warm_up_for_200_ms_before_timing():
    import torch

    from fastmix.devices.ceilings import ceilings, median_seconds
    calls = []
    median_seconds(lambda: calls.append(time.sleep(0.01)), torch.device("cpu"), reps=2, warmup=1, warmup_s=0.2)
    assert len(calls) >= 2 + 10
    t0 = time.perf_counter()
    ceilings(torch.device("cpu"), "fp32", n=8, nbytes=1024)
    assert time.perf_counter() - t0 >= 0.4  # matmul and copy, 200 ms each (before: microseconds)


def test_the_memory_check_leaves_out_the_cuda_context():
    from fastmix.perf.memory import CUDA_CONTEXT_GB, allocator_visible_gb, device_training_memory
    total = device_training_memory("convmixer_768_32", 32, "fp16")["total"] / 1e9
    assert abs(allocator_visible_gb("convmixer_768_32", 32, "fp16") - (total - CUDA_CONTEXT_GB)) < 1e-9


def test_sigterm_writes_gpu_json_and_summary(tmp_path):
    """The front door: SIGTERM while the loaders phase converts its images; the record on disk says
    which phase was stopped, and the exit status is 128 + SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(tmp_path), "--budget-s", "600",
                             "--phases", "ceilings,loaders"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the phase announces itself on stdout when it starts
        seen.append(line)
        if line.startswith("loaders") and "planned" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    seen.append(proc.stdout.read())
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(seen)[-4000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["phases"]["ceilings"]["status"] == "ok"
    assert record["phases"]["loaders"]["status"] == "stopped" and "SIGTERM" in record["phases"]["loaders"]["reason"]
    assert record["suite"]["stopped_by"] == "SIGTERM" and headline_problems(record) == []
    assert "stopped by SIGTERM" in (tmp_path / "summary.md").read_text()
    assert not list(Path(tmp_path / "work").glob("*.tmp"))


def test_sigterm_to_the_lent_command_brings_back_the_record_and_leaves_no_process(tmp_path):
    """A command time limit shorter than the plan ends the wrapper with SIGTERM. Before the fix the
    wrapper died at once with $OUT empty, and the suite (its own session) ran on as an orphan."""
    from bench.gpu.lent import RUN_TAG
    from bench.gpu.procs import tagged
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu.lent", "--smoke", "--budget-s", "600", "--out", str(out),
                             "--phases", "ceilings,loaders"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the suite's output comes through the wrapper's
        seen.append(line)
        if line.startswith("loaders") and "planned" in line:
            break
    time.sleep(2.0)  # the conversion child (its own session) is running
    assert tagged(RUN_TAG, f"{proc.pid}-", prefix=True), "".join(seen)  # the wrapper's tag starts with its pid
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    seen.append(proc.stdout.read())
    code = proc.wait(timeout=60)
    took = time.perf_counter() - t0
    assert code == 128 + signal.SIGTERM and took < 20, (code, took, "".join(seen)[-4000:])
    assert tagged(RUN_TAG, f"{proc.pid}-", prefix=True) == []
    record = json.loads((out / "gpu.json").read_text())
    assert record["phases"]["ceilings"]["status"] == "ok"
    assert record["phases"]["loaders"]["status"] == "stopped", record["phases"]["loaders"]
    assert record["lent"]["running_phase"] == "loaders" and record["lent"]["ended_by"].startswith("SIGTERM")
    assert headline_problems(record) == []
    assert "loaders | stopped" in (out / "summary.md").read_text()
    assert (out / "run.log").is_file() and len(list(out.iterdir())) <= 8


def test_a_killed_suite_still_leaves_a_record_naming_the_running_phase(tmp_path):
    """The suite SIGKILLed before it could write anything: the wrapper's own record says which phase ran."""
    from bench.gpu.lent import record_stop
    log = tmp_path / "run.log"
    log.write_text("environment  planned 5 s, limit 480 s\nenvironment  ok in 0.1 s\nmatrix       planned 45 s, limit 470 s\n")
    record = record_stop(tmp_path, log, 137, "SIGTERM to bench.gpu.lent after 12 s", 500.0, False)
    assert record["lent"]["running_phase"] == "matrix"
    assert record["phases"]["matrix"]["status"] == "stopped" and headline_problems(record) == []
    assert json.loads((tmp_path / "gpu.json").read_text())["phases"]["matrix"]["status"] == "stopped"
    assert "matrix | stopped" in (tmp_path / "summary.md").read_text()


GRANDCHILD = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], " \
             "start_new_session=True); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(60)"


def test_a_stopped_child_takes_its_descendants_in_their_own_sessions(tmp_path):
    """No signal to the child's group reaches a grandchild that started a session of its own: before
    the fix it outlived the phase."""
    pidfile = tmp_path / "grandchild.pid"

    def phase(ctx):
        run_child(ctx, "parent", [sys.executable, "-c", GRANDCHILD, str(pidfile)])
        return {"headline": {"x": 1.0}}
    record = Suite([Phase("child", phase, 0.1, 0.1, "")], SimpleNamespace(work=tmp_path), tmp_path, budget_s=4,
                   smoke=True, reserve_s=0).run()
    assert record["phases"]["child"]["reason"].startswith("stopped at deadline")
    stat = Path(f"/proc/{pidfile.read_text()}/stat")
    time.sleep(0.2)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX", "the grandchild outlived its phase"


def test_a_stopped_end_to_end_keeps_the_updates_it_logged(tmp_path, monkeypatch):
    """The step log streams into the phase's partial record: before the fix a stopped end_to_end
    kept `"partial": {}` however many updates its child had logged."""
    import torch

    from bench.gpu import runs
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"splits": {"train": {"written": 64}}}))
    monkeypatch.setattr(runs, "prepare_data", lambda ctx: data)

    def training(ctx, name, args, memory_gb=None):  # tools/train.py: two step-log lines, then still running
        steps = ctx.work / "e2e" / "steps.jsonl"
        steps.parent.mkdir(parents=True, exist_ok=True)
        steps.write_text("".join(json.dumps({"epoch": 0, "update": u, "images_per_s": 100.0}) + "\n" for u in (10, 20)))
        time.sleep(60)
    monkeypatch.setattr(runs, "train_run", training)
    ctx = SimpleNamespace(work=tmp_path, smoke=True, variants=["convmixer_256_8"], batch=4, e2e_updates=6, results={},
                          device=torch.device("cpu"), partial={})
    record = Suite([Phase("end_to_end", runs.end_to_end, 0.1, 0.1, "")], ctx, tmp_path, budget_s=2, smoke=True,
                   reserve_s=0).run()
    entry = record["phases"]["end_to_end"]
    assert entry["status"] == "stopped" and entry["reason"].startswith("stopped at deadline"), entry
    assert [s["update"] for s in entry["partial"]["steps"]] == [10, 20]
    assert json.loads((tmp_path / "gpu.json").read_text())["phases"]["end_to_end"]["partial"]["steps"][1]["update"] == 20


def test_stopping_a_suite_that_already_exited_does_not_raise():
    """The suite ended just as the stop came: before the fix killpg's ProcessLookupError ended the
    wrapper before anything was copied."""
    from bench.gpu.lent import stop_suite
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    stop_suite(proc, "no-such-run", grace_s=1)
    assert proc.returncode == 0


def test_the_lent_command_goes_on_when_its_output_is_closed(tmp_path):
    """The wrapper echoes the suite's output; a reader that went away must not stop the run or the copy."""
    read, write = os.pipe()
    os.close(read)
    try:
        run = subprocess.run([sys.executable, "-m", "bench.gpu.lent", "--smoke", "--budget-s", "120", "--out",
                              str(tmp_path / "results"), "--phases", "environment"], cwd=ROOT, stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    record = json.loads((tmp_path / "results" / "gpu.json").read_text())
    assert record["phases"]["environment"]["status"] == "ok", run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
