"""The process-wide heap setting (fastmix/devices/allocator.py): decided once per process; a benchmark's
"before" row may keep glibc's defaults, but only before the heap keeps anything (it cannot be undone)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_leave_defaults_first_then_keep_is_a_no():
    out = run("from fastmix.devices import allocator as a; a.leave_defaults(); print(a.keep_batch_buffers())")
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_leave_defaults_after_keeping_is_refused():
    out = run("from fastmix.devices import allocator as a\nkept = a.keep_batch_buffers()\n"
              "try:\n    a.leave_defaults()\nexcept RuntimeError as e:\n    print('refused', e)\n"
              "else:\n    print('left', kept)")
    assert out.returncode == 0, out.stderr
    # on glibc the heap now keeps buffers, so going back is refused; elsewhere nothing was kept
    assert out.stdout.startswith("refused") or out.stdout.strip() == "left False", out.stdout


def test_the_mmap_suffix_leaves_the_defaults():
    out = run("from bench.variants import apply_suffix\nfrom fastmix.devices import allocator as a\n"
              "print(apply_suffix('pil:mmap'), a.keep_batch_buffers())\n"
              "try:\n    apply_suffix('pil:bogus')\nexcept ValueError as e:\n    print(e)")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "pil False" and "unknown suffix 'bogus'" in second
