"""End-to-end conversion: layouts, labels, bad input, errors before work, determinism, resume, verify."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmix.data.convert import ConvertError, convert, sha256
from fastmix.data.shards import Sample, read_samples, write_shard
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
            for p in sorted(out.glob("*/*")) if p.suffix in (".tar", ".idx", ".beton", ".jsonl")}


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


def source_of(out: Path, manifest: dict, split: str) -> dict[str, str]:
    """Shard key -> the source file it came from (sources/<split>.jsonl)."""
    from fastmix.data.manifest import read_sources
    return {r["key"]: r["path"] for r in read_sources(out, manifest["splits"][split])}


def test_labels_follow_sorted_wnids(converted):
    out, manifest = converted
    classes = json.loads((out / "classes.json").read_text())
    assert [c["wnid"] for c in classes] == sorted(class_wnids(5))[:4]
    for split in ("train", "val"):
        files = source_of(out, manifest, split)
        for s in shard_samples(out, manifest, split):
            assert s.key.startswith(f"{s.label:05d}_"), s.key
            assert files[s.key].startswith(f"{split}/{classes[s.label]['wnid']}/{classes[s.label]['wnid']}_"), s.key


def test_manifest_records_options_counts_and_checksums(converted):
    out, manifest = converted
    assert manifest["options"]["max_side"] == 512 and manifest["options"]["quality"] == 90
    assert sum(manifest["splits"]["train"]["per_class"].values()) == manifest["splits"]["train"]["written"]
    assert set(manifest["files"]) == set(data_files(out))
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["tool"]["version"] and manifest["timings_s"]


def _labels_by_content(out: Path, manifest: dict, split: str) -> tuple[dict, dict]:
    """content hash -> WNID of every image, in the shards and in the .beton. The converter is
    deterministic per image, so one source file has the same bytes whatever layout it came from."""
    from fastmix.data.beton import read_jpegs, read_labels
    classes = json.loads((out / "classes.json").read_text())
    sha = lambda data: hashlib.sha256(data).hexdigest()
    shards = [(sha(s.jpeg), classes[s.label]["wnid"]) for s in shard_samples(out, manifest, split)]
    beton_path = out / manifest["splits"][split]["beton"]
    beton = [(sha(j), classes[label]["wnid"])
             for j, label in zip(read_jpegs(beton_path), read_labels(beton_path).tolist())]
    for pairs in (shards, beton):  # distinct images: the dict below loses nothing
        assert len({h for h, _ in pairs}) == len(pairs) == manifest["splits"][split]["written"]
    return dict(shards), dict(beton)


@pytest.mark.parametrize("layout", ["kaggle", "archives"])
def test_other_layouts_give_the_same_labels(layout, imagefolder_source, converted, tmp_path):
    """Every val and train file, one by one (matched by the hash of its image), gets the label the
    ImageFolder reference gives it, in the shards and in the .beton."""
    repack = to_kaggle if layout == "kaggle" else to_archives
    src = repack(imagefolder_source, tmp_path / "src")
    out_ref, manifest_ref = converted
    manifest = convert(small_config(src, tmp_path / "out"))
    assert manifest["source"]["layout"] == layout
    for split in ("train", "val"):
        assert _labels_by_content(tmp_path / "out", manifest, split) == \
            _labels_by_content(out_ref, manifest_ref, split), split
    names = {c["wnid"]: c["name"] for c in json.loads((tmp_path / "out" / "classes.json").read_text())}
    assert all(names.values()), "Kaggle's mapping file and the devkit both name the classes"
    assert verify(tmp_path / "out") == []


def test_train_shards_mix_classes_and_val_is_in_class_order(converted):
    out, manifest = converted
    train = manifest["splits"]["train"]["shards"]
    assert len(train) >= 3
    for rel in train:
        assert len({s.label for s in read_samples(out / rel)}) > 1, f"{rel} holds one class"
    val = [s.label for s in shard_samples(out, manifest, "val")]
    assert val == sorted(val) and len(set(val)) == 4
    from fastmix.data.beton import read_labels
    assert read_labels(out / "ffcv" / "val.beton").tolist() == val


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("split", ["train", "val"])
def test_beton_images_match_the_shards(converted, split):
    """Sample i of the .beton is sample i of the shards: within JPEG tolerance of it (mean abs
    difference < 8 levels; measured up to 3.7, two q90 encodes of grainy images, while any two
    different images here are 56 or more apart), and closer to it than to any other image."""
    from fastmix.data.beton import read_jpegs
    out, manifest = converted
    shards = [_decoded(s.jpeg) for s in shard_samples(out, manifest, split)]
    beton = [_decoded(j) for j in read_jpegs(out / "ffcv" / f"{split}.beton")]
    assert len(beton) == len(shards) == manifest["splits"][split]["written"]
    for i, b in enumerate(beton):
        gaps = {j: float(np.abs(b - s).mean()) for j, s in enumerate(shards) if s.shape == b.shape}
        assert gaps.get(i, np.inf) < 8, (split, i, gaps.get(i))
        assert min(gaps, key=gaps.get) == i, (split, i)


def test_alpha_is_composited_on_white(tmp_path):
    """RGBA and palette-with-transparency files (behind .JPEG names): transparent pixels, black
    underneath, come out white in the shards and in the .beton; opaque ones keep their colour."""
    from fastmix.data.beton import read_jpegs
    src = tmp_path / "src"
    write_imagefolder(src, 2, {"train": 1, "val": 1}, seed=4, sizes=[(64, 48)])
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[:, 32:] = (200, 30, 30, 255)  # left half: black, fully transparent
    wnid = class_wnids(2)[1]
    for kind, img in (("rgba", Image.fromarray(rgba, "RGBA")),
                      ("palette", Image.fromarray(rgba[..., :3]).quantize(4))):
        if kind == "palette":
            img.info["transparency"] = img.getpixel((0, 0))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        (src / "train" / wnid / f"{wnid}_{kind}.JPEG").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    manifest = convert(small_config(src, out, num_classes=2))
    samples = shard_samples(out, manifest, "train")
    betons = read_jpegs(out / "ffcv" / "train.beton")
    files = source_of(out, manifest, "train")
    for kind in ("rgba", "palette"):
        i = next(k for k, s in enumerate(samples) if files[s.key] == f"train/{wnid}/{wnid}_{kind}.JPEG")
        for data in (samples[i].jpeg, betons[i]):
            rgb = _decoded(data)
            assert rgb[:, :28].min() > 240, kind  # JPEG blurs the edge, so stay 4 px off it
            assert np.abs(rgb[:, 36:] - (200, 30, 30)).mean() < 8, kind


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
    from test_convert_safety import damage
    shard, beton = damage(out)
    (out / "wds" / "train-00099.tar").write_bytes(b"")
    problems = "\n".join(verify(out))
    assert f"{shard}: checksum differs" in problems
    assert f"{beton}: checksum differs" in problems
    assert "train-00099.tar: not listed" in problems


def _resign(out: Path) -> None:
    """Update the manifest's checksums to the files as they are now: a consistent tamper."""
    manifest = json.loads((out / "manifest.json").read_text())
    for rel in manifest["files"]:
        manifest["files"][rel] = {"sha256": sha256(out / rel), "bytes": (out / rel).stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest))


