"""Run tools/train.py in this process with the GPU memory capped, and report what it used.

    python -m bench.gpu.capped --memory-gb 16 --report r.json -- --recipe t4 --model convmixer_768_32 ...

The cap (`torch.cuda.set_per_process_memory_fraction`) makes a larger GPU allocate like a T4:
whether the recipe fits is then measured, not inferred. The report holds the peak allocated and
reserved memory, whether the run ran out of memory, and how many graphs dynamo compiled (a
channels_last probe or an input dtype the compiled graph was not traced with shows up here).
`--compile-backend aot_eager` (what --smoke uses on a CPU) traces and compiles the same graphs
without inductor's C++ code generation, which takes minutes on a small CPU.
"""
from __future__ import annotations

import argparse
import functools
import json
import runpy
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory-gb", type=float, help="cap this process's GPU memory at this many GB")
    p.add_argument("--report", required=True, help="JSON file to write")
    p.add_argument("--compile-backend", help="torch.compile's backend for this run (default: inductor)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then tools/train.py's arguments")
    a = p.parse_args(argv)
    report: dict = {"memory_cap_gb": a.memory_gb}
    cuda = torch.cuda.is_available()
    if a.memory_gb and cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_gb * 1e9 / total))
        report["memory_fraction"] = min(1.0, a.memory_gb * 1e9 / total)
    train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    sys.argv = [str(ROOT / "tools" / "train.py"), *train_args]
    code = 0
    from torch._dynamo.utils import counters
    try:
        with compile_backend(a.compile_backend):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except torch.OutOfMemoryError as e:
        report.update(oom=True, error=str(e).splitlines()[0])
        code = 3
    except Exception:
        report["error"] = traceback.format_exc()[-3000:]
        code = 1
    if cuda:
        report.update(peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                      peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9)
    report["compilations"] = counters["stats"]["unique_graphs"]  # dynamo frames compiled, recompiles included
    report.setdefault("oom", False)
    Path(a.report).write_text(json.dumps(report, indent=1) + "\n")
    return code


class compile_backend:
    """While entered, torch.compile compiles with `backend` (None: unchanged)."""

    def __init__(self, backend: str | None):
        self.backend, self.saved = backend, None

    def __enter__(self):
        if self.backend:
            self.saved = torch.compile
            torch.compile = functools.partial(self.saved, backend=self.backend)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.compile = self.saved


if __name__ == "__main__":
    sys.exit(main())
