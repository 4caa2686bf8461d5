"""Training options do what they say, checked against their definitions rather than by completing:
the cosine schedule follows its formula, EMA weights are the decayed average of the weights the
optimizer produced, best.pt holds the best epoch's weights, and config.yaml's augmentations are
the ones the loader's output shows."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import yaml

from fastmix.train.optim import build_schedule
from fastmix.train.recipe import TrainConfig
from fastmix.train.recipe import image_size_at
from fastmix.train.trainer import Trainer
from test_train import rows, tiny

PEAK = 0.01


def cosine(t: int, total: int, warmup: int) -> float:
    """Linear warmup 0 -> peak over `warmup` updates, then half a cosine from peak to 0 at `total`."""
    if t < warmup:
        return PEAK * t / warmup
    return 0.5 * PEAK * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_cosine_schedule_follows_its_formula(warmup_epochs):
    per_epoch, epochs = 5, 4
    cfg = TrainConfig(schedule="cosine", warmup_epochs=warmup_epochs, epochs=epochs, lr=PEAK,
                      batch_size=8, micro_batch=8)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = build_schedule(opt, cfg, per_epoch)
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    for t in range(total + 1):
        sched.step_update(t)
        assert opt.param_groups[0]["lr"] == pytest.approx(cosine(t, total, warmup), abs=1e-9), t


def test_trainer_steps_the_cosine_schedule_every_update(flat_converted, tmp_path):
    """The lr logged after each update is the formula's at that update, ending at 0."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, schedule="cosine", lr=PEAK, warmup_epochs=0))
    trainer.fit()
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    total = 2 * trainer.updates_per_epoch
    assert [s["update"] for s in steps] == list(range(1, total + 1))
    for s in steps:
        assert s["lr"] == pytest.approx(cosine(s["update"], total, 0), abs=1e-9), s["update"]
    assert steps[-1]["lr"] == pytest.approx(0, abs=1e-12)


def test_ema_weights_are_the_decayed_average(flat_converted, tmp_path):
    """timm ModelEmaV3 as the trainer drives it: after update 1 the EMA is the weights (timm's
    decay is 0 on its first step), then E_t = d E_(t-1) + (1 - d) W_t, over parameters and
    BatchNorm's running statistics."""
    data, _, _ = flat_converted
    decay = 0.8
    trainer = Trainer(tiny(data, tmp_path, ema=True, ema_decay=decay, epochs=1))
    after_steps = []
    trainer.optimizer.register_step_post_hook(lambda *_: after_steps.append(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}))
    trainer.fit()
    assert len(after_steps) == trainer.updates >= 3
    expected = dict(after_steps[0])
    for weights in after_steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    ema = trainer.ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v, atol=1e-6, rtol=1e-5, msg=k)
    saved, held = torch.load(tmp_path / "last.pt", weights_only=False)["ema"], trainer.ema.state_dict()
    assert saved.keys() == held.keys() and all(torch.equal(saved[k], held[k]) for k in held)
    last = after_steps[-1]
    assert any(not torch.allclose(ema[k], last[k]) for k in last), "the EMA must lag the weights"
    # epochs.csv keeps two decimals of a top-1 (runlog.ROUNDING)
    assert float(rows(tmp_path)[-1]["ema_top1"]) == pytest.approx(trainer.evaluate(trainer.ema.module)["top1"], abs=0.005)


def test_best_checkpoint_holds_the_best_epoch(flat_converted, tmp_path, monkeypatch):
    """Top-1 scripted to peak in the middle epoch (40, 90, 60): best.pt must hold that epoch's
    weights, not the last; evaluated again, they give the top-1 they gave then."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, epochs=3))
    real_evaluate, scripted, seen = trainer.evaluate, iter([40.0, 90.0, 60.0]), []

    def evaluate(net=None):
        result = real_evaluate(net)
        seen.append(({k: v.clone() for k, v in trainer.model.state_dict().items()}, result["top1"]))
        return {**result, "top1": next(scripted)}

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    trainer.fit()
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert (best["epoch"], best["best_top1"], last["epoch"]) == (1, 90.0, 2)
    weights, top1_then = seen[1]
    assert all(torch.equal(best["model"][k], weights[k]) for k in weights)
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in weights)
    trainer.model.load_state_dict(best["model"])
    assert real_evaluate()["top1"] == pytest.approx(top1_then)


@pytest.mark.parametrize("backend", ["pil-wds", "nvjpeg"])
def test_config_yaml_lists_the_augmentations_the_output_shows(flat_converted, tmp_path, backend):
    """Flat-colour images are unchanged by crop and flip, so any pixel difference between the
    trainer's train batches with and without RandAugment is RandAugment's doing."""
    data, _, _ = flat_converted

    def first_batch(out, rand_augment):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nvjpeg: the trainer warns that it lacks RandAugment
            trainer = Trainer(tiny(data, out, backend=backend, rand_augment=rand_augment, batch_size=16,
                                   micro_batch=16))
        loader = trainer.train_loader(image_size_at(trainer.cfg, 0))
        return next(iter(loader))[0], yaml.safe_load((out / "config.yaml").read_text())["augmentations"]

    plain, plain_listed = first_batch(tmp_path / "plain", None)
    augmented, listed = first_batch(tmp_path / "ra", "rand-m9-mstd0.5-inc1")
    changed = int(((augmented - plain).abs().amax(dim=(1, 2, 3)) > 0.05).sum())
    assert "rand-augment" not in plain_listed
    if "rand-augment" in listed:
        assert changed >= 0.3 * len(plain), f"listed, but only {changed}/{len(plain)} images changed"
    else:
        assert changed == 0, f"not listed, but {changed}/{len(plain)} images changed"
    assert ("rand-augment" in listed) == (backend == "pil-wds")
