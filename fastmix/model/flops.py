"""Analytic ConvMixer costs, op by op: FLOPs, parameters, saved activations, bytes moved.

Conventions (stated in every output that uses them):
- A multiply-add is 2 FLOPs. "Model FLOPs" are the convolutions and the classifier (what
  torch.utils.flop_counter counts, and what MFU is measured against); BatchNorm, activations,
  residual adds and pooling are counted apart as elementwise FLOPs.
- Training = forward + backward. The backward of a conv/linear is 2x its forward (input
  gradient + weight gradient), except the patch embedding, whose input (the image) needs no
  gradient: 1x. So training model FLOPs are just under 3x forward.
- Bytes are the fewest each op must move through device memory (read inputs and weights
  once, write outputs once), per image for activations and per batch for weights.
- Saved tensors are what autograd really keeps (checked against saved_tensors_hooks, deduplicated
  by storage, in tests/test_memory.py): a conv keeps its input; GELU keeps its input (the conv's
  output) but ReLU keeps its output, which the next BatchNorm keeps anyway (one storage); BN
  keeps its input and per-channel fp32 mean/invstd; the residual add and the mean keep nothing;
  the head keeps the fp32 pooled features; the loss keeps its log-probabilities (fp32) and the
  int64 targets. Under 16-bit autocast activations are 16-bit (the image too: the stem keeps
  autocast's copy) and each conv weight's 16-bit copy is kept once per step.
"""
from __future__ import annotations

from dataclasses import dataclass

from .convmixer import VARIANTS, ConvMixerConfig

MODEL_KINDS = ("stem", "depthwise", "pointwise", "head")          # conv / matmul: model FLOPs
ELEMENTWISE_KINDS = ("batchnorm", "activation", "residual", "pool", "loss")
# Elementwise FLOPs per element (forward): BN normalize+affine with batch statistics,
# tanh-GELU vs ReLU, one add. Rough by nature; they never bound the time (bytes do).
ELEMENTWISE_FLOPS = {"batchnorm": 6, "gelu": 10, "relu": 1, "residual": 1, "pool": 1}
# Activation elements read+written (forward, backward) per output element.
ELEMENTWISE_IO = {"batchnorm": (3, 5), "activation": (2, 3), "residual": (3, 3), "pool": (1, 1)}


@dataclass(frozen=True)
class Op:
    name: str
    kind: str
    fwd_flops: float        # per image
    bwd_flops: float        # per image
    act_io: tuple           # (forward, backward) activation elements moved per image
    params: int
    saved: float            # activation elements kept for backward, per image, at the run's precision
    saved_fp32: float = 0   # elements kept in fp32 whatever the precision, per image
    stats: float = 0        # fp32 elements kept per step, not per image (BN's mean and invstd)
    weight_copy: int = 0    # weight elements 16-bit autocast casts (and keeps) once per step

    @property
    def is_model(self) -> bool:
        return self.kind in MODEL_KINDS


def tokens(cfg: ConvMixerConfig, resolution: int) -> int:
    side = (resolution - cfg.patch) // cfg.patch + 1  # conv, kernel = stride = patch, no padding
    return side * side


def convmixer_ops(cfg: ConvMixerConfig | str, resolution: int = 224, num_classes: int = 1000) -> list[Op]:
    """Every op of one ConvMixer forward/backward, in order."""
    if isinstance(cfg, str):
        cfg = VARIANTS[cfg]
    h, n, k, p = cfg.dim, tokens(cfg, resolution), cfg.kernel, cfg.patch
    act_flops = ELEMENTWISE_FLOPS[cfg.act]
    e = n * h  # elements of one feature map

    relu = cfg.act == "relu"

    def conv(name, kind, macs, weight, in_elems, out_elems, grad_input=True):
        fwd = 2 * macs
        return Op(name, kind, fwd, fwd * (2 if grad_input else 1),
                  (in_elems + out_elems, 2 * out_elems + in_elems + (in_elems if grad_input else 0)),
                  weight + h, saved=in_elems, weight_copy=weight)

    def elementwise(name, kind, flops_per, saved=0):
        bn = kind == "batchnorm"
        return Op(name, kind, flops_per * e, flops_per * e, tuple(x * e for x in ELEMENTWISE_IO[kind]),
                  2 * h if bn else 0, saved=saved, stats=2 * h if bn else 0)

    # ReLU keeps its output and BN its input: the same tensor, counted once (at the activation)
    act_saved, bn_saved = (e, 0) if relu else (e, e)

    def act_bn(prefix, suffix=""):
        return [elementwise(f"{prefix}.act{suffix}", "activation", act_flops, act_saved),
                elementwise(f"{prefix}.bn{suffix}", "batchnorm", ELEMENTWISE_FLOPS["batchnorm"], bn_saved)]

    ops = [conv("stem.conv", "stem", n * h * 3 * p * p, h * 3 * p * p, 3 * resolution ** 2, e, grad_input=False),
           *act_bn("stem")]
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        ops += [conv(f"{b}.depthwise", "depthwise", e * k * k, h * k * k, e, e), *act_bn(b, "1"),
                elementwise(f"{b}.residual", "residual", 1),
                conv(f"{b}.pointwise", "pointwise", e * h, h * h, e, e), *act_bn(b, "2")]
    ops += [elementwise("pool", "pool", 1),
            Op("head", "head", 2 * h * num_classes, 4 * h * num_classes, (h + num_classes, 2 * num_classes + 2 * h),
               h * num_classes + num_classes, saved=0, saved_fp32=h),  # fp32 head: no autocast copy
            # cross-entropy: fp32 log-probabilities + int64 targets (2 fp32 elements), a scalar weight sum
            Op("loss", "loss", 3 * num_classes, 2 * num_classes, (num_classes, 2 * num_classes), 0, saved=0,
               saved_fp32=num_classes + 2, stats=1)]
    return ops


