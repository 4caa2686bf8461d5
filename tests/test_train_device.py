"""The trainer's device paths on the CPU (issues 14 and 15): host syncs per update, fp16 skipped
steps in the log, compilations counted, cuDNN autotuning, an out-of-memory retry at start-up,
and the speed options really in effect inside the step (channels_last, bf16)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from fastmix.train import speed
from fastmix.train.trainer import Trainer
from test_train import rows, tiny

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class Prefetched:
    """A loader's batches held in memory: the count below sees the trainer, not the loader."""

    def __init__(self, loader):
        self.batches, self.augmentations = list(loader), loader.augmentations

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_host_reads_per_update_stay_within_the_budget(flat_converted, tmp_path, monkeypatch):
    """Budget: one device read after an epoch's first update, one per log line, one at the
    epoch's end (shared with the last log line when they coincide), one cross-rank sum: for
    U updates and log_every L at most U // L + 3 per epoch, whatever U. Before: ~7 per update."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, batch_size=4, micro_batch=2, log_every=4, max_steps_per_epoch=8))
    assert trainer.updates_per_epoch == 8  # 39 images: 19 micro-batches of 2, 9 updates, cut to 8
    trainer._train_loaders[32] = Prefetched(trainer.train_loader(32))
    calls = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _n=name, _r=real, **k: calls.append(_n) or _r(self, *a, **k))
    result = trainer.train_epoch(0)
    monkeypatch.undo()
    assert math.isfinite(result["train_loss"]) and trainer.updates == 8
    assert len(calls) <= 8 // 4 + 3, calls


def test_fp16_skipped_steps_log_null_not_infinity(flat_converted, tmp_path):
    """The GradScaler skips an update whose gradients overflow. Decided (trainer.py docstring):
    the update counts (schedule and EMA advance, as in timm and PyTorch's AMP recipe), the
    weights stay, its log line has grad_norm null, and scaler_skipped counts it. Before:
    `Infinity` in steps.jsonl, which no strict JSON reader accepts."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, precision="fp16", epochs=1, log_every=1))
    backward = {"n": 0}

    def overflow_second_update(grad):
        backward["n"] += 1
        return grad * math.inf if backward["n"] == 2 else grad
    trainer.model.head.weight.register_hook(overflow_second_update)
    weights, step = [], trainer.optimizer_step

    def recording_step(loss):
        step(loss)
        weights.append(trainer.model.head.weight.detach().clone())
    trainer.optimizer_step = recording_step
    trainer.fit()

    def refuse(constant):
        raise ValueError(f"{constant} in steps.jsonl")
    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [line["update"] for line in lines] == list(range(1, trainer.updates_per_epoch + 1))
    assert lines[1]["grad_norm"] is None and lines[0]["grad_norm"] is not None and lines[2]["grad_norm"] is not None
    assert lines[2]["scale"] == lines[1]["scale"] / 2  # the scaler backed off
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    (row,) = rows(tmp_path)
    assert row["scaler_skipped"] == "1" and row["nonfinite_skipped"] == "0"


@pytest.fixture
def counted_compiles(monkeypatch):
    """torch.compile with a backend that records each graph's image width (and runs it eagerly)."""
    graphs, real = [], torch.compile

    def counting(gm, example_inputs):
        graphs.append(max(t.shape[-1] for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4))
        return gm.forward
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=counting, dynamic=kw.get("dynamic")))
    return graphs


def test_one_compilation_per_training_resolution(flat_converted, tmp_path, counted_compiles):
    """Progressive resizing 32 -> 64 px with evaluation after every epoch (eval mode, 2x batch,
    a partial last batch, val at 64 px): exactly the two training resolutions compile, and the
    compile time is measured around those compilations. Before: [32, 64, 64] (a
    shape-dynamic recompile at the second size)."""
    data, _, _ = flat_converted
    summary = Trainer(tiny(data, tmp_path, compile=True, epochs=3, image_size=64, micro_batch=4,
                           progressive={"start": 32, "until": 0.67}, ema=True, ema_decay=0.9)).fit()
    assert [int(r["image_size"]) for r in summary["epochs"]] == [32, 64, 64]
    assert counted_compiles == [32, 64]
    assert summary["compilations"] == 2 and summary["compile_s"] > 0


