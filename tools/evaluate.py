#!/usr/bin/env python
"""Evaluate weights on a converted split: top-1, top-5, fp32 loss, images/s.

Weights: a fastmix checkpoint (best.pt, last.pt; --ema for its EMA copy), a timm state_dict
(.pth / .safetensors, with --model VARIANT), or timm:<name> (timm's pretrained download; needs
internet). A 1000-way ImageNet-1k head on an ImageNet subset is mapped onto the subset's WNIDs
(classes.json). Preprocessing is the loaders' val path (resize the shorter side to
size / crop-ratio, center crop), through any loader backend.

Examples:
  tools/evaluate.py --checkpoint runs/cifar10/best.pt --data data/cifar10
  tools/evaluate.py --checkpoint convmixer_768_32.pth --model convmixer_768_32 --data data/imagenet100
  tools/evaluate.py --checkpoint timm:convmixer_1536_20.in1k --data data/imagenet1k --crop-ratio 0.96
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fastmix .pt, timm .pth/.safetensors, or timm:<name>")
    p.add_argument("--data", required=True, help="converted folder (tools/convert_subset.py --out)")
    p.add_argument("--split", default="val")
    p.add_argument("--model", help="registered variant for a plain state_dict (e.g. convmixer_768_32)")
    p.add_argument("--ema", action="store_true", help="a fastmix checkpoint's EMA weights")
    p.add_argument("--backend", help="loader backend (default: the checkpoint's, else pil-wds)")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's val size, else 224")
    p.add_argument("--crop-ratio", type=float, help="default: the checkpoint's, else 224/256")
    p.add_argument("--batch-size", type=int, help="default: the trainer's val batch, else 128")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default: the checkpoint's, else auto")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", help="also write the result here")
    return p.parse_args(argv)


def main(argv=None) -> dict | int:
    a = parse_args(argv)
    from fastmix.train import speed
    from fastmix.train.evaluate import evaluate
    from fastmix.train.weights import load_weights
    from loaders import make_loader
    classes_file = Path(a.data) / "classes.json"
    try:
        classes = json.loads(classes_file.read_text())
        model, info = load_weights(a.checkpoint, classes, a.model, a.ema)
    except FileNotFoundError as e:
        print(f"evaluate: {e if classes_file.is_file() else f'{classes_file}: not found'}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    cfg = info.pop("config", {})
    device = speed.resolve_device(a.device)
    precision = speed.resolve_precision(a.precision or cfg.get("precision", "auto"), device)
    channels_last = cfg.get("channels_last", "auto") != "off"
    run_config = Path(a.checkpoint).parent / "config.yaml"  # the trainer's resolved choice, if beside it
    if cfg and run_config.is_file():
        import yaml
        channels_last = bool(yaml.safe_load(run_config.read_text()).get("channels_last", channels_last))
    model = model.to(device, memory_format=torch_format(channels_last))
    micro = cfg.get("micro_batch")
    batch = a.batch_size or (2 * (micro if isinstance(micro, int) else micro.get(cfg["model"], 64)) if cfg else 128)
    size = a.image_size or cfg.get("val_image_size") or cfg.get("image_size") or 224
    loader = make_loader(a.backend or cfg.get("backend", "pil-wds"), a.data, a.split, batch_size=batch,
                         image_size=size, device=str(device), workers=a.workers,
                         dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision],
                         crop_ratio=a.crop_ratio or cfg.get("crop_ratio", 224 / 256))
    result = {**info, "split": a.split, "image_size": size, "crop_ratio": loader.cfg.crop_ratio,
              "backend": a.backend or cfg.get("backend", "pil-wds"), "precision": precision,
              **evaluate(model, loader, device, precision, channels_last)}
    print(f"{a.checkpoint}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['eval_loss']:.4f}  "
          f"{result['eval_images']} images at {result['eval_images_per_s']:.0f} img/s  ({result['head']})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def torch_format(channels_last: bool):
    import torch
    return torch.channels_last if channels_last else torch.contiguous_format


if __name__ == "__main__":
    out = main()
    sys.exit(out if isinstance(out, int) else 0)
