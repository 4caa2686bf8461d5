"""Updates that fit a wall-clock budget (`time_budget_min`): planned before training from an update
and an evaluation timed on this machine, re-planned after the first epoch at each image size from
what that epoch really took.

A recipe tuned on one machine ran twice as long on another: tiny64's 7 epochs took 25 minutes
on a 2-core CPU with native bf16 (AVX512-BF16) and would take about an hour on a 2-core AVX2
one, which has to compute in fp32. What a budget buys is a number of updates (budget x speed), so
the plan is in updates: as many whole epochs as fit (up to the recipe's `epochs`), then, where
time is left and the recipe allows more epochs, a last epoch cut to the updates that still fit.
The one-cycle schedule and the progressive sizes span exactly the planned updates.

The first plan errs slow (a batch in memory, +10 % for the loader; runs ended 2-5 minutes early).
One re-plan after the first epoch was not enough: the 40 px epoch ran 1.07x its timing but the
56 px ones 0.85x, and a 29.5-minute run ended 3.6 minutes early. So every size re-plans once, after
its first epoch: each size's timing is scaled by its own measured/predicted ratio (a size not yet
run by the ratio of the largest one run), the evaluation and checkpoint count as measured, against
the seconds left of the budget counted from the start of the command. Sizes never go back down:
a re-plan that buys more epochs stretches the ramp only over the epochs still to come. The plan
is saved with the run and a resume keeps it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from fastmix.devices.allocator import keep_batch_buffers

from . import loadercost, speed
from .optim import build_schedule
from .recipe import image_size_at

# A real loader's cost over a batch in memory, and this timing's error: tiny64's epochs ran 4 %
# (batch 128) and 18 % (batch 64) longer than the updates timed here. The re-plan replaces it
# with the first epoch's measured ratio.
LOADER_MARGIN = 0.10
LOADER_COST_UPDATES = 6  # the trainer's per-epoch loader-free timing (warm-up + 5 updates)
# After the re-plan: the spread of later epochs around the first one's rate (the 2-core VMs drifted
# a few % within a run), and the seconds the command needs after its last checkpoint (summary, exit).
REPLAN_SLACK = 0.03
END_S = 5.0
# A last, cut epoch shorter than this share of an epoch is not worth its evaluation
MIN_LAST_EPOCH = 0.2


def epochs_within(budget_s: float, most: int, epoch_s: Callable[[int, int], float], eval_s: float) -> int:
    """The most epochs E <= `most` whose epochs (epoch_s(e, E): seconds of epoch e when the run has
    E epochs) and E evaluations fit `budget_s`; at least 1."""
    fits = [e for e in range(1, most + 1) if sum(epoch_s(k, e) for k in range(e)) + e * eval_s <= budget_s]
    return max(fits, default=1)


def updates_within(budget_s: float, most: int, per_epoch: int, update_s: Callable[[int, int], float],
                   eval_s: float, done: int = 0, done_s: float = 0.0) -> tuple[int, int]:
    """(epochs E, updates of epoch E) for the most updates that fit `budget_s`: whole epochs first,
    then a cut last epoch where E < `most`. update_s(k, E): seconds an update of epoch k takes in a run
    of E epochs, its loader-free timing included; epochs before `done` are over and took `done_s`."""
    def cost(k: int, e: int, n: int) -> float:
        return n * update_s(k, e) + LOADER_COST_UPDATES * update_s(k, e) + eval_s
    whole = done
    for e in range(max(done, 1), most + 1):
        if done_s + sum(cost(k, e, per_epoch) for k in range(done, e)) <= budget_s:
            whole = e
    if whole >= most:
        return max(whole, 1), per_epoch
    e = whole + 1  # one more, cut: what is left after the whole ones, under an (e)-epoch schedule
    left = budget_s - done_s - sum(cost(k, e, per_epoch) for k in range(done, e - 1)) - cost(e - 1, e, 0)
    n = min(per_epoch, int(left / update_s(e - 1, e))) if left > 0 else 0
    if n >= max(1, MIN_LAST_EPOCH * per_epoch):
        return e, n
    return max(whole, 1), per_epoch


def epoch_updates(record: dict | None, epoch: int, epochs: int, per_epoch: int) -> int:
    """Updates in epoch `epoch` (from 0): all of an epoch, but the last one's planned cut."""
    if record and epoch == epochs - 1:
        return min(per_epoch, int(record.get("last_epoch_updates") or per_epoch))
    return per_epoch


