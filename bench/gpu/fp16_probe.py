"""Where fp16 training goes non-finite: one micro-batch of the t4 recipe's step, per configuration.

The first lent H200 run (bench/results/gpu-h200) stopped end_to_end with "the fp16 GradScaler skipped
7 updates in a row at a loss scale <= 1": every update from the first was skipped, so the gradients
were non-finite at initialisation whatever the scale. This runs the trainer's own pieces (the
recipe's model, BatchAugment's mixup/cutmix and loss, speed.autocast, speed.compile_model) on one
random micro-batch per configuration, backward at loss scale 1 (no GradScaler: nothing amplified),
and records the loss, the gradient norm, which parameters have non-finite gradients, and (eager)
which modules' fp16 outputs hold inf/NaN or come near fp16's 65504.

    python3 -m bench.gpu.fp16_probe --out $OUT            # on a GPU: convmixer_768_32 at 224 px
    python -m bench.gpu.fp16_probe --out /tmp/p --smoke   # the same code on the CPU, tiny sizes
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from fastmix.model.convmixer import create_model
from fastmix.train import speed
from fastmix.train.augment import BatchAugment
from fastmix.train.optim import build_optimizer
from fastmix.train.recipe import load_recipe

FP16_MAX = 65504.0
# (name, precision, channels_last, compiled); compiled last: its cold compile is the slow one
CONFIGS = [("eager-fp16-cl", "fp16", True, False), ("eager-fp16-nchw", "fp16", False, False),
           ("eager-bf16-cl", "bf16", True, False), ("compiled-fp16-cl", "fp16", True, True)]


def module_watch(model: torch.nn.Module) -> tuple[dict, list]:
    """Forward hooks recording each leaf module's largest |output| and whether it is finite."""
    seen, handles = {}, []
    for name, mod in model.named_modules():
        if next(mod.children(), None) is not None:
            continue

        def hook(m, inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                o = out.detach()
                seen[name] = {"dtype": str(o.dtype).removeprefix("torch."), "finite": bool(torch.isfinite(o).all()),
                              "max_abs": float(o.float().abs().nan_to_num(nan=math.inf, posinf=math.inf).max())}
        handles.append(mod.register_forward_hook(hook))
    return seen, handles


def probe(model_name: str, size: int, batch: int, precision: str, channels_last: bool, compiled: bool,
          device: torch.device, classes: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = load_recipe("t4")
    model = create_model(model_name, num_classes=classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    seen, handles = module_watch(model) if not compiled else ({}, [])
    net = speed.compile_model(model, True) if compiled else model
    augment = BatchAugment(cfg, classes, device)
    # what the loaders hand over (fp16 under fp16; the first H200 run's probe fed fp32)
    x = torch.randn(batch, 3, size, size, device=device).to(getattr(torch, speed.LOADER_DTYPE[precision]))
    y = torch.randint(0, classes, (batch,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    x, target = augment(x, y)
    with speed.autocast(precision, device):
        logits = net(x)
    loss = augment.loss(logits.float(), target)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    for h in handles:
        h.remove()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    norms = {n: float(p.grad.float().norm()) for n, p in model.named_parameters() if p.grad is not None}
    finite_norms = [v for v in norms.values() if math.isfinite(v)]
    hot = {n: s for n, s in seen.items() if not s["finite"] or s["max_abs"] > FP16_MAX / 16}
    return {"input_dtype": str(x.dtype).removeprefix("torch."), "loss": float(loss.detach()), "logits_dtype": str(logits.dtype), "logits_max_abs": float(logits.detach().abs().max()),
            "params": len(norms), "nonfinite_params": len(bad), "first_nonfinite": bad[:8], "last_nonfinite": bad[-8:],
            "grad_norm_finite_part": math.sqrt(sum(v * v for v in finite_norms)),
            "largest_module_outputs": dict(sorted(seen.items(), key=lambda kv: -kv[1]["max_abs"])[:8]),
            "nonfinite_or_near_fp16_max": hot, "seconds": round(took, 2)}


def scaler_loop(model_name: str, size: int, batch: int, device: torch.device, classes: int, steps: int = 20,
                precision: str = "fp16", compiled: bool = False, accum: int = 1) -> dict:
    """The trainer's update (Trainer.optimizer_step) with the GradScaler and fused AdamW, eager and
    channels_last: the loss scale and whether the unscaled gradient norm is finite, per update."""
    torch.manual_seed(0)
    cfg = load_recipe("t4")
    model = create_model(model_name, num_classes=classes).to(device).to(memory_format=torch.channels_last).train()
    opt = build_optimizer(model, cfg, lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    augment = BatchAugment(cfg, classes, device)
    net = speed.compile_model(model, True) if compiled else model
    rows = []
    for _ in range(steps):
        for _ in range(accum):  # the trainer's accumulation: each micro-batch's loss / accum
            x = torch.randn(batch, 3, size, size, device=device).to(getattr(torch, speed.LOADER_DTYPE[precision]))
            x = x.contiguous(memory_format=torch.channels_last)
            x, target = augment(x, torch.randint(0, classes, (batch,), device=device))
            with speed.autocast(precision, device):
                logits = net(x)
            loss = augment.loss(logits.float(), target)
            scaler.scale(loss / accum).backward()
        scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0
        if scaler.is_enabled():
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad or math.inf)
        scaler.step(opt) if scaler.is_enabled() else opt.step()
        scaler.update()
        opt.zero_grad(set_to_none=True)
        rows.append({"loss": round(float(loss.detach()), 4), "scale": scale, "grad_norm": float(norm)})
    return {"precision": precision, "compiled": compiled, "accum": accum, "updates": rows,
            "skipped": sum(not math.isfinite(r["grad_norm"]) for r in rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for fp16_probe.json")
    p.add_argument("--smoke", action="store_true", help="CPU, convmixer_256_8 at 32 px, bf16 only")
    p.add_argument("--model", default="convmixer_768_32")
    p.add_argument("--compiled-loop", action="store_true", help="only the scaler loop, compiled, 2 micro-batches")
    a = p.parse_args(argv)
    device = torch.device("cpu" if a.smoke else "cuda")
    model, size, batch = ("convmixer_256_8", 32, 4) if a.smoke else (a.model, 224, 32)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "model": model, "image_size": size, "micro_batch": batch, "results": {}}
    try:
        record["scaler_loop"] = scaler_loop(model, size, batch, device, 100, steps=5 if a.smoke else 20,
                                            precision="bf16" if a.smoke else "fp16", compiled=a.compiled_loop,
                                            accum=2 if a.compiled_loop else 1)
    except Exception as e:
        record["scaler_loop"] = {"error": f"{type(e).__name__}: {e}"}
    print("scaler_loop", json.dumps(record["scaler_loop"]), flush=True)
    (out / "fp16_probe.json").write_text(json.dumps(record, indent=1))
    for name, precision, cl, compiled in [] if a.compiled_loop else CONFIGS:
        if a.smoke and precision == "fp16":
            precision = "bf16"  # CPU autocast has no fast fp16; the code path is what is rehearsed
        try:
            record["results"][name] = probe(model, size, batch, precision, cl, compiled, device, 100)
        except Exception as e:  # one configuration's failure is its result, not the probe's end
            record["results"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps({k: v for k, v in record["results"][name].items()
                                if k not in ("largest_module_outputs", "nonfinite_or_near_fp16_max")}), flush=True)
        (out / "fp16_probe.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
