"""The training loop: any loaders/ backend, AMP, channels_last, torch.compile, accumulation, DDP.

    from fastmix import Trainer, load_recipe
    Trainer(load_recipe("t4", model="convmixer_768_32", data="data/imagenet100")).fit()

One optimizer update = `accum_steps` micro-batches; the optimizer, the schedule, EMA and the
step log all count updates. Evaluation computes its loss in fp32 from fp32 logits (the model
classifies in fp32, see model.py), so fp16 runs cannot log NaN eval losses from overflow.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastmix.devices.catalog import load_catalog, present_device
from fastmix.model.convmixer import create_model
from fastmix.model.flops import convmixer_ops, totals
from loaders import make_loader

from . import checkpoint, distributed, speed
from .augment import BatchAugment
from .evaluate import evaluate
from .optim import build_optimizer, build_schedule, peak_lr
from .recipe import TrainConfig
from .runlog import RunLog

LOADER_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class NonFiniteLoss(RuntimeError):
    pass


def image_size_at(cfg: TrainConfig, epoch: int) -> int:
    """Progressive resizing: `start` -> image_size by `until` x epochs, in steps of 32 px."""
    if not cfg.progressive:
        return cfg.image_size
    start, until = int(cfg.progressive["start"]), float(cfg.progressive.get("until", 0.75))
    end_epoch = max(1, round(until * cfg.epochs) - 1)
    size = np.interp(epoch, [0, end_epoch], [start, cfg.image_size])
    return int(min(cfg.image_size, max(32, size // 32 * 32)))


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.dist, self.device = distributed.init(speed.resolve_device(cfg.device))
        self.precision = speed.resolve_precision(cfg.precision, self.device)
        self.out = Path(cfg.out)
        checkpoint.seed_everything(cfg.seed + self.dist.rank)  # mixup/erasing differ per rank
        classes = Path(cfg.data) / "classes.json"
        if not classes.is_file():
            raise FileNotFoundError(f"{classes}: not found; convert the data first (tools/convert_subset.py)")
        self.num_classes = len(json.loads(classes.read_text()))

        model = create_model(cfg.model, num_classes=self.num_classes, **cfg.model_overrides).to(self.device)
        channels_last, self.format_timings = speed.choose_channels_last(
            model, cfg.channels_last, self.device, self.precision, cfg.micro_batch_size, cfg.image_size)
        self.channels_last = bool(self.dist.gather(channels_last)[0])  # rank 0's measurement decides for all
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.ddp = None
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.net = speed.compile_model(self.ddp or model, cfg.compile, cfg.compile_mode)

        self.lr = peak_lr(cfg, self.dist.world_size)
        self.optimizer = build_optimizer(model, cfg, self.lr)
        self.scaler = speed.grad_scaler(self.precision, self.device)
        self.augment = BatchAugment(cfg, self.num_classes, self.device)
        self._train_loaders: dict = {}
        self.val_loader = self._loader("val", cfg.val_image_size or cfg.image_size)
        first = self.train_loader(image_size_at(cfg, 0))
        # Every rank must run the same number of updates (DALI's shards can differ by one sample).
        updates = len(first) // cfg.accum_steps
        if cfg.max_steps_per_epoch:
            updates = min(updates, cfg.max_steps_per_epoch)
        self.updates_per_epoch = int(min(self.dist.gather(updates)))
        if self.updates_per_epoch < 1:
            raise ValueError(f"{cfg.data}: too few training images for one update of {cfg.batch_size}")
        self.schedule = build_schedule(self.optimizer, cfg, self.updates_per_epoch)

        self.peak_flops, self._flops_per_image = self._peak_flops(), {}
        self.start_epoch, self.updates, self.best_top1 = 0, 0, -1.0
        self.nonfinite_in_row, self.update_times = 0, []
        self.train_hits = torch.zeros(2, dtype=torch.int64, device=self.device)  # correct, seen (this epoch)
        if resume:
            self._restore(checkpoint.load(self.out / "last.pt"))
        self.log = RunLog(self.out, self.dist.is_main, self.start_epoch)
        if self.dist.is_main:
            info = self.describe()
            (self.out / "config.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
            if info["not_applied_by_backend"]:
                warnings.warn(f"the {cfg.backend} loader does not apply {info['not_applied_by_backend']}, which "
                              "the recipe asks for (README: augmentations by backend)", stacklevel=2)

    def _peak_flops(self) -> float | None:
        """This device's catalog peak at the run's precision (for MFU), if the catalog knows it."""
        try:
            return present_device(load_catalog()).peak_tflops(self.precision) * 1e12 * self.dist.world_size
        except (KeyError, ValueError):
            return None

    def mfu(self, images_per_s: float, size: int) -> float | None:
        """Model FLOPs utilization, nanoGPT-style: analytic training FLOPs/s over the peak."""
        if self.peak_flops is None:
            return None
        if size not in self._flops_per_image:  # the op list is rebuilt once per resolution, not per log line
            self._flops_per_image[size] = totals(convmixer_ops(self.model.config, size, self.num_classes)).train_model_flops
        return images_per_s * self._flops_per_image[size] / self.peak_flops

    # -- data -----------------------------------------------------------------------------
    def _loader(self, split: str, size: int, **extra):
        cfg = self.cfg
        return make_loader(cfg.backend, cfg.data, split, batch_size=cfg.micro_batch_size * (1 if split == "train" else 2),
                           image_size=size, device=str(self.device), dtype=LOADER_DTYPE[self.precision],
                           rank=self.dist.rank, world_size=self.dist.world_size, workers=cfg.workers,
                           seed=cfg.seed, imagefolder=cfg.imagefolder, num_classes=self.num_classes,
                           **{"crop_ratio": cfg.crop_ratio, **cfg.loader_options, **extra})

    def train_loader(self, size: int):
        """One loader per resolution (progressive resizing visits a few), kept for reuse."""
        if size not in self._train_loaders:
            cfg = self.cfg
            self._train_loaders[size] = self._loader(
                "train", size, last_batch="drop", scale=cfg.crop_scale, hflip=cfg.hflip,
                rand_augment=cfg.rand_augment)
        return self._train_loaders[size]

    def describe(self) -> dict:
        loader = self.train_loader(image_size_at(self.cfg, 0))
        wanted = {"rand-augment": bool(self.cfg.rand_augment)}
        missing = [k for k, on in wanted.items() if on and k not in loader.augmentations]
        return {"config": self.cfg.to_dict(), "device": str(self.device), "precision": self.precision,
                "channels_last": self.channels_last, "channels_last_timings_s": self.format_timings,
                "world_size": self.dist.world_size, "accum_steps": self.cfg.accum_steps, "peak_lr": self.lr,
                "updates_per_epoch": self.updates_per_epoch,
                "augmentations": {**loader.augmentations, **self.augment.names},
                "not_applied_by_backend": missing}

    # -- one update -------------------------------------------------------------------------
    def forward_backward(self, micro_batches: list) -> torch.Tensor:
        """Accumulate the gradient of the mean loss over the micro-batches; return that loss.

        Each micro-batch's loss is scaled by 1/k, so k micro-batches of b give the gradient
        of one batch of k*b. DDP all-reduces only on the last (no_sync on the others).
        """
        k, total = len(micro_batches), torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            sync = self.ddp.no_sync() if self.ddp is not None and i < k - 1 else contextlib.nullcontext()
            with sync:
                x, y = self.augment(x, y)
                if not self.channels_last:
                    x = x.contiguous()
                with speed.autocast(self.precision, self.device):
                    logits = self.net(x)
                loss = self.augment.loss(logits.float(), y)
                self.scaler.scale(loss / k).backward()
            if not y.is_floating_point():  # hard labels (no mixup/cutmix): training accuracy means something
                self.train_hits[0] += (logits.detach().argmax(1) == y).sum()
                self.train_hits[1] += len(y)
            total += loss.detach()
        return total / k

    def optimizer_step(self, loss: torch.Tensor) -> dict:
        """Step unless the loss is non-finite on any rank (then skip and count); returns stats."""
        finite = not self.dist.any(not math.isfinite(loss.item()), self.device)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_row += 1
            if self.nonfinite_in_row >= self.cfg.max_nonfinite:
                raise NonFiniteLoss(
                    f"the training loss was non-finite for {self.nonfinite_in_row} updates in a row "
                    f"(update {self.updates}, precision {self.precision}, lr {self._lr():.3g}); "
                    "try a lower lr, clip_grad, or precision fp32/bf16")
            return {"skipped": True}
        self.nonfinite_in_row = 0
        grad_norm = None
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad).item()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self.schedule.step_update(self.updates)
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
        scaler_skipped = scale is not None and self.scaler.get_scale() < scale
        return {"skipped": False, "grad_norm": grad_norm, "scale": scale, "scaler_skipped": scaler_skipped}

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- epochs -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        cfg, size = self.cfg, image_size_at(self.cfg, epoch)
        loader = self.train_loader(size)
        loader.set_epoch(epoch)
        self.net.train()
        batches = iter(loader)
        self.train_hits.zero_()
        sums = {"loss": 0.0, "updates": 0, "images": 0, "nonfinite": 0, "scaler_skipped": 0}
        bar = tqdm(range(self.updates_per_epoch), desc=f"epoch {epoch}", disable=None if self.dist.is_main else True,
                   leave=False, dynamic_ncols=True, mininterval=2)
        start = time.perf_counter()
        for _ in bar:
            t = time.perf_counter()
            micro = [next(batches) for _ in range(cfg.accum_steps)]
            loss = self.forward_backward(micro)
            stats = self.optimizer_step(loss)  # loss.item() in here synchronizes the device
            self.update_times.append(time.perf_counter() - t)
            images = sum(len(y) for _, y in micro) * self.dist.world_size
            sums["images"] += images
            if stats["skipped"]:
                sums["nonfinite"] += 1
                continue
            sums["loss"] += loss.item()
            sums["updates"] += 1
            sums["scaler_skipped"] += stats["scaler_skipped"]
            rate = images / self.update_times[-1]
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self._lr():.2e}", img_s=f"{rate:.0f}")
            if self.updates % cfg.log_every == 0:
                self.log.step({"epoch": epoch, "update": self.updates, "loss": loss.item(), "lr": self._lr(),
                               "grad_norm": stats["grad_norm"], "scale": stats["scale"],
                               "images_per_s": rate, "mfu": self.mfu(rate, size), "image_size": size})
        del batches  # abandon the rest (accumulation remainder, max_steps_per_epoch)
        elapsed = time.perf_counter() - start
        loss_sum, updates, correct, seen = self.dist.sum([sums["loss"], sums["updates"], *self.train_hits.tolist()],
                                                         self.device)
        return {"train_loss": loss_sum / max(1, updates), "train_top1": 100 * correct / seen if seen else None,
                "images_per_s": sums["images"] / elapsed,
                "epoch_time_s": elapsed, "image_size": size, "nonfinite_skipped": sums["nonfinite"],
                "scaler_skipped": sums["scaler_skipped"]}

    def evaluate(self, net: torch.nn.Module | None = None) -> dict:
        """fp32 loss, top-1 and top-5 on the whole val split, all ranks (fastmix.train.evaluate)."""
        return evaluate(net or self.net, self.val_loader, self.device, self.precision, self.channels_last, self.dist)

    def fit(self) -> dict:
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.epochs):
            row = {"epoch": epoch, **self.train_epoch(epoch), "lr": self._lr(), **self.evaluate()}
            row["mfu"] = self.mfu(row["images_per_s"], row["image_size"])
            if self.ema is not None:
                row["ema_top1"] = self.evaluate(self.ema.module)["top1"]
            best = row["top1"] > self.best_top1
            self.best_top1 = max(self.best_top1, row["top1"])
            self.log.epoch(row)
            self._save(epoch, best)
        summary = self.summary()
        self.log.summary(summary)
        return summary

    def summary(self) -> dict:
        rows = self.log.rows() if self.dist.is_main else []
        times = self.update_times
        steady = float(np.median(times[1:])) if len(times) > 1 else None
        return {**self.describe(), "epochs": rows, "best_top1": self.best_top1, "updates": self.updates,
                "first_update_s": times[0] if times else None, "median_update_s": steady,
                # The first update pays torch.compile (and cuDNN autotuning); the rest do not.
                "compile_s": (times[0] - steady) if (steady is not None and self.cfg.compile) else None}

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, epoch: int, best: bool) -> None:
        rng = self.dist.gather(checkpoint.rng_state())  # collective: every rank calls it
        if self.dist.is_main:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "schedule": self.schedule.state_dict(),
                     "ema": self.ema.state_dict() if self.ema is not None else None,
                     "epoch": epoch, "updates": self.updates, "best_top1": self.best_top1,
                     "update_times": self.update_times, "rng": rng, "config": self.cfg.to_dict()}
            checkpoint.save(self.out / "last.pt", state)
            if best:
                shutil.copyfile(self.out / "last.pt", self.out / "best.tmp")
                (self.out / "best.tmp").replace(self.out / "best.pt")
        self.dist.barrier()

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.start_epoch, self.updates = state["epoch"] + 1, state["updates"]
        self.best_top1, self.update_times = state["best_top1"], list(state.get("update_times", []))
        self.schedule.step_update(self.updates)
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
