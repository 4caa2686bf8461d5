"""`python -m bench.gpu.prepare`: the folder a GPU loan sends, built inside the tree where git ignores
it, under its size limits, with the command that uses it; bad input refused in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fastmix.data.synth import write_imagefolder

ROOT = Path(__file__).resolve().parents[1]


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu.prepare", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def photos(tmp_path):
    return write_imagefolder(tmp_path / "photos", 3, {"any": 2}, sizes=[(160, 120)])


@pytest.fixture
def inside():
    """A folder under out/ (git-ignored), removed afterwards."""
    folder = ROOT / "out" / f"test-prepare-{os.getpid()}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_builds_the_folder_and_prints_the_command(photos, inside):
    run = prepare("--photos", str(photos), "--out", str(inside), "--count", "5")
    assert run.returncode == 0, run.stderr
    sent = sorted(p.name for p in (inside / "photos").iterdir())
    assert len(sent) == 5 and sent == sorted(p.name for p in (inside / "photos-64").iterdir())
    with Image.open(inside / "photos-64" / sent[0]) as im:
        assert im.size == (64, 64)
    rel = inside.relative_to(ROOT)
    assert f"python3 -m bench.gpu.lent --images {rel}/photos --small-images {rel}/photos-64" in run.stdout
    assert f'carry ["{rel}"], timeout_s 600' in run.stdout
    again = prepare("--photos", str(photos), "--out", str(inside), "--count", "2")  # its own folder: replaced
    assert again.returncode == 0 and len(list((inside / "photos").iterdir())) == 2


@pytest.mark.parametrize("case", ["over the size", "outside the tree", "not ours", "not photos"])
def test_refusals_are_one_line_and_keep_what_was_there(photos, inside, tmp_path, case):
    args = {"over the size": ["--out", str(inside), "--max-mib", "0.001"],
            "outside the tree": ["--out", str(tmp_path / "loan")],
            "not ours": ["--out", str(inside)],
            "not photos": ["--out", str(inside)]}[case]
    if case == "not ours":
        inside.mkdir(parents=True)
        (inside / "notes.txt").write_text("mine")
    src = tmp_path / "empty" if case == "not photos" else photos
    if case == "not photos":
        src.mkdir()
        (src / "readme.txt").write_text("no photos here")
    run = prepare("--photos", str(src), *args)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    expected = {"over the size": "over --max-mib", "outside the tree": "outside this repository",
                "not ours": "pass --overwrite", "not photos": "no <wnid>_*.JPEG photos"}[case]
    assert expected in run.stderr
    if case == "not ours":
        assert (inside / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "loan").exists()