def total_updates(record: dict | None, epochs: int, per_epoch: int) -> int:
    return sum(epoch_updates(record, k, epochs, per_epoch) for k in range(epochs))


def measure(trainer) -> tuple[dict, float]:
    """({size: seconds of one update}, seconds of one evaluation): an update timed at every size the
    schedule can visit (loader-free, a batch in memory) and an evaluation's forward passes. The
    weights are left as they were."""
    cfg, device = trainer.cfg, trainer.device
    fmt = torch.channels_last if trainer.channels_last else torch.contiguous_format
    dtype = getattr(torch, speed.LOADER_DTYPE[trainer.precision])

    def batch(n: int, size: int):
        x = torch.randn(n, 3, size, size, device=device).to(dtype).contiguous(memory_format=fmt)
        return x, torch.randint(0, trainer.num_classes, (n,), device=device)
    sizes = sorted({image_size_at(cfg, k, e)
                    for e in range(1, cfg.epochs + 1) for k in range(e)})
    loss = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def update(size: int) -> float | None:
        return loadercost.loader_free_seconds(trainer.net, trainer.model, trainer.optimizer, batch(trainer.micro_batch, size),
                                              trainer.accum_steps, trainer.precision, device, loss,
                                              trainer.channels_last, cfg.clip_grad, steps=3)
    if device.type == "cpu":  # as the run will have it from its first batch (loaders/common.py)
        keep_batch_buffers()  # else every large temporary is mmap'd and zeroed: 1.7-1.9 s against 1.0-1.2
    update_s = {s: (update(s), update(s))[1] for s in sizes}  # twice, the second kept: the first is cold
    if any(v is None for v in update_s.values()):
        raise ValueError("time_budget_min: no device memory left to time an update")
    val_size = cfg.val_image_size or cfg.image_size
    x, _ = batch(trainer.micro_batch * 2, val_size)
    trainer.model.eval()  # what Trainer.evaluate runs: uncompiled, unwrapped
    with torch.no_grad():
        forward_s = speed.median_seconds(lambda: _forward(trainer, x), device, 3, warmup=2)
    trainer.model.train()
    eval_s = len(trainer.val_loader) * forward_s * (2 if trainer.ema is not None else 1)  # EMA's weights too
    return update_s, eval_s


def _forward(trainer, x):
    with speed.autocast(trainer.precision, trainer.device):
        trainer.model(x)


def _sizes(cfg, epochs: int, done: list[int] = ()) -> list[int]:
    """Each epoch's size in a run of `epochs`: the sizes of the epochs `done`, then the ramp over
    the rest, never below the last size run."""
    floor = done[-1] if done else 0
    return list(done) + [max(floor, image_size_at(cfg, k, epochs)) for k in range(len(done), epochs)]


def size_at(trainer, epoch: int) -> int:
    """The size epoch `epoch` trains at: the plan's where a budget planned it."""
    sizes = (trainer.budget or {}).get("sizes")
    return int(sizes[epoch]) if sizes and epoch < len(sizes) else image_size_at(trainer.cfg, epoch)


def _describe(cfg, trainer, epochs: int, last: int, done: list[int] = ()) -> dict:
    """What a plan buys: epochs, updates, images, the size of each epoch and the model's shape."""
    per_epoch = trainer.updates_per_epoch
    updates = (epochs - 1) * per_epoch + last
    model = trainer.model.config if hasattr(trainer.model, "config") else None
    return {"epochs": epochs, "last_epoch_updates": last, "updates_per_epoch": per_epoch, "updates": updates,
            "images": updates * cfg.batch_size * trainer.dist.world_size, "sizes": _sizes(cfg, epochs, done),
            "model": {k: getattr(model, k) for k in ("dim", "depth", "kernel", "patch") if hasattr(model, k)}}


