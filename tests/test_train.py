"""The training loop on CPU with a tiny ConvMixer: every speed option completes, accumulation is
exact, fp16 evaluation stays finite, non-finite losses are skipped then stopped, resume is exact."""
from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import kill_when_exists
from fastmix.train.optim import OneCycleLR, peak_lr
from fastmix.train.recipe import RECIPES, TrainConfig, load_recipe
from fastmix.train.runlog import TIMING_FIELDS
from fastmix.train.recipe import image_size_at
from fastmix.train.trainer import NonFiniteLoss, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="convmixer_256_8", model_overrides={"dim": 16, "depth": 2, "kernel": 3, "patch": 4},
            backend="pil-wds", workers=0, device="cpu", precision="fp32", channels_last="off",
            batch_size=8, micro_batch=8, epochs=2, image_size=32, crop_scale=(0.5, 1.0), log_every=1)


def tiny(data, out, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **kw})


def rows(out) -> list[dict]:
    with open(Path(out) / "epochs.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("options", [
    {"precision": "fp32"},
    {"precision": "bf16"},
    {"channels_last": "on"},
    {"channels_last": "auto", "precision": "bf16"},
    {"micro_batch": 2, "batch_size": 8},  # 4 micro-batches per update
    {"compile": True, "precision": "bf16", "micro_batch": 4},  # with AMP and accumulation
    {"ema": True, "ema_decay": 0.9, "progressive": {"start": 32, "until": 0.5}, "image_size": 64,
     "schedule": "cosine", "warmup_epochs": 0.5},
], ids=["fp32", "bf16", "channels_last", "channels_last-auto", "accumulation", "compile-bf16-accumulation",
                         "ema-progressive-cosine"])
def test_training_run_completes(flat_converted, tmp_path, options):
    data, _, _ = flat_converted
    summary = Trainer(tiny(data, tmp_path, **options)).fit()
    epochs = rows(tmp_path)
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    for r in epochs:
        assert math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["eval_loss"]))
        assert 0 <= float(r["top1"]) <= float(r["top5"]) <= 100
    for name in ("last.pt", "best.pt", "curves.png", "steps.jsonl", "config.yaml", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert summary["updates"] == 2 * summary["updates_per_epoch"]
    if options.get("compile"):
        assert summary["compile_s"] is not None
    if options.get("progressive"):
        assert [int(r["image_size"]) for r in epochs] == [32, 64]
        assert epochs[-1]["ema_top1"] != ""


def test_accumulation_gives_the_gradient_of_one_big_batch(flat_converted, tmp_path):
    """k micro-batches of b == one batch of k*b (fp32, 1e-5). BatchNorm normalizes with batch
    statistics in train mode, which differ between b and k*b by definition; in eval mode it
    uses the running statistics, so every sample's output is independent of its batch."""
    data, _, _ = flat_converted
    cfg = tiny(data, tmp_path, mixup=0, cutmix=0, reprob=0, label_smoothing=0.1, batch_size=16, micro_batch=4)
    trainer = Trainer(cfg)
    trainer.model.eval()
    x, y = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 3, (16,))

    def grads(micro):
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = trainer.forward_backward(micro)
        return loss, [p.grad.clone() for p in trainer.model.parameters()]

    loss_one, one = grads([(x, y)])
    loss_acc, acc = grads([(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)])
    torch.testing.assert_close(loss_acc, loss_one, atol=1e-5, rtol=1e-5)
    for a, b in zip(acc, one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in one)


def test_eval_loss_stays_finite_where_fp16_logits_overflow(flat_converted, tmp_path):
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, precision="fp16"))
    assert trainer.scaler.is_enabled()
    with torch.no_grad():
        trainer.model.head.bias[0] = 1e5  # beyond fp16's 65504
    model = trainer.model.eval()
    x, y = next(iter(trainer.val_loader))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # the naive way: fp16 head
        naive = model.head(model.blocks(model.stem(x)).mean(dim=(2, 3)))
    assert naive.dtype == torch.float16 and not torch.isfinite(F.cross_entropy(naive, y))
    result = trainer.evaluate()
    assert math.isfinite(result["eval_loss"]) and result["eval_loss"] > 1e4
    assert result["eval_images"] == 12