def _swap_index_entries(out: Path) -> None:
    idx = out / "wds" / "train-00000.idx"
    lines = idx.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    idx.write_text("".join(lines))


def _rewrite_shard(out: Path, name: str, edit) -> None:
    tar = out / "wds" / f"{name}.tar"
    write_shard(tar, edit(read_samples(tar)))


def _swap_labels_of_two_classes(samples):
    a = 0
    b = next(i for i, s in enumerate(samples) if s.label != samples[a].label)
    samples[a], samples[b] = (Sample(samples[a].key, samples[a].jpeg, samples[b].label),
                              Sample(samples[b].key, samples[b].jpeg, samples[a].label))
    return samples


def _swap_val_samples(samples):  # keys and labels move together: only the order is wrong
    b = next(i for i, s in enumerate(samples) if s.label != samples[0].label)
    samples[0], samples[b] = samples[b], samples[0]
    return samples


def _swap_images_of_one_class(samples):  # labels stay in place: only the images move
    size = lambda s: Image.open(io.BytesIO(s.jpeg)).size
    a, b = next((a, b) for a in range(len(samples)) for b in range(a + 1, len(samples))
                if samples[a].label == samples[b].label and size(samples[a]) != size(samples[b]))
    samples[a], samples[b] = samples[b], samples[a]
    return samples


def _manifest_count(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["written"] += 1
    manifest["splits"]["train"]["source_files"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))


TAMPER = {
    "index": (_swap_index_entries, ["train-00000.idx: does not match train-00000.tar"]),
    "dropped-sample": (lambda out: _rewrite_shard(out, "train-00001", lambda s: s[1:]),
                       ["train shards: 25 samples, manifest says 26"]),
    "manifest-count": (_manifest_count, ["manifest train: per-class counts sum to 26, not the 27 written",
                                         "train shards: 26 samples, manifest says 27"]),
    "label-swap": (lambda out: _rewrite_shard(out, "train-00000", _swap_labels_of_two_classes),
                   ["but its key says class", "train.beton: label order differs from the shards'"]),
    "image-swap": (lambda out: _rewrite_shard(out, "train-00000", _swap_images_of_one_class),
                   ["train.beton: image sizes differ from the shards' at 2 samples"]),
    "unknown-label": (lambda out: _rewrite_shard(
        out, "train-00002", lambda s: [Sample(s[0].key, s[0].jpeg, 7)] + s[1:]),
        ["train shards: labels [7] name no class in classes.json"]),
    "val-order": (lambda out: _rewrite_shard(out, "val-00000", _swap_val_samples),
                  ["val shards: not in class order", "val.beton: label order differs from the shards'"]),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_verify_catches_consistent_tampering(case, converted, tmp_path):
    """Edits with the manifest's checksums updated to match: verify must still see them."""
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    tamper, expected = TAMPER[case]
    tamper(out)
    _resign(out)
    problems = "\n".join(verify(out))
    assert "checksum" not in problems
    for text in expected:
        assert text in problems, problems


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
    images = _SourceImages(items, [0] * len(items), 512, 0, report_fd=-1, threads=2)
    for i in (0, 5, 1, 6, 2):  # two interleaved "chunks"
        assert images[i][0].ndim == 3
        assert len(images._ahead) <= 4