def plan(trainer, budget_s: float) -> dict:
    """The first plan: measure(), then the most updates that fit what is left of `budget_s` once the
    timing's own seconds are off it."""
    started = time.monotonic()
    cfg = trainer.cfg
    update_s, eval_s = measure(trainer)
    budget_s -= time.monotonic() - started
    per_epoch = trainer.updates_per_epoch

    def seconds(k: int, e: int) -> float:
        return update_s[image_size_at(cfg, k, e)] * (1 + LOADER_MARGIN)
    epochs, last = updates_within(budget_s, cfg.epochs, per_epoch, seconds, eval_s)
    record = {"epochs": epochs, "last_epoch_updates": last}
    planned_s = sum((epoch_updates(record, k, epochs, per_epoch) + LOADER_COST_UPDATES) * seconds(k, epochs) + eval_s
                    for k in range(epochs))
    return {**_describe(cfg, trainer, epochs, last), "most_epochs": cfg.epochs, "planned_s": round(planned_s, 1),
            "budget_total_s": round(60 * cfg.time_budget_min, 1), "budget_s": round(budget_s, 1),
            "update_s": {str(k): round(v, 4) for k, v in update_s.items()}, "eval_s": round(eval_s, 3)}


def timed_sizes(update_s: dict) -> str:
    """"0.24 s at 40 px, 0.43 s at 56 px": plan()'s update timings, as the console and the report say them."""
    return ", ".join(f"{float(v):.2f} s at {k} px" for k, v in update_s.items())


def bought(record: dict) -> str:
    """"13 epochs + 312 updates = 9,684 updates (619,776 images) at 40-56 px, ConvMixer dim 256 depth 6 ..."."""
    epochs, last = record["epochs"], record["last_epoch_updates"]
    whole = f"{epochs} epochs" if last == record["updates_per_epoch"] else f"{epochs - 1} epochs + {last} updates"
    sizes = sorted(set(record["sizes"]))
    size = f"{sizes[0]} px" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]} px"
    model = " ".join(f"{k} {v}" for k, v in record.get("model", {}).items())
    return f"{whole} = {record['updates']:,} updates ({record['images']:,} images) at {size}" + \
        (f", ConvMixer {model}" if model else "")


def choose(trainer, started: float) -> dict:
    """plan() for what is left of the budget since `started` (time.time() at the start of the
    command), agreed by every rank (the fewest updates), and said."""
    cfg = trainer.cfg
    chosen = plan(trainer, 60 * cfg.time_budget_min - (time.time() - started))
    chosen = _agree(trainer, cfg, chosen)
    if trainer.dist.is_main:
        print(f"time budget {cfg.time_budget_min:g} min: {bought(chosen)} fit (an update takes "
              f"{timed_sizes(chosen['update_s'])}; an evaluation {chosen['eval_s']:.0f} s)", flush=True)
        unused = chosen["budget_s"] - chosen["planned_s"]
        if chosen["epochs"] == cfg.epochs and unused > max(60.0, 0.1 * chosen["budget_s"]):
            # a cap the budget outgrows is said, not silently kept: the recipe was tuned below it
            print(f"time budget: the recipe's {cfg.epochs} epochs take about {chosen['planned_s'] / 60:.0f} min of "
                  f"{chosen['budget_s'] / 60:.0f}; the rest is not used (a longer run: --set epochs=N; "
                  "the recipe's header says what its cap rests on)", flush=True)
    return chosen


