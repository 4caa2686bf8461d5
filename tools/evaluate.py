#!/usr/bin/env python
"""Evaluate weights on a converted split: top-1, top-5, fp32 loss, images/s.

Weights: a fastmix checkpoint (best.pt, last.pt; --ema for its EMA copy), a timm state_dict
(.pth / .safetensors, with --model VARIANT), or timm:<name> (timm's pretrained download; needs
internet). A 1000-way ImageNet-1k head on an ImageNet subset is mapped onto the subset's WNIDs
(classes.json). Preprocessing is the loaders' val path (resize the shorter side to
size / crop-ratio, center crop), through any loader backend.

Examples:
  tools/evaluate.py --checkpoint runs/latest/best.pt --data data/cifar10       # the newest tools/train.py run
  tools/evaluate.py --checkpoint convmixer_768_32.pth --model convmixer_768_32 --data data/imagenet100
  tools/evaluate.py --checkpoint timm:convmixer_1536_20.in1k --data data/imagenet1k --crop-ratio 0.96

A fastmix checkpoint records the classes it was trained on (classes.json's WNIDs, in label order):
data of other classes, even as many, is refused in one line unless --other-classes is given (for
transfer). Its saved config, and the config.yaml beside it, are checked as --set values are: a
damaged value is one line naming the file and the key.

A checkpoint is read as tensors only (torch.load weights_only): a file that would need to run code
to load is refused, naming it. --trust-checkpoint unpickles it fully (it can run any code it
carries): only for a file whose source you trust, e.g. a training checkpoint holding Python objects.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.train import cli  # noqa: E402


def parse_args(argv=None):
    p = cli.parser("evaluate", __doc__)
    p.add_argument("--checkpoint", required=True, help="fastmix .pt, timm .pth/.safetensors, or timm:<name>")
    p.add_argument("--data", required=True, help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--split", default="val", help="which split of --data")
    p.add_argument("--model", help="registered variant for a plain state_dict (e.g. convmixer_768_32)")
    p.add_argument("--ema", action="store_true", help="a fastmix checkpoint's EMA weights")
    p.add_argument("--backend", help="loader backend (default: the checkpoint's, else pil-wds)")
    p.add_argument("--other-classes", action="store_true",
                   help="score a fastmix checkpoint on data of other classes than it was trained on (transfer)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint fully, which can run code it carries (trusted files only)")
    p.add_argument("--image-size", type=cli.positive, help="default: the checkpoint's val size, else 224")
    p.add_argument("--crop-ratio", type=ratio, help="default: the checkpoint's, else 224/256")
    p.add_argument("--batch-size", type=cli.positive, help="default: the trainer's val batch, else 128")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default: the checkpoint's, else auto")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=cli.non_negative, default=4, help="loader processes")
    p.add_argument("--json", help="also write the result here")
    return p.parse_args(argv)


def main(argv=None) -> dict | int:
    a = parse_args(argv)
    from fastmix.data.manifest import read_classes
    from fastmix.train.evaluate import evaluate
    from fastmix.train.weights import load_weights
    try:
        classes = read_classes(a.data)
        model, info = load_weights(a.checkpoint, classes, a.model, a.ema, trust=a.trust_checkpoint,
                                   other_classes=a.other_classes)
    except (FileNotFoundError, ValueError) as e:
        return cli.fail("evaluate", e)
    cfg = info.pop("config", {})
    try:
        device, precision, channels_last, loader = prepare(a, cfg)
    except (FileNotFoundError, ValueError) as e:
        return cli.fail("evaluate", e)
    result = {**info, "split": a.split, "image_size": loader.cfg.image_size, "crop_ratio": loader.cfg.crop_ratio,
              "backend": a.backend or cfg.get("backend", "pil-wds"), "precision": precision,
              **evaluate(model.to(device, memory_format=torch_format(channels_last)), loader, device, precision,
                         channels_last)}
    print(f"{a.checkpoint}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['eval_loss']:.4f}  "
          f"{result['eval_images']} images at {result['eval_images_per_s']:.0f} img/s  ({result['head']}"
          + (f"; classes: {result['classes']})" if "classes" in result else ")"))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def prepare(a, cfg: dict):
    """Device, precision, memory format and val loader: the flags, else the checkpoint's, else defaults."""
    from fastmix.train import speed
    from loaders import make_loader
    device = speed.resolve_device(a.device)
    precision = speed.resolve_precision(a.precision or cfg.get("precision", "auto"), device)
    channels_last = cfg.get("channels_last", "auto") != "off"
    run_config = Path(a.checkpoint).parent / "config.yaml"  # the trainer's resolved choice, if beside it
    if cfg and run_config.is_file():
        channels_last = resolved_channels_last(run_config, channels_last)
    micro = cfg.get("micro_batch")
    batch = a.batch_size or (2 * (micro if isinstance(micro, int) else micro.get(cfg["model"], 64)) if cfg else 128)
    size = a.image_size or cfg.get("val_image_size") or cfg.get("image_size") or 224
    loader = make_loader(a.backend or cfg.get("backend", "pil-wds"), a.data, a.split, batch_size=batch,
                         image_size=size, device=str(device), workers=a.workers,
                         dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision],
                         crop_ratio=a.crop_ratio or cfg.get("crop_ratio", 224 / 256))
    return device, precision, channels_last, loader


def ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def resolved_channels_last(path: Path, default: bool) -> bool:
    """The memory format the trainer chose, from its config.yaml: read without aliases, its config
    checked as --set values are, channels_last a boolean; anything else one line naming the file."""
    from fastmix import safeyaml
    from fastmix.train.recipe import saved_config
    info = safeyaml.load_mapping(path, "the trainer's config.yaml (a mapping)")
    if "config" in info:
        saved_config(info["config"], f"{path}: config")
    value = info.get("channels_last", default)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: channels_last: expected true or false, got {value!r}")
    return value


def torch_format(channels_last: bool):
    import torch
    return torch.channels_last if channels_last else torch.contiguous_format


if __name__ == "__main__":
    out = main()
    sys.exit(out if isinstance(out, int) else 0)
