"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: trains a tiny ConvMixer with
gloo DDP (accumulation, torch.compile, EMA) and records, per rank, which images it trained on,
its gradients and EMA weights after the first update, its final weights, and every file it
opened for writing in the run's folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402

from conftest import ids_of  # noqa: E402
from fastmix.train import distributed  # noqa: E402
from fastmix.train.recipe import TrainConfig  # noqa: E402
from fastmix.train.trainer import Trainer  # noqa: E402


def fingerprint(tensors) -> list[float]:
    return [float(t.detach().double().abs().sum()) + float(t.detach().double().sum()) for t in tensors]


def main(data: str, out: str, backend: str) -> None:
    written: list[str] = []

    def audit(event, args):  # every open() for writing under the run's folder (torch.save, csv, png ...)
        if event == "open" and isinstance(args[0], str) and args[0].startswith(out):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & 0o3:
                written.append(Path(args[0]).name)
    sys.addaudithook(audit)
    real_save = torch.save  # torch.save opens its file in C++, where the audit hook cannot see it

    def save(obj, f, *args, **kwargs):
        audit("open", (str(f), "wb", 0))
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
    real_compile = torch.compile
    torch.compile = lambda model, **kw: real_compile(model, **{**kw, "backend": backend})
    cfg = TrainConfig(data=data, out=out, backend="pil-wds", workers=0, device="cpu", precision="fp32",
                      channels_last="off", model="convmixer_256_8",
                      model_overrides={"dim": 16, "depth": 2, "kernel": 3, "patch": 4},
                      batch_size=4, micro_batch=2, epochs=2, image_size=32, crop_scale=(0.5, 1.0),
                      rand_augment=None,  # images are identified by their flat colour, which RandAugment changes
                      compile=True, ema=True, ema_decay=0.9)
    trainer = Trainer(cfg)
    seen: dict[int, list[int]] = {}
    first: dict[str, list[float]] = {"ema_start": fingerprint(trainer.ema.module.parameters())}
    epoch = {"now": 0}
    augment, train_epoch, optimizer_step = trainer.augment, trainer.train_epoch, trainer.optimizer_step

    class Recorder:  # sees each micro-batch as the loader delivered it, before mixup
        loss, names = augment.loss, augment.names

        def __call__(self, x, y):
            seen.setdefault(epoch["now"], []).extend(ids_of(x))
            return augment(x, y)

    def record_epoch(e):
        epoch["now"] = e
        return train_epoch(e)

    def record_first_update(loss):
        if "grads" not in first:  # the gradients DDP all-reduced over 2 micro-batches per rank
            first["grads"] = fingerprint(p.grad for p in trainer.model.parameters())
        optimizer_step(loss)
        if "ema" not in first:
            first["ema"] = fingerprint(trainer.ema.module.parameters())

    trainer.augment, trainer.train_epoch, trainer.optimizer_step = Recorder(), record_epoch, record_first_update
    summary = trainer.fit()
    params = [p.detach().double().sum().item() for p in trainer.model.parameters()]
    result = {"seen": seen, "params": params, "eval": trainer.evaluate(), "world": trainer.dist.world_size,
              "updates_per_epoch": trainer.updates_per_epoch, "batch_size": cfg.batch_size, "first": first,
              "written": sorted(set(written)), "compilations": summary["compilations"],
              "ema_end": fingerprint(trainer.ema.module.state_dict().values())}
    sys.addaudithook(lambda *a: None)  # (audit hooks cannot be removed; the result file is outside `out`)
    (Path(out).parent / f"rank{trainer.dist.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:4])
