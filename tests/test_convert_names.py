"""Any name that can exist on the filesystem converts, and no output can be broken by one (issue 26
items 1, 4, 5, 6): colliding stems, 180-character names, tabs, newlines and undecodable bytes,
and symlinks that dangle, loop, point at folders, at a fifo, or out of the source tree. Driven
through tools/convert_subset.py; the tree is tests/hostile.py's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmix.data.manifest import read_sources
from fastmix.data.shards import read_index, read_samples
from fastmix.data.synth import class_wnids
from hostile import CLASSES, LONG, ODD, REJECTED, write_hostile

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "tools" / "convert_subset.py")]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    src, out = base / "src", base / "out"
    counts = write_hostile(src, base / "elsewhere")
    run = subprocess.run([*CLI, "--source", str(src), "--out", str(out), "--num-classes", str(CLASSES),
                          "--shard-size", "4", "--workers", "2", "--verify"],
                         capture_output=True, text=True, timeout=600, errors="backslashreplace")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
    return src, out, counts, base / "elsewhere", run.stdout


def test_every_name_converts_and_every_count_adds_up(hostile):
    src, out, counts, _, stdout = hostile
    manifest = json.loads((out / "manifest.json").read_text())
    wnids = class_wnids(CLASSES)
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert info["source_files"] == counts[split] == info["written"] + len(info["rejected"])
        rows = list(read_sources(out, info))
        assert len(rows) == info["written"] and len({r["key"] for r in rows}) == len(rows)
        written = {(r["path"], r["label"]) for r in rows}
        for label in (0, 1):  # every odd name, exactly as on disk (tab, newline, bytes, 180 characters)
            assert {(f"{split}/{wnids[label]}/{name}", label) for name in ODD if label or name != "x-2.JPEG"} <= written
        assert (f"{split}/{wnids[2]}/x.JPEG", 2) in written
        keys = [s.key for rel in info["shards"] for s in read_samples(out / rel)]
        assert keys == [r["key"] for r in rows]  # the shards hold the same samples, in the same order
        for rel in info["shards"]:  # one well-formed index line per sample, whatever the names
            assert sum(len(e) for e in read_index((out / rel).with_suffix(".idx"))) == 2 * len(read_samples(out / rel))
    assert "verify: ok" in stdout


def test_the_long_name_is_kept_in_the_manifest_not_the_tar(hostile):
    _, out, _, _, _ = hostile
    manifest = json.loads((out / "manifest.json").read_text())
    rows = list(read_sources(out, manifest["splits"]["train"]))
    assert any(r["path"].endswith("/" + LONG) for r in rows)
    assert max(len(s.key) for rel in manifest["splits"]["train"]["shards"] for s in read_samples(out / rel)) < 20


def test_links_folders_and_fifos_are_listed_with_their_reason(hostile):
    src, out, _, _, stdout = hostile
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val"):
        rejected = {Path(r["path"]).name: r["reason"] for r in manifest["splits"][split]["rejected"]}
        assert set(rejected) == set(REJECTED)
        for name, reason in REJECTED.items():
            assert reason in rejected[name], (name, rejected[name])
        rows = list(read_sources(out, manifest["splits"][split]))
        assert not any("hidden.JPEG" in r["path"] for r in rows)  # a folder in a class folder is not searched
    # The summary names each rejected file on one line, odd characters escaped.
    assert "rejected " in stdout and "new\nline" not in stdout


def test_a_link_out_of_the_source_is_followed_and_said_so(hostile):
    src, out, _, elsewhere, _ = hostile
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val"):
        info = manifest["splits"][split]
        far = [r for r in read_sources(out, info) if r["path"].endswith("/far.JPEG")]
        near = [r for r in read_sources(out, info) if r["path"].endswith("/near.JPEG")]
        assert [r.get("outside") for r in far] == [os.path.realpath(elsewhere / "far.JPEG")]
        assert near and "outside" not in near[0]  # a link inside the tree is an ordinary file
        assert info["outside_source"] == 1
        assert any(note.startswith(f"{split}: 1 files are symlinks to outside the source folder")
                   for note in manifest["source"]["notes"])


def test_an_error_naming_an_odd_file_is_still_one_line(hostile, tmp_path):
    src = hostile[0]
    missing = tmp_path / "class\nlist.txt"
    r = subprocess.run([*CLI, "--source", str(src), "--out", str(tmp_path / "out"), "--class-list", str(missing)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"convert_subset: {tmp_path}/class\\nlist.txt: class list not found"], r.stderr