def test_cudnn_autotunes_and_channels_last_auto_measures_the_run_as_it_trains(flat_converted, tmp_path, monkeypatch,
                                                                             counted_compiles):
    """benchmark on for training (off under torch.use_deterministic_algorithms) and on while the
    channels_last probe runs; on a CPU the probe runs eagerly even when the run compiles (compiling
    it twice there costs minutes: speed.choose_channels_last), so only training compiles."""
    data, _, _ = flat_converted
    seen, timed = [], speed.time_train_steps

    def recording(model, x, precision, **kw):
        seen.append((torch.backends.cudnn.benchmark, type(model).__name__))
        return timed(model, x, precision, **kw)
    monkeypatch.setattr(speed, "time_train_steps", recording)
    torch.backends.cudnn.benchmark = False
    trainer = Trainer(tiny(data, tmp_path / "a", channels_last="auto", compile=True))
    assert torch.backends.cudnn.benchmark and trainer.describe()["cudnn_benchmark"]
    assert seen == [(True, "ConvMixer")] * 2 and len(counted_compiles) == 0
    torch.use_deterministic_algorithms(True)
    try:
        assert not Trainer(tiny(data, tmp_path / "b")).cudnn_benchmark
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False


def test_out_of_memory_at_start_up_retries_with_half_the_micro_batch(flat_converted, tmp_path):
    """A stand-in for CUDA's allocator: micro-batches above 4 'run out of memory' in training.
    The run halves 8 -> 4, doubles accumulation 2 -> 4, says so, records it, and trains on."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, batch_size=16, micro_batch=8))
    sizes = []

    def allocator(module, args):
        if module.training:
            sizes.append(len(args[0]))
            if len(args[0]) > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
    trainer.model.register_forward_pre_hook(allocator)
    with pytest.warns(UserWarning, match=r"out of memory at micro-batch 8 \(32 px.*micro-batch 4 x 4 accumulation"):
        summary = trainer.fit()
    assert sizes[0] == 8 and set(sizes[1:]) == {4}
    assert summary["updates"] == 2 * trainer.updates_per_epoch == 4
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (config["micro_batch"], config["accum_steps"]) == (4, 4)
    assert config["micro_batch_retries"][0]["from"] == 8 and "stand-in" in config["micro_batch_retries"][0]["error"]
    late = Trainer(tiny(data, tmp_path / "late", batch_size=16, micro_batch=8, epochs=1))
    late.train_epoch(0)  # the first update fitted: an out-of-memory error later is not retried
    late.model.register_forward_pre_hook(allocator)
    with pytest.raises(torch.OutOfMemoryError):
        late.train_epoch(0)


@pytest.mark.parametrize("options, memory_format, dtype", [
    ({"channels_last": "on"}, torch.channels_last, torch.float32),
    ({"channels_last": "off"}, torch.contiguous_format, torch.float32),
    ({"precision": "bf16"}, torch.contiguous_format, torch.bfloat16),
], ids=["channels_last", "contiguous", "bf16"])
def test_speed_options_are_in_effect_inside_the_step(flat_converted, tmp_path, options, memory_format, dtype):
    """Inside the training step: the depthwise conv's input memory format and output dtype."""
    data, _, _ = flat_converted
    trainer = Trainer(tiny(data, tmp_path, epochs=1, **options))
    conv = trainer.model.blocks[0][0].fn[0]
    assert conv.groups == conv.in_channels  # the depthwise conv
    seen = []
    conv.register_forward_hook(lambda m, args, out: seen.append(
        (args[0].is_contiguous(memory_format=memory_format), out.dtype)))
    trainer.train_epoch(0)
    assert seen and set(seen) == {(True, dtype)}, seen
