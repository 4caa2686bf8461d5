"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: trains a tiny ConvMixer with
gloo DDP and records, per rank, which images it trained on and what its weights ended as."""
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


def main(data: str, out: str) -> None:
    cfg = TrainConfig(data=data, out=out, backend="pil-wds", workers=0, device="cpu", precision="fp32",
                      channels_last="off", model="convmixer_256_8",
                      model_overrides={"dim": 16, "depth": 2, "kernel": 3, "patch": 4},
                      batch_size=4, micro_batch=2, epochs=2, image_size=32, crop_scale=(0.5, 1.0))
    trainer = Trainer(cfg)
    seen: dict[int, list[int]] = {}
    epoch = {"now": 0}
    augment, train_epoch = trainer.augment, trainer.train_epoch

    class Recorder:  # sees each micro-batch as the loader delivered it, before mixup
        loss, names = augment.loss, augment.names

        def __call__(self, x, y):
            seen.setdefault(epoch["now"], []).extend(ids_of(x))
            return augment(x, y)

    def record_epoch(e):
        epoch["now"] = e
        return train_epoch(e)

    trainer.augment, trainer.train_epoch = Recorder(), record_epoch
    trainer.fit()
    params = [p.detach().double().sum().item() for p in trainer.model.parameters()]
    result = {"seen": seen, "params": params, "eval": trainer.evaluate(), "world": trainer.dist.world_size,
              "updates_per_epoch": trainer.updates_per_epoch, "batch_size": cfg.batch_size}
    (Path(out) / f"rank{trainer.dist.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