def test_nonfinite_losses_are_skipped_counted_and_then_stop_the_run(flat_converted, tmp_path):
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path / "a", epochs=1, max_nonfinite=3))
    calls = {"n": 0}

    def poison_second_update(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    handle = trainer.model.head.register_forward_hook(poison_second_update)
    trainer.fit()
    handle.remove()
    (row,) = rows(tmp_path / "a")
    assert row["nonfinite_skipped"] == "1" and math.isfinite(float(row["train_loss"]))
    assert trainer.updates == trainer.updates_per_epoch  # a skipped update still counts (trainer.py)

    trainer = Trainer(tiny(data, tmp_path / "b", epochs=1, max_nonfinite=3))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.model.head.register_forward_hook(lambda m, i, out: out * float("nan"))
    with pytest.raises(NonFiniteLoss, match="non-finite for 3 updates in a row"):
        trainer.fit()
    assert trainer.updates == 3  # skipped on the device: the weights never moved
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def train_cli(data, out, *extra, **popen) -> subprocess.Popen:
    sets = ["--set", "model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}", "--set", "image_size=32",
            "--set", "workers=2", "--set", "log_every=1", "--set", "crop_scale=[0.5, 1.0]"]
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "--recipe", "cpu-smoke", "--backend", "pil-wds",
           "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "8", "--micro-batch", "4",
           *sets, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_killed_run_resumes_to_the_same_metrics(converted, tmp_path):
    """RandAugment, mixup/cutmix, erasing and 2 loader workers on: every random stream must resume."""
    data, _ = converted
    straight = train_cli(data, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    run = train_cli(data, tmp_path / "killed")
    kill_when_exists(run, tmp_path / "killed" / "last.pt")
    assert run.returncode == -signal.SIGKILL
    assert len(rows(tmp_path / "killed")) < 3, "the kill must land before the run ends"

    resumed = train_cli(data, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    volatile = set(TIMING_FIELDS)
    strip = [{k: v for k, v in r.items() if k not in volatile} for r in rows(tmp_path / "straight")]
    assert [{k: v for k, v in r.items() if k not in volatile} for r in rows(tmp_path / "killed")] == strip
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_checkpoint_says_so(flat_converted, tmp_path):
    data, _, _ = flat_converted
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny(data, tmp_path), resume=True)


def test_recipes_load_and_validate():
    for path in sorted(RECIPES.glob("*.yaml")):
        cfg = load_recipe(path.stem)
        assert cfg.batch_size % cfg.micro_batch_size == 0
    t4 = load_recipe("t4", model="convmixer_1536_20")
    assert (t4.precision, t4.micro_batch_size, t4.accum_steps) == ("fp16", 16, 4)  # from fastmix.perf.memory (tests/test_memory.py)
    with pytest.raises(ValueError, match="not a multiple"):
        TrainConfig(batch_size=64, micro_batch=48)
    with pytest.raises(FileNotFoundError, match="no recipe"):
        load_recipe("v100-imaginary")


def test_one_cycle_schedule_and_lr_scaling():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = OneCycleLR(opt, total_updates=100)
    lrs = {}
    for t in (0, 20, 40, 60, 80, 100):
        sched.step_update(t)
        lrs[t] = opt.param_groups[0]["lr"]
    assert lrs[0] == 0 and lrs[40] == pytest.approx(0.01) and lrs[80] == pytest.approx(0.0005)
    assert lrs[20] == pytest.approx(0.005) and lrs[100] == 0
    assert peak_lr(TrainConfig(batch_size=64, micro_batch=32)) == pytest.approx(0.001)
    assert peak_lr(TrainConfig(batch_size=64, micro_batch=32), world_size=10) == pytest.approx(0.01)


def test_progressive_resizing_steps_by_32():
    cfg = TrainConfig(epochs=10, image_size=224, progressive={"start": 160, "until": 0.8})
    sizes = [image_size_at(cfg, e) for e in range(10)]
    assert sizes[0] == 160 and sizes[-1] == 224 and sizes == sorted(sizes)
    assert all(s % 32 == 0 for s in sizes)


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_epochs_cut_short_leave_the_loader_ready_for_the_next(flat_converted, tmp_path, backend):
    """max_steps_per_epoch (and an accumulation remainder) abandon an epoch mid-way."""
    data, _, _ = flat_converted
    cfg = tiny(data, tmp_path, backend=backend, workers=2, batch_size=4, micro_batch=4, epochs=3, max_steps_per_epoch=2)
    if backend == "ffcv":  # the recipe's RandAugment: ffcv has none, and the user is told
        with pytest.warns(UserWarning, match=r"ffcv loader does not apply \['rand-augment'\]"):
            trainer = Trainer(cfg)
    else:
        trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["updates"] == 6 and len(summary["epochs"]) == 3
    assert all(0 <= float(r["top1"]) <= 100 and math.isfinite(float(r["eval_loss"])) for r in summary["epochs"])
