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
"""
from __future__ import annotations

from dataclasses import dataclass

from .convmixer import VARIANTS, ConvMixerConfig

MODEL_KINDS = ("stem", "depthwise", "pointwise", "head")          # conv / matmul: model FLOPs
ELEMENTWISE_KINDS = ("batchnorm", "activation", "residual", "pool")
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
    saved: float            # activation elements kept for backward, per image

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

    def conv(name, kind, macs, params, in_elems, out_elems, grad_input=True):
        fwd = 2 * macs
        return Op(name, kind, fwd, fwd * (2 if grad_input else 1),
                  (in_elems + out_elems, 2 * out_elems + in_elems + (in_elems if grad_input else 0)),
                  params, saved=in_elems)

    def elementwise(name, kind, flops_per, saved):
        return Op(name, kind, flops_per * e, flops_per * e, tuple(x * e for x in ELEMENTWISE_IO[kind]),
                  2 * h if kind == "batchnorm" else 0, saved=saved)

    ops = [conv("stem.conv", "stem", n * h * 3 * p * p, h * 3 * p * p + h, 3 * resolution ** 2, e, grad_input=False),
           elementwise("stem.act", "activation", act_flops, e),
           elementwise("stem.bn", "batchnorm", ELEMENTWISE_FLOPS["batchnorm"], e)]
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        ops += [conv(f"{b}.depthwise", "depthwise", e * k * k, h * k * k + h, e, e),
                elementwise(f"{b}.act1", "activation", act_flops, e),
                elementwise(f"{b}.bn1", "batchnorm", ELEMENTWISE_FLOPS["batchnorm"], e),
                elementwise(f"{b}.residual", "residual", 1, 0),
                conv(f"{b}.pointwise", "pointwise", e * h, h * h + h, e, e),
                elementwise(f"{b}.act2", "activation", act_flops, e),
                elementwise(f"{b}.bn2", "batchnorm", ELEMENTWISE_FLOPS["batchnorm"], e)]
    ops += [elementwise("pool", "pool", 1, 0),
            Op("head", "head", 2 * h * num_classes, 4 * h * num_classes, (h + num_classes, 2 * num_classes + 2 * h),
               h * num_classes + num_classes, saved=h)]
    return ops


@dataclass(frozen=True)
class Totals:
    params: int
    fwd_model_flops: float      # per image
    train_model_flops: float    # per image, forward + backward
    train_elementwise_flops: float
    saved_elements: float       # per image

    def activation_bytes(self, batch: int, bytes_per_element: int) -> float:
        return self.saved_elements * batch * bytes_per_element


def totals(ops: list[Op]) -> Totals:
    model = [o for o in ops if o.is_model]
    other = [o for o in ops if not o.is_model]
    return Totals(params=sum(o.params for o in ops),
                  fwd_model_flops=sum(o.fwd_flops for o in model),
                  train_model_flops=sum(o.fwd_flops + o.bwd_flops for o in model),
                  train_elementwise_flops=sum(o.fwd_flops + o.bwd_flops for o in other),
                  saved_elements=sum(o.saved for o in ops))


def training_memory_bytes(ops: list[Op], batch: int, act_bytes: int) -> dict:
    """Peak training memory, roughly: fp32 weights + grads + AdamW's two moments (16 B/param),
    a low-precision weight copy under autocast, and the activations kept for backward."""
    t = totals(ops)
    weights = t.params * (16 + (act_bytes if act_bytes < 4 else 0))
    activations = t.activation_bytes(batch, act_bytes)
    return {"weights_and_optimizer": weights, "activations": activations, "total": weights + activations}


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
