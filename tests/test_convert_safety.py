"""Nothing lost, nothing silent in the converter (issue 21 items 4, 8, 9, 12): resume trusts only
outputs that match what was written, a read-only verify writes nothing, foreign files survive,
workers leave with their parent, Ctrl-C is one line and exit code 130."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import kill_when_exists, small_config
from fastmix.data.convert import ConvertError, convert
from test_convert import CLI, data_files


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` (hidden state included) with its mtime and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(out: Path) -> tuple[Path, Path]:
    """A flipped byte in the second train shard and 100 bytes cut off the val .beton (also
    tests/test_convert.py's tampering check)."""
    shard = sorted(out.glob("wds/train-*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    beton = out / "ffcv" / "val.beton"
    beton.write_bytes(beton.read_bytes()[:-100])
    return shard, beton


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """tools/convert_subset.py's main in this process (ffcv's import alone takes ~10 s here)."""
    from tools.convert_subset import main
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_resume_redoes_damaged_outputs_instead_of_rehashing_them(imagefolder_source, converted, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    shard, beton = damage(out)
    rc, stdout, err = cli(["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                           "--shard-size", "7", "--workers", "2", "--resume", "--verify"], capsys)
    assert rc == 0 and "verify: ok" in stdout, err
    assert f"resume: {shard} differs from what was written" in err
    assert f"resume: {beton} differs from what was written" in err
    assert data_files(out) == data_files(converted[0])  # repaired, byte for byte
    assert json.loads((out / "manifest.json").read_text())["files"] == converted[1]["files"]


@pytest.mark.parametrize("how", ["--verify", "verify"])
def test_read_only_verify_writes_nothing(imagefolder_source, converted, tmp_path, how, capsys):
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    damage(out)
    before = snapshot(out)
    args = ["verify", str(out)] if how == "verify" else \
        ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4", "--verify"]
    rc, stdout, err = cli(args, capsys)
    assert rc == 1 and "verify: FAILED" in stdout
    assert "checksum differs from the manifest" in err
    assert snapshot(out) == before


FOREIGN = {"notes.txt": b"mine", "wds/README": b"my shards", "ffcv/keep.txt": b"my betons",
           "wds/other.json": b"{}"}


def plant(out: Path) -> None:
    for rel, data in FOREIGN.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)


def survived(out: Path) -> bool:
    return all((out / rel).read_bytes() == data for rel, data in FOREIGN.items())


def test_foreign_files_survive_convert_overwrite_and_resume(imagefolder_source, tmp_path):
    out = tmp_path / "out"
    plant(out)
    config = lambda **kw: small_config(imagefolder_source, out, formats=("wds",), **kw)  # noqa: E731
    convert(config(shard_size=4))
    assert survived(out) and (out / "wds" / "train-00007.tar").exists()
    convert(config(overwrite=True, shard_size=7))  # fewer shards: the old ones go, and only those
    assert survived(out) and not (out / "wds" / "train-00007.tar").exists()
    convert(config(resume=True, shard_size=7))
    assert survived(out)
    convert(small_config(imagefolder_source, out, overwrite=True, shard_size=7))  # with the .beton
    assert survived(out) and (out / "ffcv" / "train.beton").exists()


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
@pytest.mark.parametrize("rel", ["classes.json", "wds/train-00000.tar", "ffcv/val.beton"])
def test_a_foreign_file_at_an_output_name_is_refused_by_name(imagefolder_source, tmp_path, flag, rel):
    out = tmp_path / "out"
    (out / rel).parent.mkdir(parents=True)
    (out / rel).write_bytes(b"someone else's")
    r = subprocess.run(CLI + ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                              "--shard-size", "7", flag], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"convert_subset: {out / rel}: not written by this converter (its state in {out / '.state'} does not list it); "
        "move it away or choose another --out"]
    assert (out / rel).read_bytes() == b"someone else's"


def children_of(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_parent_is_killed(imagefolder_source, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                                   "--shard-size", "1", "--workers", "2", "--formats", "wds"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(children_of(proc.pid)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        workers = children_of(proc.pid)
        assert len(workers) >= 2, "the kill must land while the workers run"
    finally:
        kill_when_exists(proc, out / ".state" / "train-00001.json", timeout=60)
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, "workers outlived their parent"


def test_ctrl_c_is_one_line_and_exit_code_130(imagefolder_source, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                                   "--shard-size", "1", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: a suite started in the background by a script inherits
                            # SIGINT ignored, and Python then never raises KeyboardInterrupt (the run went on, rc 0)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not (out / ".state" / "train-00001.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "img/s]" not in line]
    assert lines == ["convert_subset: interrupted; rerun with --resume to continue"], err
    r = subprocess.run(CLI + ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                              "--shard-size", "1", "--workers", "2", "--resume", "--verify"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_library_refuses_unknown_formats_before_any_work(imagefolder_source, tmp_path):
    with pytest.raises(ConvertError, match="unknown output format 'tfrecord' in --formats; choose from wds, ffcv"):
        convert(small_config(imagefolder_source, tmp_path / "o", formats=("wds", "tfrecord")))
    assert not (tmp_path / "o").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
