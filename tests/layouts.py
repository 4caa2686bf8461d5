"""Re-pack a synthetic ImageFolder tree as the other ImageNet layouts (Kaggle, ILSVRC2012 archives)."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
from scipy.io import savemat


def _val_files(root: Path) -> list[tuple[str, Path]]:
    files = [(d.name, f) for d in sorted((root / "val").iterdir()) for f in sorted(d.iterdir())]
    order = np.random.default_rng(0).permutation(len(files))  # val is not grouped by class
    return [files[i] for i in order]


def to_kaggle(root: Path, dest: Path, drop_label: bool = False) -> Path:
    data = dest / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(root / "train", data / "train")
    (data / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for n, (wnid, f) in enumerate(_val_files(root), start=1):
        image_id = f"ILSVRC2012_val_{n:08d}"
        shutil.copy(f, data / "val" / f"{image_id}.JPEG")
        if not (drop_label and n == 2):
            rows.append(f"{image_id},{wnid} 10 20 200 300 {wnid} 5 5 50 50")
    (dest / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    wnids = sorted(p.name for p in (root / "train").iterdir())
    (dest / "LOC_synset_mapping.txt").write_text("".join(f"{w} kaggle name {w}\n" for w in wnids))
    return dest


def tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of (name, data) members; data None makes a directory entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def devkit_ids(wnids: list[str]) -> dict[str, int]:
    """Devkit ids deliberately in reverse WNID order: a converter that assumes sorted ids fails."""
    return {w: len(wnids) - i for i, w in enumerate(wnids)}


def to_archives(root: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    wnids = sorted(p.name for p in (root / "train").iterdir())
    inner = [(f"{w}.tar", tar_bytes([(f.name, f.read_bytes())
                                      for f in sorted((root / "train" / w).iterdir())]))
             for w in wnids]
    (dest / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(inner))
    ids = devkit_ids(wnids)
    val, truth = [("extras", None)], []  # a directory entry: skipped, and reading goes on past it
    for n, (wnid, f) in enumerate(_val_files(root), start=1):
        val.append((f"ILSVRC2012_val_{n:08d}.JPEG", f.read_bytes()))
        truth.append(str(ids[wnid]))
    (dest / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = [(ids[w], w, f"words of {w}", "", 0, np.zeros(0), 0, 5) for w in wnids]
    rows.append((len(wnids) + 1, "n99999999", "a parent synset", "", 2, np.array([1, 2]), 1, 0))
    synsets = np.array(rows, dtype=[(f, "O") for f in fields]).reshape(-1, 1)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    devkit = [("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
              ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
               ("\n".join(truth) + "\n").encode())]
    with tarfile.open(dest / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        for name, data in devkit:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest
