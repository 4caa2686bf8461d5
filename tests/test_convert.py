"""End-to-end conversion: layouts, labels, bad input, errors before work, determinism, resume, verify."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastmix.data.convert import ConvertError, convert
from fastmix.data.shards import read_samples
from fastmix.data.synth import QUIRKS, class_wnids, write_imagefolder
from fastmix.data.verify import verify
from layouts import to_archives, to_kaggle
from conftest import kill_when_exists, small_config

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "tools" / "convert_subset.py")]


def shard_samples(out: Path, manifest: dict, split: str):
    return [s for rel in manifest["splits"][split]["shards"] for s in read_samples(out / rel)]


def data_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.glob("*/*")) if p.suffix in (".tar", ".idx", ".beton")}


def test_every_source_file_is_written_or_rejected(converted, imagefolder_source):
    out, manifest = converted
    wnids = class_wnids(5)[:4]
    for split in ("train", "val"):
        files = [p for w in wnids for p in (imagefolder_source / split / w).iterdir()]
        info = manifest["splits"][split]
        assert info["written"] + len(info["rejected"]) == info["source_files"] == len(files)
        assert len(shard_samples(out, manifest, split)) == info["written"]
    rejected = {Path(r["path"]).stem.split("_", 1)[1]: r["reason"]
                for r in manifest["splits"]["train"]["rejected"]}
    assert set(rejected) == {k for k, (fate, _) in QUIRKS.items() if fate == "rejected"}
    assert "zero-byte" in rejected["empty"] and "truncated" in rejected["truncated"]
    assert manifest["splits"]["val"]["reencoded"].get("CMYK mode") == 1


def test_labels_follow_sorted_wnids(converted):
    out, manifest = converted
    classes = json.loads((out / "classes.json").read_text())
    assert [c["wnid"] for c in classes] == sorted(class_wnids(5))[:4]
    for split in ("train", "val"):
        for s in shard_samples(out, manifest, split):
            assert s.key.startswith(classes[s.label]["wnid"] + "_"), s.key


def test_manifest_records_options_counts_and_checksums(converted):
    out, manifest = converted
    assert manifest["options"]["max_side"] == 512 and manifest["options"]["quality"] == 90
    assert sum(manifest["splits"]["train"]["per_class"].values()) == manifest["splits"]["train"]["written"]
    assert set(manifest["files"]) == set(data_files(out))
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["tool"]["version"] and manifest["timings_s"]


def _labels_by_key(out, manifest, split):
    classes = json.loads((out / "classes.json").read_text())
    return {s.key: classes[s.label]["wnid"] for s in shard_samples(out, manifest, split)}


@pytest.mark.parametrize("layout", ["kaggle", "archives"])
def test_other_layouts_give_the_same_labels(layout, imagefolder_source, converted, tmp_path):
    repack = to_kaggle if layout == "kaggle" else to_archives
    src = repack(imagefolder_source, tmp_path / "src")
    out_ref, manifest_ref = converted
    manifest = convert(small_config(src, tmp_path / "out"))
    assert manifest["source"]["layout"] == layout
    assert manifest["splits"]["train"]["per_class"] == manifest_ref["splits"]["train"]["per_class"]
    assert manifest["splits"]["val"]["per_class"] == manifest_ref["splits"]["val"]["per_class"]
    # Train keys are the original file names, so labels can be compared one by one.
    assert _labels_by_key(tmp_path / "out", manifest, "train") == _labels_by_key(out_ref, manifest_ref, "train")
    # Val files were renamed ILSVRC2012_val_N; their label must be the class they came from.
    ref_val = sorted(_labels_by_key(out_ref, manifest_ref, "val").values())
    assert sorted(_labels_by_key(tmp_path / "out", manifest, "val").values()) == ref_val
    names = {c["wnid"]: c["name"] for c in json.loads((tmp_path / "out" / "classes.json").read_text())}
    assert all(names.values()), "Kaggle's mapping file and the devkit both name the classes"
    assert verify(tmp_path / "out") == []


def test_class_list_and_all_classes(imagefolder_source, tmp_path):
    wnids = class_wnids(5)
    (tmp_path / "list.txt").write_text(f"# my subset\n{wnids[4]}\n{wnids[1]}  # comment\n")
    manifest = convert(small_config(imagefolder_source, tmp_path / "a", num_classes=None,
                                    class_list=str(tmp_path / "list.txt"), formats=("wds",)))
    assert list(manifest["splits"]["train"]["per_class"]) == [wnids[1], wnids[4]]
    manifest = convert(small_config(imagefolder_source, tmp_path / "b", num_classes=None,
                                    formats=("wds",)))
    assert manifest["num_classes"] == 5


def test_errors_before_any_work(imagefolder_source, tmp_path):
    with pytest.raises(ConvertError, match="only 5"):
        convert(small_config(imagefolder_source, tmp_path / "o1", num_classes=6))
    (tmp_path / "list.txt").write_text("n00000001\n")
    with pytest.raises(ConvertError, match="not in the source"):
        convert(small_config(imagefolder_source, tmp_path / "o2", class_list=str(tmp_path / "list.txt")))
    kaggle = to_kaggle(imagefolder_source, tmp_path / "kaggle", drop_label=True)
    with pytest.raises(ConvertError, match=r"ILSVRC2012_val_00000002\.JPEG: no val label"):
        convert(small_config(kaggle, tmp_path / "o3"))
    src = tmp_path / "holes"
    write_imagefolder(src, 3, {"train": 2, "val": 1}, seed=2, sizes=[(64, 48)])
    shutil.rmtree(src / "val" / class_wnids(3)[1])
    with pytest.raises(ConvertError, match=f"no non-empty file in val.*{class_wnids(3)[1]}"):
        convert(small_config(src, tmp_path / "o4", num_classes=3))
    for out in ("o1", "o2", "o3", "o4"):
        assert not list((tmp_path / out).glob("*/*")), "nothing may be written before the checks"


def test_class_whose_every_image_is_bad_is_an_error(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, 2, {"train": 1, "val": 1}, seed=3, sizes=[(64, 48)])
    (src / "train" / class_wnids(2)[0] / f"{class_wnids(2)[0]}_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(ConvertError, match="no valid image"):
        convert(small_config(src, tmp_path / "out", num_classes=2))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_reruns_are_byte_identical(imagefolder_source, converted, tmp_path):
    out_ref, manifest_ref = converted
    manifest = convert(small_config(imagefolder_source, tmp_path / "again", workers=1))
    assert data_files(tmp_path / "again") == data_files(out_ref)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timings_s", "workers")}
    assert strip(manifest) == strip(manifest_ref)


def test_existing_output_needs_resume_or_overwrite(converted, imagefolder_source):
    out, _ = converted
    with pytest.raises(ConvertError, match="--resume"):
        convert(small_config(imagefolder_source, out))


def test_verify_catches_tampering(converted, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    assert verify(out) == []
    shard = sorted(out.glob("wds/train-*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    beton = out / "ffcv" / "val.beton"
    beton.write_bytes(beton.read_bytes()[:-100])
    (out / "wds" / "train-00099.tar").write_bytes(b"")
    problems = "\n".join(verify(out))
    assert f"{shard}: checksum differs" in problems
    assert f"{beton}: checksum differs" in problems
    assert "train-00099.tar: not listed" in problems


def test_resume_after_kill_gives_the_same_outputs(imagefolder_source, converted, tmp_path):
    out = tmp_path / "killed"
    args = CLI + ["--source", str(imagefolder_source), "--out", str(out), "--num-classes", "4",
                  "--shard-size", "2", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / ".state" / "train-00002.json"
    kill_when_exists(proc, marker, timeout=120)
    assert marker.exists() and not (out / "manifest.json").exists(), "the kill must land mid-run"
    done = {p.name for p in out.glob(".state/train-*.json")}
    assert len(done) < len(list(imagefolder_source.glob("train/*/*"))) // 2
    # Nothing half-written carries a final name: every final-named shard is complete.
    for tar in out.glob("wds/*.tar"):
        assert read_samples(tar)
    result = subprocess.run(args + ["--resume", "--verify"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "uninterrupted"
    convert(small_config(imagefolder_source, reference, shard_size=2, workers=1))
    assert data_files(out) == data_files(reference)


def test_cli_help_and_clear_error(tmp_path):
    assert "--max-side" in subprocess.run(CLI + ["--help"], capture_output=True, text=True).stdout
    r = subprocess.run(CLI + ["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere: source folder not found" in r.stderr


def test_beton_decode_ahead_stays_bounded_with_scattered_requests(imagefolder_source, tmp_path):
    """Several ffcv writer processes ask for scattered chunks; prefetched images must not pile up."""
    from fastmix.data.beton import _SourceImages
    from fastmix.data.convert import plan
    _, _, _, plans = plan(small_config(imagefolder_source, tmp_path / "o"))
    items = [i for i in plans["val"].items]
    images = _SourceImages(items, [0] * len(items), 512, 0, tmp_path / "err", threads=2)
    for i in (0, 5, 1, 6, 2):  # two interleaved "chunks"
        assert images[i][0].ndim == 3
        assert len(images._ahead) <= 4