def _agree(trainer, cfg, record: dict) -> dict:
    """Every rank runs the plan of the rank that can afford the fewest updates."""
    fewest = min(trainer.dist.gather(record["updates"]))
    if fewest == record["updates"]:
        epochs, last = record["epochs"], record["last_epoch_updates"]
    else:
        per = trainer.updates_per_epoch
        epochs, last = -(-fewest // per), fewest - per * (-(-fewest // per) - 1)
    return {**record, **_describe(cfg, trainer, epochs, last, record["sizes"][:record.get("done_epochs", 0)])}


def replan(trainer, measured: dict, started: float, epoch: int = 0) -> dict:
    """After epoch `epoch` (from 0), the first at its size: `measured` holds its seconds ("train_s":
    the loop and the loader-free timing, "eval_s": evaluation, log and checkpoint). That size's
    timing is scaled by its measured/planned ratio, a size not run yet by the largest run size's,
    each later epoch by its size's; the evaluation counts as measured. Returns the new record (the
    first plan kept under "first_plan", each re-plan under "replans") and says it."""
    cfg, record = trainer.cfg, trainer.budget
    per_epoch, planned_epochs = trainer.updates_per_epoch, cfg.epochs
    if planned_epochs == 1 and record["last_epoch_updates"] < per_epoch:
        # the first epoch was cut to the budget: a run whose later epochs were whole would count it
        # whole (total_updates, the schedule, the sizes); the budget held less than an epoch anyway
        return {**record, "replan": {"kept": "the first plan cut the only epoch"}}
    update_s = {int(k): float(v) for k, v in record["update_s"].items()}
    sizes, done = record.get("sizes") or _sizes(cfg, planned_epochs), epoch + 1
    size, n = int(sizes[epoch]), epoch_updates(record, epoch, planned_epochs, per_epoch)
    predicted = update_s[size] * (n + LOADER_COST_UPDATES)
    ratios = {**{int(k): v for k, v in record.get("ratios", {}).items()}, size: measured["train_s"] / predicted}
    left = 60 * cfg.time_budget_min - (time.time() - started) - END_S

    def seconds(k: int, e: int) -> float:
        s = max(size, image_size_at(cfg, k, e))
        return update_s[s] * _ratio(ratios, s) * (1 + REPLAN_SLACK)
    most = int(record.get("most_epochs", cfg.epochs))
    epochs, last = updates_within(left, most, per_epoch, seconds, measured["eval_s"], done=done)
    if epochs == done:  # this epoch ends the run: nothing is cut from it afterwards
        last = n
    this = {"after_epoch": done, "size": size, "measured_train_s": round(measured["train_s"], 1),
            "planned_train_s": round(predicted, 1), "ratio": round(ratios[size], 3),
            "eval_s": round(measured["eval_s"], 1), "left_s": round(left, 1)}
    new = {**record, **_describe(cfg, trainer, epochs, last, [int(s) for s in sizes[:done]]),
           "done_epochs": done, "ratios": {str(k): round(v, 4) for k, v in ratios.items()},
           "replan": record.get("replan", this), "replans": [*record.get("replans", []), this],
           "first_plan": record.get("first_plan") or {k: record[k] for k in ("epochs", "last_epoch_updates", "updates")}}
    new = _agree(trainer, cfg, new)
    this["updates"] = new["updates"]  # the dict "replans" (and a first "replan") hold
    if trainer.dist.is_main:
        print(f"time budget re-planned after epoch {done} (its {size} px updates took {ratios[size]:.2f}x "
              f"the planned time): {bought(new)}", flush=True)
    return new


def _ratio(ratios: dict[int, float], size: int) -> float:
    """A size's measured/planned ratio: its own, else the largest run size's below it (else the
    largest run size's)."""
    return ratios[max((r for r in ratios if r <= size), default=max(ratios))]


def trim_last(trainer, epoch: int, train_s: float, eval_s: float) -> dict:
    """After epoch `epoch` (from 0), the one before the last: the last epoch's cut from the time left,
    at the rate this epoch ran where the last one trains at its size (else the last size's timing
    by its ratio). Epochs drift after the re-plan at their size (the 45-minute run's 56 px epochs
    ran up to 12 % slower than its first one and ended 11 s past the budget); here the time they
    lost, or gained, moves the last epoch's end. The epoch count stays, so the schedule still ends
    where the run does; the cut is at least one update and at most a whole epoch."""
    cfg, record, per_epoch = trainer.cfg, trainer.budget, trainer.updates_per_epoch
    done, sizes = epoch + 1, [int(s) for s in record["sizes"]]
    update = train_s / (epoch_updates(record, epoch, cfg.epochs, per_epoch) + LOADER_COST_UPDATES)
    if sizes[done] != sizes[epoch]:  # a new size: its timing by its ratio, times this size's drift since
        ratios = {int(k): float(v) for k, v in record.get("ratios", {"0": 1.0}).items()}
        timed = {int(k): float(v) for k, v in record["update_s"].items()}
        drift = update / (timed[sizes[epoch]] * _ratio(ratios, sizes[epoch]))
        update = timed[sizes[done]] * _ratio(ratios, sizes[done]) * drift
    left = 60 * cfg.time_budget_min - (time.time() - trainer.started) - END_S - eval_s
    last = max(1, min(per_epoch, int(left / (update * (1 + REPLAN_SLACK))) - LOADER_COST_UPDATES))
    this = {"after_epoch": done, "trim": True, "update_s": round(update, 4), "left_s": round(left, 1)}
    new = _agree(trainer, cfg, {**record, **_describe(cfg, trainer, cfg.epochs, last, sizes[:done]),
                                "done_epochs": done, "replans": [*record.get("replans", []), this]})
    this["updates"] = new["updates"]
    if trainer.dist.is_main:
        print(f"time budget: the last epoch cut to {new['last_epoch_updates']} updates after epoch {done} "
              f"({left:.0f} s left, {update:.3f} s an update): {bought(new)}", flush=True)
    return new


def used(record: dict | None, updates: int, epochs: int, wall_s: float) -> dict | None:
    """The plan against what the run did: for summary.json."""
    if not record:
        return None
    # .get: a record from before budgets planned updates (a resumed older run) has epochs only
    return {"planned_updates": record.get("updates"), "updates": updates, "planned_epochs": record.get("epochs"),
            "epochs": epochs, "budget_s": record.get("budget_total_s"), "wall_s": round(wall_s, 1)}


def after_epoch(trainer, epoch: int, train_s: float, eval_s: float) -> bool:
    """Re-plan at the end of a budgeted run's first epoch at each size: the epochs, the cut of the
    last one, the sizes still to come and the schedule that spans them; at the end of the epoch
    before the last, only the last one's cut (trim_last). `eval_s`: the epoch's evaluation, log and
    checkpoint. True where it re-planned (the caller saves the new plan)."""
    record = trainer.budget
    if not record or "update_s" not in record or epoch >= trainer.cfg.epochs - 1:
        return False
    if trainer.start_epoch > 0:  # a resumed run keeps its plan: its `started` is the resume's, the
        return False             # seconds spent before it are not known here
    # (a kill between the epoch's checkpoint and the re-plan's leaves the old plan; kept, as a resume)
    sizes = record.get("sizes") or _sizes(trainer.cfg, trainer.cfg.epochs)
    first_at_size = not (epoch and sizes[epoch] == sizes[epoch - 1])
    if first_at_size and str(sizes[epoch]) not in record.get("ratios", {}) and not (epoch == 0 and "replan" in record):
        trainer.budget = replan(trainer, {"train_s": train_s, "eval_s": eval_s}, trainer.started, epoch)
    elif epoch == trainer.cfg.epochs - 2 and "sizes" in record:
        trainer.budget = trim_last(trainer, epoch, train_s, eval_s)
    else:
        return False
    trainer.cfg = dataclasses.replace(trainer.cfg, epochs=trainer.budget["epochs"])
    trainer.schedule = build_schedule(trainer.optimizer, trainer.cfg, trainer.updates_per_epoch,
                                      total_updates(trainer.budget, trainer.cfg.epochs, trainer.updates_per_epoch))
    trainer.schedule.step_update(trainer.updates)
    return True