@dataclass(frozen=True)
class Totals:
    params: int
    fwd_model_flops: float      # per image
    train_model_flops: float    # per image, forward + backward
    train_elementwise_flops: float
    saved_elements: float       # per image, at the run's precision
    saved_fp32_elements: float  # per image, always fp32
    stats_elements: float       # per step, fp32
    weight_copy_elements: int   # per step, 16-bit under autocast

    def activation_bytes(self, batch: int, bytes_per_element: int) -> float:
        """Bytes autograd keeps for backward for `batch` images (2-byte elements = 16-bit autocast):
        activations, fp32 statistics and, under autocast, the 16-bit weight copies."""
        copies = self.weight_copy_elements * bytes_per_element if bytes_per_element < 4 else 0
        return (batch * (self.saved_elements * bytes_per_element + self.saved_fp32_elements * 4)
                + self.stats_elements * 4 + copies)


def totals(ops: list[Op]) -> Totals:
    model = [o for o in ops if o.is_model]
    other = [o for o in ops if not o.is_model]
    return Totals(params=sum(o.params for o in ops),
                  fwd_model_flops=sum(o.fwd_flops for o in model),
                  train_model_flops=sum(o.fwd_flops + o.bwd_flops for o in model),
                  train_elementwise_flops=sum(o.fwd_flops + o.bwd_flops for o in other),
                  saved_elements=sum(o.saved for o in ops),
                  saved_fp32_elements=sum(o.saved_fp32 for o in ops),
                  stats_elements=sum(o.stats for o in ops),
                  weight_copy_elements=sum(o.weight_copy for o in ops))


WORKING_MAPS = 3  # feature maps alive besides the saved ones at the peak (a layer's output / its grads)


def training_memory_bytes(ops: list[Op], batch: int, act_bytes: int) -> dict:
    """The model's own peak training memory (what torch.cuda.max_memory_allocated sees): fp32
    weights + grads + AdamW's two moments (16 B/param, all counted at the peak: conservative),
    the tensors autograd keeps (with autocast's weight copies), and WORKING_MAPS feature maps
    in flight. Device-level extras (CUDA context, cuDNN workspace, loader pools, EMA) are
    fastmix.perf.memory's."""
    t = totals(ops)
    weights = t.params * 16
    activations = t.activation_bytes(batch, act_bytes)
    feature_map = max((o.saved for o in ops if o.kind in ("depthwise", "pointwise")), default=0)
    working = WORKING_MAPS * batch * feature_map * act_bytes
    return {"weights_and_optimizer": weights, "activations": activations, "working": working,
            "total": weights + activations + working}


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's conv-backward FLOP formula with its grouped-conv bug fixed: torch (2.13) counts
    a grouped conv's weight gradient as if the conv were dense, `groups` times too many
    FLOPs: ~dim x too many for every depthwise conv (see pytorch/pytorch#183405)."""
    from torch.utils.flop_counter import conv_flop_count, get_shape

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]
    flops = 0
    if output_mask[0]:  # grad_input: a transposed conv of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight: a conv of the input with grad_out, per group
        grad_w = t(get_shape(out_shape[1]))
        pair = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += conv_flop_count(*pair, grad_w) // groups
    return flops


def counted_flops(model, x, train: bool = True, fix_grouped_backward: bool = True) -> int:
    """FLOPs of one forward (+ backward) as torch.utils.flop_counter counts them. Works on the
    meta device (no memory, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop} if fix_grouped_backward else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = model(x)
        if train:
            out.sum().backward()
    return counter.get_total_flops()
