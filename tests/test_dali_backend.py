"""DALI: a train epoch is a function of (seed, rank, epoch), so resume is exact (issue 21 item 13);
without DALI installed, training says how to install it and what works instead (issue 20 item 8)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastmix.devices.ceilings import host_matmul_tflops
from fastmix.train.runlog import TIMING_FIELDS
from fastmix.train.trainer import Trainer
from test_train import rows, tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402  (tools/train.py)

dali = pytest.importorskip("nvidia.dali", reason="DALI is not installed")
RA = "rand-m9-mstd0.5-inc1"


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_an_epoch_depends_on_seed_rank_and_epoch_only(flat_converted):
    """Epoch 2 of a loader that ran 0 and 1 equals epoch 2 of a fresh one (as after a resume):
    same order, crops, flips and RandAugment draws. Before: the fresh pipeline replayed epoch 0."""
    from loaders import make_loader
    data, _, _ = flat_converted

    def loader(**kw):
        return make_loader("dali", data, "train", batch_size=8, image_size=32, workers=2, **{"rand_augment": RA, **kw})
    straight = loader()
    first, _, third = (batches(straight, e) for e in range(3))
    fresh = loader()
    assert same(batches(fresh, 2), third)
    assert not same(first, third), "each epoch draws anew"
    assert not same(batches(loader(seed=1), 2), third), "and from the seed"
    # Two ranks: disjoint each epoch, and each moves on to the other's shard as DALI's readers do.
    ranks = [loader(rank=r, world_size=2, rand_augment=None) for r in (0, 1)]
    assert [(r.shard, r.num_samples) for r in ranks] == [(0, 19), (1, 20)]
    for epoch in (0, 1):
        labels = [torch.cat([y for _, y in batches(r, epoch)]) for r in ranks]
        assert [len(y) for y in labels] == [r.num_samples for r in ranks]
        assert sorted(torch.cat(labels).tolist()) == sorted(torch.cat([y for _, y in first]).tolist())
    assert [(r.shard, r.num_samples, len(r)) for r in ranks] == [(1, 20, 3), (0, 19, 3)]


class Interrupted(Exception):
    pass


def test_a_resumed_dali_run_matches_an_uninterrupted_one(flat_converted, tmp_path, monkeypatch):
    """RandAugment, mixup/cutmix and erasing on, 2 DALI threads: stopped after epoch 0's
    checkpoint and resumed, the run logs the same epochs and ends with the same weights."""
    data, _, _ = flat_converted
    # Measured once per process, after the trainer seeds: the first trainer in a process would
    # draw its random matrices from the seeded stream and the next would not (reported).
    host_matmul_tflops("fp32")
    kw = dict(backend="dali", workers=2, rand_augment=RA, mixup=0.5, cutmix=0.5, reprob=0.25)
    Trainer(tiny(data, tmp_path / "straight", **kw)).fit()

    save = Trainer._save

    def stop_after_first(self, epoch, best):
        save(self, epoch, best)
        raise Interrupted
    monkeypatch.setattr(Trainer, "_save", stop_after_first)
    with pytest.raises(Interrupted):
        Trainer(tiny(data, tmp_path / "resumed", **kw)).fit()
    monkeypatch.undo()
    Trainer(tiny(data, tmp_path / "resumed", **kw), resume=True).fit()

    volatile = set(TIMING_FIELDS)
    strip = [{k: v for k, v in r.items() if k not in volatile} for r in rows(tmp_path / "straight")]
    assert [{k: v for k, v in r.items() if k not in volatile} for r in rows(tmp_path / "resumed")] == strip
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_without_dali_says_what_to_install_and_what_works(flat_converted, tmp_path, monkeypatch, capsys):
    """The t4 recipe (backend dali) where DALI is missing: one line, exit 1, no traceback."""
    data, _, _ = flat_converted
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now fails
    rc = train_tool.main(["--recipe", "t4", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu",
                          "--precision", "fp32", "--channels-last", "off", "--no-compile", "--model", "convmixer_256_8",
                          "--set", "model_overrides={dim: 16, depth: 1}", "--set", "image_size=32"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("train: ") and "pip install nvidia-dali-cuda" in err and "fastmix[dali" in err
    assert "opencv" in err and "resident" in err and "nvjpeg" not in err  # nvjpeg needs CUDA; this is a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from loaders.dali import without_dali
    assert "--backend nvjpeg / opencv / resident" in without_dali()
