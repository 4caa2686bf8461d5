"""The converter under faults and races (issue 26 items 2, 3 and 14): a second run into the same
--out is refused naming the holder, a dead holder's lock is taken over, a full disk ends the run
in seconds with one line (the ffcv writer's child included) and --resume then finishes, --out as
a file, read-only or inside the source is one line, and a damaged manifest is FAILED in verify and
one line in the loaders and tools/train.py. Driven through tools/convert_subset.py."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_convert import CLI, data_files

ROOT = Path(__file__).resolve().parents[1]


def args(source: Path, out: Path, *extra: str) -> list[str]:
    return [*CLI, "--source", str(source), "--out", str(out), "--num-classes", "4", "--shard-size", "7",
            "--workers", "2", *extra]


def run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode not in (0, None) and "Traceback" not in r.stderr, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and "%|" not in line]  # not progress bars
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(imagefolder_source, tmp_path_factory):
    """A clean run of the same conversion: what every recovered run must equal, byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run(args(imagefolder_source, out), timeout=600).returncode == 0
    return data_files(out)


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_holders_lock_is_free(imagefolder_source, tmp_path,
                                                                                   reference):
    out = tmp_path / "out"
    first = subprocess.Popen(args(imagefolder_source, out, "--workers", "1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / ".state" / "train-00000.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # alive and holding the lock, whatever the machine's speed
        assert first.poll() is None, "the first run ended before it could be held"
        second = run(args(imagefolder_source, out, "--overwrite"))
        line = one_line(second)
        assert f"pid {first.pid} on {socket.gethostname()}" in line and "another conversion is writing" in line
        assert (out / ".state" / "train-00000.json").exists()  # the refused --overwrite deleted nothing
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    resumed = run(args(imagefolder_source, out, "--resume", "--verify"), timeout=600)
    assert resumed.returncode == 0 and "verify: ok" in resumed.stdout, resumed.stdout + resumed.stderr
    assert data_files(out) == reference
    assert not (out / ".state" / "lock").exists()


def _limit_file_size(limit: int):
    def apply():  # files stop growing at `limit` bytes: EFBIG, as a full disk gives ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("phase, formats, limit, file", [
    ("shards", "wds,ffcv", 20_000, "wds/train-00000.tar"),
    ("ffcv writer", "ffcv", 4 << 20, "ffcv/train.beton"),  # its first 8 MiB page, written by ffcv's child
])
def test_a_failing_writer_ends_the_run_in_seconds_and_resume_finishes(imagefolder_source, tmp_path, reference,
                                                                      phase, formats, limit, file):
    out = tmp_path / "out"
    t0 = time.time()
    failed = run(args(imagefolder_source, out, "--formats", formats), timeout=90, preexec_fn=_limit_file_size(limit))
    line = one_line(failed)
    assert time.time() - t0 < 60
    assert f"file too large while writing {out / file}; fix that and rerun with --resume" in line, line
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    resumed = run(args(imagefolder_source, out, "--formats", formats, "--resume", "--verify"), timeout=600)
    assert resumed.returncode == 0 and "verify: ok" in resumed.stdout, resumed.stdout + resumed.stderr
    assert {k: v for k, v in data_files(out).items()} == {k: v for k, v in reference.items()
                                                          if k.split("/")[0] in formats.split(",") + ["sources"]}


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (as root, where mount works; otherwise skipped: the test above injects the fault)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("formats, file", [("wds", "wds/train-"), ("ffcv", "ffcv/train.beton")])
def test_a_full_disk_is_one_line_and_resume_finishes_after_space_is_freed(imagefolder_source, tiny_disk, reference,
                                                                          formats, file):
    out = tiny_disk / "out"
    if formats == "wds":  # the first shards fit, a later one does not
        filler = tiny_disk / "filler"
        filler.write_bytes(b"\0" * 1_700_000)
    failed = run(args(imagefolder_source, out, "--formats", formats), timeout=90)
    line = one_line(failed)
    assert "no space left on device while writing" in line and f"{out}/{file}" in line, line
    assert "; free space and rerun with --resume" in line
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    resumed = run(args(imagefolder_source, out, "--formats", formats, "--resume", "--verify"), timeout=600)
    assert resumed.returncode == 0 and "verify: ok" in resumed.stdout, resumed.stdout + resumed.stderr
    assert data_files(out) == {k: v for k, v in reference.items() if k.split("/")[0] in (formats, "sources")}


def test_out_that_is_a_file_or_inside_the_source_is_one_line(imagefolder_source, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert "is a file, not a folder" in one_line(run(args(imagefolder_source, a_file)))
    assert a_file.read_text() == "mine"
    assert "is a file, not a folder" in one_line(run(args(imagefolder_source, a_file / "sub")))
    before = sorted(p for p in imagefolder_source.rglob("*"))
    line = one_line(run(args(imagefolder_source, imagefolder_source / "train")))
    assert "is inside the source" in line
    assert sorted(imagefolder_source.rglob("*")) == before


def test_a_read_only_out_is_one_line(imagefolder_source, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes into a 0555 folder: a read-only mount is what refuses root
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
            pytest.skip("root, and cannot mount a read-only tmpfs here")
    else:
        ro.chmod(0o555)
    try:
        line = one_line(run(args(imagefolder_source, ro / "out")))
        assert f"--out {ro / 'out'}: cannot write there ({ro} is read-only)" in line, line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=True)


DAMAGE = {"empty object": {}, "files null": {"files": None}, "string count": {"count": "abc"}}


def _damaged(converted, tmp_path, case) -> Path:
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    m = json.loads((out / "manifest.json").read_text())
    damage = DAMAGE[case]
    if case == "empty object":
        m = {}
    elif case == "files null":
        m["files"] = None
    else:
        m["splits"]["train"]["written"] = damage["count"]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_manifest_is_failed_in_verify_and_one_line_in_the_loaders(converted, tmp_path, case):
    out = _damaged(converted, tmp_path, case)
    r = run([*CLI, "verify", str(out)])
    assert r.returncode == 1 and "Traceback" not in r.stderr and "verify: FAILED" in r.stdout, r.stdout + r.stderr
    assert f"{out / 'manifest.json'}: " in r.stderr
    from fastmix.data.manifest import ManifestError
    from loaders import make_loader
    with pytest.raises(ManifestError, match=f"^{out / 'manifest.json'}: (splits|the top level|files)"):
        make_loader("pil-wds", out, "train", batch_size=4, image_size=32, workers=0)


def test_train_on_a_damaged_manifest_is_one_line(converted, tmp_path):
    out = _damaged(converted, tmp_path, "empty object")
    r = run([sys.executable, str(ROOT / "tools/train.py"), "--recipe", "cpu-smoke", "--backend", "pil-wds",
             "--data", str(out), "--out", str(tmp_path / "run"), "--epochs", "1"], timeout=300)
    assert f"{out / 'manifest.json'}: splits: expected an object, found null" in one_line(r)
