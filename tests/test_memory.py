"""Activation memory: the analytic model (fastmix.model.flops) against the bytes autograd really
keeps (saved_tensors_hooks, deduplicated by storage), and the device memory budget."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastmix.devices.catalog import load_catalog
from fastmix.model.convmixer import VARIANTS, ConvMixerConfig, create_model
from fastmix.model.flops import convmixer_ops, totals
from fastmix.perf.memory import BYTES, GB, device_training_memory, largest_micro_batch, saved_bytes_measured

TINY = {"tiny_relu": ConvMixerConfig(16, 2, kernel=3, patch=4, act="relu"),
        "tiny_gelu": ConvMixerConfig(16, 2, kernel=5, patch=4, act="gelu")}


def predicted(cfg, res, batch, precision, classes=10):
    return totals(convmixer_ops(cfg, res, classes)).activation_bytes(batch, BYTES[precision])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_variants_saved_bytes_exact_and_fake_mode_agrees(name, precision):
    """Real tensors on the CPU (16-bit autocast = CPU bf16): ReLU and GELU, both precisions.
    FakeTensorMode must see the same bytes, so the registered variants can be checked without
    computing them."""
    cfg = TINY[name]
    torch.manual_seed(0)
    model, x = create_model("convmixer_256_8", num_classes=10, **cfg.__dict__), torch.randn(3, 3, 32, 32)
    real = saved_bytes_measured(model, x, precision)
    with FakeTensorMode():
        fake = saved_bytes_measured(create_model("convmixer_256_8", num_classes=10, **cfg.__dict__),
                                    torch.randn(3, 3, 32, 32), precision)
    # FakeTensorMode's batch-norm kernel types BN's mean/invstd in 16-bit under autocast (real:
    # fp32): 2 x dim x 2 bytes per BN, a few ppm of a real variant; everything else is identical.
    n_bn = 1 + 2 * cfg.depth
    assert real - fake == (n_bn * 2 * cfg.dim * 2 if precision == "bf16" else 0)
    assert predicted(cfg, 32, 3, precision) == pytest.approx(real, rel=0.02)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_registered_variants_saved_bytes_match_autograd(name, precision):
    res, batch = (32, 2) if name == "convmixer_256_8" else (224, 1)
    with FakeTensorMode():  # shapes and storages only
        measured = saved_bytes_measured(create_model(name, num_classes=100), torch.randn(batch, 3, res, res),
                                        precision)
    assert predicted(VARIANTS[name], res, batch, precision, 100) == pytest.approx(measured, rel=0.02)


def test_relu_variant_keeps_two_thirds_of_the_gelu_maps():
    """Issue 10's case: 768/32 (ReLU) at 224 px under 16-bit autocast keeps ~203 MB per image of
    activations (+ its 16-bit weight copies once per step), not the 305 MB a GELU count gives."""
    cfg = VARIANTS["convmixer_768_32"]
    t = totals(convmixer_ops(cfg, 224, 100))
    one, two = t.activation_bytes(1, 2), t.activation_bytes(2, 2)
    assert (two - one) / 1e6 == pytest.approx(203, abs=2)
    gelu = totals(convmixer_ops(ConvMixerConfig(**{**cfg.__dict__, "act": "gelu"}), 224, 100))
    assert (gelu.activation_bytes(2, 2) - gelu.activation_bytes(1, 2)) / 1e6 == pytest.approx(305, abs=3)


def test_device_budget_counts_every_component_and_picks_the_micro_batch():
    t4 = load_catalog()["t4"]
    base = device_training_memory("convmixer_1536_20", 16, "fp16", 224)
    full = device_training_memory("convmixer_1536_20", 16, "fp16", 224, ema=True, compile=True, loader="dali",
                                  resolutions=[128, 160, 192, 224])
    params = base["weights_grads_adamw"] / 16
    assert full["ema"] == 4 * params and full["compile"] > 0
    # one DALI pool per train resolution plus the val pipeline, each > its scratch
    assert full["dali_pools"] > 5 * 0.15 * GB
    assert full["total"] == pytest.approx(base["total"] + full["ema"] + full["compile"] + full["dali_pools"])
    micro = largest_micro_batch("convmixer_1536_20", t4, "fp16", 64, 224, ema=True, loader="dali")
    assert micro and 64 % micro == 0
    assert device_training_memory("convmixer_1536_20", micro, "fp16", 224, ema=True, loader="dali")["total"] <= 16 * GB
    assert device_training_memory("convmixer_1536_20", 2 * micro, "fp16", 224, ema=True, loader="dali")["total"] > 16 * GB


def test_t4_recipe_micro_batches_come_from_the_memory_model():
    """The t4 recipe's micro-batch per variant is what the device memory model picks (DALI pools
    for train + val, compile workspaces, context, cuDNN workspace), and the comment states it."""
    from fastmix.train.recipe import RECIPES, load_recipe
    t4, text = load_catalog()["t4"], (RECIPES / "t4.yaml").read_text()
    for name in VARIANTS:
        cfg = load_recipe("t4", model=name)
        want = largest_micro_batch(name, t4, cfg.precision, cfg.batch_size, cfg.image_size, loader=cfg.backend,
                                   compile=cfg.compile, ema=cfg.ema)
        assert cfg.micro_batch_size == want, name
        gb = device_training_memory(name, want, cfg.precision, cfg.image_size, loader=cfg.backend,
                                    compile=cfg.compile, ema=cfg.ema)["total"] / GB
        assert f"{want} -> {gb:.1f} GB" in text, name
