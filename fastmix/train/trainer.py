"""The training loop: any loaders/ backend, AMP, channels_last, torch.compile, accumulation, DDP.

    from fastmix import Trainer, load_recipe
    Trainer(load_recipe("t4", model="convmixer_768_32", data="data/imagenet100")).fit()

One optimizer update = `accum_steps` micro-batches; the optimizer, the schedule, EMA and the
step log all count updates. Evaluation computes its loss in fp32 from fp32 logits (the model
classifies in fp32, see model.py), so fp16 runs cannot log NaN eval losses from overflow.

An update never waits for the device: a non-finite loss or gradient skips the optimizer step
on the device (fused AdamW's `found_inf`, the GradScaler's in fp16), and the statistics are
read every `log_every` updates and at the end of an epoch (stepstats.py). A skipped update
still counts as an update: the schedule and EMA advance, as in timm and PyTorch's AMP recipe
(in fp16 the GradScaler skips a few steps at the start while it finds its scale); the log
shows it with `grad_norm: null` and counts it in `nonfinite_skipped` / `scaler_skipped`.
Evaluation runs the uncompiled model (see speed.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from fastmix import safeyaml
from fastmix.data.manifest import read_classes
from fastmix.devices.environment import cpu_summary
from fastmix.model.convmixer import create_model
from loaders import make_loader

from . import budget, checkpoint, checks, distributed, loadercost, runfolder, speed
from .augment import BatchAugment
from .evaluate import evaluate
from .mfu import MFU
from .optim import build_optimizer, build_schedule, peak_lr
from .progress import Progress, fields
from .recipe import TrainConfig, image_size_at
from .runlog import RunLog, model_title
from .stepstats import NonFiniteLoss, UpdateStats, check_streaks  # noqa: F401  (NonFiniteLoss: tools/train.py)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, allow_changes: bool = False,
                 started: float | None = None):
        """`resume` continues OUT/last.pt (other settings than it was saved with need `allow_changes`);
        a folder that holds a run is refused without one of `resume` and `overwrite` (runfolder.py).
        `started`: time.time() at the start of the command, from which a time budget counts."""
        self.started = time.time() if started is None else started
        self.cfg = cfg
        self.out = Path(cfg.out)
        runfolder.check(self.out, resume, overwrite)  # before any work
        checks.out_folder(self.out)
        saved = runfolder.read_resume(self.out / "last.pt", cfg.to_dict(), allow_changes) if resume else None
        kept = saved is not None and runfolder.budget_chose_epochs(saved["config"], cfg.to_dict(),
                                                                   saved.get("time_budget"))
        if kept:  # the first start's choice of epochs
            self.cfg = cfg = dataclasses.replace(cfg, epochs=saved["config"]["epochs"])
        self.dist, self.device = distributed.init(speed.resolve_device(cfg.device))
        self.precision = speed.resolve_precision(cfg.precision, self.device)
        checkpoint.seed_everything(cfg.seed + self.dist.rank)  # mixup/erasing differ per rank
        self.class_ids = checkpoint.class_ids(read_classes(cfg.data))
        self.num_classes = len(self.class_ids)
        checkpoint.resume_classes(saved, self.class_ids, self.out / "last.pt", allow_changes)
        checks.on_this_machine(cfg)  # before anything is built

        speed.compute_threads(cfg.threads)  # before the probe: an earlier ffcv import may have set 1
        self.cudnn_benchmark = speed.configure_cudnn()  # before the probe: it measures what the run uses
        model = create_model(cfg.model, num_classes=self.num_classes, **cfg.model_overrides).to(self.device)
        channels_last, self.format_timings = speed.choose_channels_last(
            model, cfg.channels_last, self.device, self.precision, cfg.micro_batch_size, cfg.image_size,
            compile=cfg.compile, compile_mode=cfg.compile_mode)
        self.channels_last = bool(self.dist.gather(channels_last)[0])  # rank 0's measurement decides for all
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp = None
        if self.dist.enabled:  # DDP broadcasts rank 0's weights and buffers to every rank
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None  # after the broadcast
        self.net = speed.compile_model(self.ddp or model, cfg.compile, cfg.compile_mode)
        self.compile_timer = speed.CompileTimer()
        self.micro_batch, self.accum_steps, self.micro_batch_retries = cfg.micro_batch_size, cfg.accum_steps, []

        self.lr = peak_lr(cfg, self.dist.world_size)
        # fused AdamW skips a step on the device when its found_inf is set (optimizer_step)
        self.optimizer = build_optimizer(model, cfg, self.lr, fused=self.device.type in ("cuda", "cpu"))
        self.scaler = speed.grad_scaler(self.precision, self.device)
        self.augment = BatchAugment(cfg, self.num_classes, self.device)
        self._train_loaders: dict = {}
        self.val_loader = self._loader("val", cfg.val_image_size or cfg.image_size)
        first = self.train_loader(image_size_at(cfg, 0))
        # Every rank must run the same number of updates (DALI's shards can differ by one sample).
        updates = len(first) // self.accum_steps
        if cfg.max_steps_per_epoch:
            updates = min(updates, cfg.max_steps_per_epoch)
        self.updates_per_epoch = int(min(self.dist.gather(updates)))
        if self.updates_per_epoch < 1:
            raise ValueError(f"{cfg.data}: too few training images for one update of {cfg.batch_size}")
        self.threads = speed.compute_threads(cfg.threads)  # after the loaders: importing ffcv set 1
        # before the schedule, which spans the epochs; a resume kept the first start's choice and its record
        self.budget = saved.get("time_budget") if kept else None
        if saved is None and cfg.time_budget_min:
            self.budget = budget.choose(self, self.started)
            self.budget.setdefault("most_epochs", cfg.epochs)  # what a resume compares (runfolder.budget_chose_epochs)
            self.cfg = cfg = dataclasses.replace(cfg, epochs=self.budget["epochs"])
        self.schedule = build_schedule(self.optimizer, cfg, self.updates_per_epoch,
                                       budget.total_updates(self.budget, cfg.epochs, self.updates_per_epoch))
        self._last_batch = None

        self.mfu = MFU(model.config, self.num_classes, self.device, self.precision, self.dist.world_size)
        self.start_epoch, self.updates, self.best_top1 = 0, 0, -1.0
        self.stats, self.update_times, self._fitted_sizes = UpdateStats(self.device), [], set()
        self.train_hits = torch.zeros(2, dtype=torch.int64, device=self.device)  # correct, seen (this epoch)
        if saved is not None:
            self._restore(saved)
        elif overwrite and self.dist.is_main:  # as late as possible: a failed start loses nothing
            runfolder.clear(self.out)
        self.log = RunLog(self.out, self.dist.is_main, self.start_epoch,
                          f"{model_title(model.config)} on {Path(cfg.data).name} "
                          f"({cfg.backend}, {self.device.type}, {self.precision})",
                          tensorboard=cfg.tensorboard, resume_update=self.updates)
        if self.dist.is_main:
            info = self._write_config()
            self.log.config(info)
            if info["not_applied_by_backend"]:
                warnings.warn(f"the {cfg.backend} loader does not apply {info['not_applied_by_backend']}, which "
                              "the recipe asks for (README: augmentations by backend)", stacklevel=2)

    def _write_config(self) -> dict:
        info = self.describe()
        (self.out / "config.yaml").write_text(safeyaml.dumps(info))  # no aliases: read back by safeyaml
        return info

    # -- data -----------------------------------------------------------------------------
    def _loader(self, split: str, size: int, **extra):
        cfg = self.cfg
        return make_loader(cfg.backend, cfg.data, split, batch_size=self.micro_batch * (1 if split == "train" else 2),
                           image_size=size, device=str(self.device), dtype=speed.LOADER_DTYPE[self.precision],
                           rank=self.dist.rank, world_size=self.dist.world_size, workers=cfg.workers,
                           seed=cfg.seed, imagefolder=cfg.imagefolder, num_classes=self.num_classes,
                           **{"crop_ratio": cfg.crop_ratio, **cfg.loader_options, **extra})

    def train_loader(self, size: int):
        """One loader per resolution (progressive resizing visits a few), kept for reuse."""
        if size not in self._train_loaders:
            if self.cfg.backend == "resident":  # each holds the whole split on the device at its size: keep one
                self._train_loaders.clear()
            cfg = self.cfg
            self._train_loaders[size] = self._loader(
                "train", size, last_batch="drop", scale=cfg.crop_scale, hflip=cfg.hflip,
                rand_augment=cfg.rand_augment)
        return self._train_loaders[size]

    def describe(self) -> dict:
        # any train loader says what it applies (the sizes differ only in size); build one only if none is
        loader = next(iter(self._train_loaders.values()), None) or self.train_loader(image_size_at(self.cfg, 0))
        wanted = {"rand-augment": bool(self.cfg.rand_augment)}
        missing = [k for k, on in wanted.items() if on and k not in loader.augmentations]
        return {"config": self.cfg.to_dict(), "device": str(self.device), "host_cpu": cpu_summary(),
                "precision": self.precision, "channels_last": self.channels_last, "channels_last_timings_s": self.format_timings,
                "cudnn_benchmark": self.cudnn_benchmark, "mfu_peak": self.mfu.source, "world_size": self.dist.world_size,
                "micro_batch": self.micro_batch, "accum_steps": self.accum_steps,
                "micro_batch_retries": self.micro_batch_retries, "peak_lr": self.lr,
                "updates_per_epoch": self.updates_per_epoch, "time_budget": self.budget,
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
                with speed.autocast(self.precision, self.device), self.compile_timer:
                    logits = self.net(x)
                loss = self.augment.loss(logits.float(), y)
                with self.compile_timer:  # the backward graph compiles at the first backward
                    self.scaler.scale(loss / k).backward()
            if not y.is_floating_point():  # hard labels (no mixup/cutmix): training accuracy means something
                self.train_hits[0] += (logits.detach().argmax(1) == y).sum()
                self.train_hits[1] += len(y)
            total += loss.detach()
        return total / k

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Step, or skip on the device where the loss or the gradients are non-finite on any rank.
        Nothing here waits for the device; `self.stats` records the update."""
        opt, scaler = self.optimizer, self.scaler
        scale = None
        if scaler.is_enabled():
            scaler.unscale_(opt)  # the true gradients, for their norm and the clip
            scale = scaler._get_scale_async().clone()  # the scale this update ran with (no sync)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad or math.inf)
        nonfinite = self.dist.max_((~torch.isfinite(loss.detach())).float())
        bad = torch.maximum(nonfinite, (~torch.isfinite(grad_norm)).float())
        if scaler.is_enabled():  # a non-finite loss gives non-finite gradients: the scaler skips
            scaler.step(opt)
            scaler.update()
            scaler_skipped = (scaler._get_scale_async() < scale).float() * (1 - nonfinite)
        else:
            opt.grad_scale, opt.found_inf = None, bad
            opt.step()
            del opt.grad_scale, opt.found_inf
            nonfinite, scaler_skipped = bad, torch.zeros_like(bad)
        opt.zero_grad(set_to_none=True)
        self.updates += 1
        self.schedule.step_update(self.updates)
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
        self.stats.add(loss, grad_norm, nonfinite, scaler_skipped, scale)

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- epochs -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        cfg, size = self.cfg, budget.size_at(self, epoch)
        loader = self.train_loader(size)
        loader.set_epoch(epoch)
        self.net.train()
        self.stats.new_epoch()
        self.train_hits.zero_()
        n = budget.epoch_updates(self.budget, epoch, cfg.epochs, self.updates_per_epoch)  # a budget may cut the last
        progress = Progress(epoch, cfg.epochs, n, self.dist.is_main, cfg.progress_every_s)
        start = window_start = time.perf_counter()
        window, waited, out_of_memory, batches = 0, 0.0, None, iter(loader)
        speed.compute_threads(cfg.threads)  # ffcv's iter() resets torch's threads to its workers
        epoch_waited, micro = 0.0, None
        try:
            for i in range(n):
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(self.accum_steps)]
                stall = time.perf_counter() - t0  # the loop waiting for the loader
                waited, epoch_waited = waited + stall, epoch_waited + stall
                try:
                    self.optimizer_step(self.forward_backward(micro))
                except torch.cuda.OutOfMemoryError as e:
                    if not self._may_retry(size):
                        raise
                    out_of_memory = str(e).splitlines()[0] if str(e) else "out of memory"
                    break  # retried below, once the except has freed the failed update's frames
                self._fitted_sizes.add(size)
                window += 1
                progress.advance()
                logged = self.updates % cfg.log_every == 0
                line = i == 0 or logged or progress.overdue()
                if line or i == n - 1:  # the only host syncs
                    stats = self._read(epoch, size, window, window_start, waited, logged)
                    progress.show(i + 1, fields(stats["loss"], self._lr(), stats["images_per_s"],
                                                stats["data_wait_share"]), line)
                    window, waited, window_start = 0, 0.0, time.perf_counter()
        finally:
            progress.close()
            close = getattr(batches, "close", None)  # an abandoned epoch frees its loader's threads
            if close is not None:
                close()
        if out_of_memory is not None:
            self._halve_micro_batch(size, out_of_memory)
            return self.train_epoch(epoch)
        elapsed = time.perf_counter() - start
        self._last_batch = micro[-1] if micro else None  # for the loader-free rate (fit)
        # one all-reduce and one host read for the epoch's sums (train top-1: hard labels only)
        sums = torch.cat([torch.tensor([stats["loss_sum"], stats["updates_ok"]], dtype=torch.float64,
                                       device=self.device), self.train_hits.double()])
        loss_sum, updates, correct, seen = self.dist.sum_(sums).tolist()
        return {"train_loss": loss_sum / max(1, updates), "train_top1": 100 * correct / seen if seen else None,
                "images_per_s": n * cfg.batch_size * self.dist.world_size / elapsed,
                "epoch_time_s": elapsed, "data_wait_share": epoch_waited / elapsed, "image_size": size,
                "nonfinite_skipped": int(stats["nonfinite"]), "scaler_skipped": int(stats["scaler_skipped"])}

    def _read(self, epoch: int, size: int, window: int, window_start: float, waited: float, logged: bool) -> dict:
        """Read the device's statistics (waits for it), time the window of updates since the last
        read (adds `images_per_s`, `data_wait_share`), stop on a non-finite streak, and write a
        step record where one is due."""
        stats = self.stats.read()
        seconds = time.perf_counter() - window_start  # after the read: the device's queued work counts
        check_streaks(stats, self.cfg.max_nonfinite, f"update {self.updates}, precision {self.precision}, "
                      f"lr {self._lr():.3g}")
        self.update_times.append(seconds / window)  # per update, averaged over the window
        rate = self.cfg.batch_size * self.dist.world_size / self.update_times[-1]
        stats["images_per_s"], stats["data_wait_share"] = rate, waited / seconds if seconds > 0 else None
        if logged:
            self.log.step({"epoch": epoch + 1, "update": self.updates, "loss": stats["loss"], "lr": self._lr(),
                           "grad_norm": stats["grad_norm"], "scale": stats["scale"], "images_per_s": rate,
                           "mfu": self.mfu(rate, size), "image_size": size,
                           "data_wait_share": stats["data_wait_share"]})
        return stats

    def _may_retry(self, size: int) -> bool:
        """Out of memory in the first update at a resolution: retry with half the micro-batch.
        Not under DDP (the other ranks wait in a collective) nor below one sample."""
        return size not in self._fitted_sizes and not self.dist.enabled and self.micro_batch % 2 == 0

    def _halve_micro_batch(self, size: int, error: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():  # forget a half-done step (unscale_ called, step not taken)
            self.scaler._per_optimizer_states.clear()
        old = self.micro_batch
        self.micro_batch, self.accum_steps = old // 2, self.accum_steps * 2
        self.micro_batch_retries.append({"image_size": size, "from": old, "micro_batch": self.micro_batch,
                                         "accum_steps": self.accum_steps, "error": error})
        self._train_loaders.clear()  # rebuilt at the new batch size (their memory pools go too)
        self.val_loader = self._loader("val", self.cfg.val_image_size or self.cfg.image_size)
        speed.empty_cache(self.device)
        # len(loader) // accum is unchanged: floor(floor(n / (b/2)) / 2k) == floor(floor(n / b) / k)
        warnings.warn(f"out of memory at micro-batch {old} ({size} px; {error}): retrying with micro-batch "
                      f"{self.micro_batch} x {self.accum_steps} accumulation steps (recorded in config.yaml)",
                      stacklevel=2)
        if self.dist.is_main:
            self._write_config()

    def evaluate(self, net: torch.nn.Module | None = None) -> dict:
        """fp32 loss, top-1 and top-5 on the whole val split, all ranks (fastmix.train.evaluate).
        The uncompiled, unwrapped model by default: no recompiles for eval mode, the 2x batch or
        the partial last batch, and no DDP forward, whose buffer broadcast would hang on ranks
        that hold different numbers of val batches."""
        net = net or self.model
        self.dist.broadcast_buffers(net)  # every rank evaluates rank 0's model (the one it saves)
        return evaluate(net, self.val_loader, self.device, self.precision, self.channels_last, self.dist,
                        self.cfg.threads)

    def fit(self, budget_s: float | None = None) -> dict:
        """Train the remaining epochs; with `budget_s`, stop after the first epoch that ends past it
        (bench.tta). Each epoch's row holds `wall_s`: seconds since this fit() began (a resumed run
        counts from its resume), evaluation and checkpoints included, the loader-cost timing not."""
        start, measuring, epoch = time.perf_counter(), 0.0, self.start_epoch
        while epoch < self.cfg.epochs:  # a time budget re-plans the epochs after the first at each size
            self.train_loader(budget.size_at(self, epoch))  # a new size's loader is built outside its timing
            t_epoch = time.perf_counter()
            row = {"epoch": epoch + 1, **self.train_epoch(epoch), "lr": self._lr()}
            t0 = time.perf_counter()
            row.update(loadercost.of_epoch(self, row["images_per_s"]))  # no loader running: what it cost
            measuring += time.perf_counter() - t0  # a measurement, not training: left out of wall_s
            t1 = time.perf_counter()
            row.update(self.evaluate())
            row["mfu"] = self.mfu(row["images_per_s"], row["image_size"])
            if self.ema is not None:
                row["ema_top1"] = self.evaluate(self.ema.module)["top1"]
            best = row["top1"] > self.best_top1
            self.best_top1 = max(self.best_top1, row["top1"])
            row["wall_s"] = time.perf_counter() - start - measuring
            self.log.epoch(row, self.cfg.epochs, self.updates)
            self._save(epoch, best)
            # the evaluation, the log and the checkpoint timed as they are: each epoch pays them
            if budget.after_epoch(self, epoch, t1 - t_epoch, time.perf_counter() - t1):
                if self.dist.is_main:
                    self._write_config()  # config.yaml names the new plan
                self._save(epoch, False)  # and last.pt: a resume continues the re-planned run
            if budget_s is not None and row["wall_s"] >= budget_s:
                break
            epoch += 1
        summary = self.summary()
        self.log.summary(summary)
        return summary

    def summary(self) -> dict:
        rows = self.log.rows() if self.dist.is_main else []
        times = self.update_times
        steady = float(np.median(times[1:])) if len(times) > 1 else None
        return {**self.describe(), "epochs": rows, "best_top1": self.best_top1, "updates": self.updates,
                # update times are per update, averaged between host reads (see train_epoch)
                "first_update_s": times[0] if times else None, "median_update_s": steady,
                # measured around the compilations themselves (speed.CompileTimer)
                "compile_s": self.compile_timer.seconds if self.cfg.compile else None,
                "compilations": self.compile_timer.compilations if self.cfg.compile else None,
                "time_budget_used": budget.used(self.budget, self.updates, len(rows), time.time() - self.started)}

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, epoch: int, best: bool) -> None:
        rng = self.dist.gather(checkpoint.rng_state())  # collective: every rank calls it
        if self.dist.is_main:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(),
                     "ema": self.ema.state_dict() if self.ema is not None else None,
                     "epoch": epoch, "updates": self.updates, "best_top1": self.best_top1,
                     "update_times": self.update_times, "rng": rng, "config": self.cfg.to_dict(),
                     "time_budget": self.budget, "classes": self.class_ids}
            checkpoint.save(self.out / "last.pt", state)
            if best:
                shutil.copyfile(self.out / "last.pt", self.out / "best.tmp")
                (self.out / "best.tmp").replace(self.out / "best.pt")
        self.dist.barrier()

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"{self.out / 'last.pt'}: its weights do not fit {self.cfg.model} "
                             f"({str(e).splitlines()[0]})") from None
        # the schedule is not read back: rebuilt from the config, it is stepped to `updates` below
        checkpoint.restore_states(self, state, self.out / "last.pt")
        self.start_epoch, self.updates = state["epoch"] + 1, state["updates"]
        self.best_top1, self.update_times = state["best_top1"], list(state.get("update_times", []))
        self.schedule.step_update(self.updates)
