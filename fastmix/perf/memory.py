"""Training memory on a device: the model's own (fastmix.model.flops) plus what else holds memory.

    device_training_memory("convmixer_768_32", micro_batch=32, precision="fp16", gpu=t4, ema=True,
                           loader="dali", resolutions=[224])

The model's part (weights, grads, AdamW, saved activations, autocast copies, in-flight maps) is
analytic and checked against what autograd saves (`saved_bytes_measured`, tests/test_memory.py).
The rest are stated estimates, each a named constant below, not measurements:
- the CUDA context (driver, kernels' code: 0.3-0.6 GB on recent drivers) and cuDNN/cuBLAS
  workspaces (cudnn.benchmark may pick algorithms with large workspaces);
- DALI's device memory pools, which DALI keeps and never returns to torch: one train pipeline
  per resolution visited (progressive resizing builds one per size) plus the val pipeline, each
  with prefetch_queue_depth=2 (+1 in flight) batches of decoded images and outputs, plus nvJPEG
  scratch;
- the EMA copy (fp32 weights) when `ema` is on;
- torch.compile: inductor's generated kernels and its own workspaces; stated as a fraction of
  the activations (compile can also save *less*, by recomputing elementwise ops: not counted).
"""
from __future__ import annotations

from fastmix.devices.catalog import Device
from fastmix.model.convmixer import ConvMixerConfig, variant
from fastmix.model.flops import convmixer_ops, training_memory_bytes

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GB = 1e9
CUDA_CONTEXT_GB = 0.5          # driver context + loaded kernels (not seen by max_memory_allocated)
CUDNN_WORKSPACE_GB = 0.5       # cuDNN/cuBLAS workspaces with cudnn.benchmark
ALLOCATOR_SLACK = 0.05         # caching-allocator fragmentation, as a share of the model's memory
COMPILE_SHARE = 0.10           # inductor workspaces, as a share of the activations
DALI_STAGES = 3                # prefetch_queue_depth=2 + the batch being processed
DALI_STORED_SIDE = 512         # decoded images are at most the converter's max side (default 512)
DALI_SCRATCH_GB = 0.15         # nvJPEG / resize scratch per pipeline
RECIPE_EXTRAS = {"loader": "dali", "compile": True}  # what the GPU recipes (t4, a100, h100) run with


def dali_pool_bytes(batch: int, image_size: int, stored_side: int = DALI_STORED_SIDE) -> float:
    """One DALI pipeline's device pool: decoded images (<= stored side, RGB uint8) and uint8
    outputs for each prefetch stage, plus scratch."""
    per_image = 3 * stored_side ** 2 + 3 * image_size ** 2
    return DALI_STAGES * batch * per_image + DALI_SCRATCH_GB * GB


def device_training_memory(model: str | ConvMixerConfig, micro_batch: int, precision: str, image_size: int = 224,
                           num_classes: int = 100, ema: bool = False, compile: bool = False, loader: str = "none",
                           resolutions: list[int] | None = None, val_batch: int | None = None) -> dict:
    """Bytes by component at the peak of a training step at `image_size`; `resolutions` are all
    the train sizes the run visits (DALI keeps a pipeline for each)."""
    cfg = variant(model)
    own = training_memory_bytes(convmixer_ops(cfg, image_size, num_classes), micro_batch, BYTES[precision])
    params = own["weights_and_optimizer"] / 16
    parts = {"weights_grads_adamw": own["weights_and_optimizer"], "saved_activations": own["activations"],
             "in_flight_maps": own["working"],
             "allocator_slack": ALLOCATOR_SLACK * own["total"],
             "cuda_context": CUDA_CONTEXT_GB * GB, "cudnn_workspace": CUDNN_WORKSPACE_GB * GB,
             "ema": 4 * params if ema else 0.0,
             "compile": COMPILE_SHARE * own["activations"] if compile else 0.0}
    if loader == "dali":
        sizes = sorted(set(resolutions or [image_size]))
        val = val_batch or 2 * micro_batch  # the trainer evaluates at twice the micro-batch
        parts["dali_pools"] = sum(dali_pool_bytes(micro_batch, s) for s in sizes) + dali_pool_bytes(val, image_size)
    parts["total"] = sum(parts.values())
    return parts


def allocator_visible_gb(model: str | ConvMixerConfig, micro_batch: int, precision: str, image_size: int = 224,
                         **extras) -> float:
    """The part of device_training_memory that torch's allocator holds, in GB: everything but the
    CUDA context, which `torch.cuda.max_memory_allocated` never sees (workspaces it does see)."""
    parts = device_training_memory(model, micro_batch, precision, image_size, **extras)
    return (parts["total"] - parts["cuda_context"]) / GB


def largest_micro_batch(model: str | ConvMixerConfig, gpu: Device, precision: str, batch: int = 64,
                        image_size: int = 224, **extras) -> int:
    """The largest power-of-two micro-batch dividing `batch` whose device training memory
    (device_training_memory, with `extras`: ema, compile, loader, resolutions) fits the GPU;
    0 if not even one image fits."""
    micro = batch
    while micro >= 1:
        if device_training_memory(model, micro, precision, image_size, **extras)["total"] <= gpu.memory_gb * GB:
            return micro
        micro //= 2
    return 0


def saved_bytes_measured(model, x, precision: str = "fp32") -> int:
    """Bytes autograd keeps for one forward + cross-entropy of `model` on `x`, as
    saved_tensors_hooks sees them, deduplicated by storage; parameters and buffers excluded
    (they are weights, not activations). Works under FakeTensorMode (no memory, no compute)."""
    import torch
    import torch.nn.functional as F
    own = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
        return t
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
            F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
    return sum(n for k, n in seen.items() if k not in own)
