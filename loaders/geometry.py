"""Crop boxes and decode scales that several backends share (numpy only, no backend imports).

- `resized_crop_boxes`: torchvision's RandomResizedCrop.get_params, vectorized over a batch of
  images of any sizes;
- `center_crop_boxes`: the val transform (resize the shorter side, center crop) as a box in the
  source image;
- `dct_denominator` / `scaled_span`: which of libjpeg-turbo's 1/2, 1/4, 1/8 DCT scales still
  leaves a crop at the output's resolution, and where the crop lands in the scaled image. They
  are plain integer code so that ffcv's decoder can numba-compile them.
"""
from __future__ import annotations

import math

import numpy as np

SCALES = (8, 4, 2)  # denominators of libjpeg-turbo's SIMD-accelerated DCT scales, smallest image first


def resized_crop_boxes(h, w, scale, ratio, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """RandomResizedCrop boxes for images of heights `h` and widths `w` (scalars or arrays of one
    length; `n` images when both are scalars): (n, 4) int64 x1, y1, x2, y2 in source pixels."""
    h, w = np.broadcast_arrays(np.asarray(h, np.int64), np.asarray(w, np.int64))
    if h.ndim == 0:
        h, w = np.full(n or 1, h), np.full(n or 1, w)
    n, area = len(h), (h * w)[:, None]
    target = area * rng.uniform(*scale, size=(n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, 10)))
    cw, ch = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = ok.argmax(axis=1)
    cw, ch = cw[np.arange(n), first].astype(np.int64), ch[np.arange(n), first].astype(np.int64)
    # No attempt fits: the largest center crop within the ratio range (torchvision's fallback).
    none = ~ok.any(axis=1)
    in_ratio = w / h
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fw = np.where(narrow, w, np.where(wide, np.round(h * ratio[1]), w)).astype(np.int64)
    fh = np.where(narrow, np.round(w / ratio[0]), h).astype(np.int64)
    cw, ch = np.where(none, fw, cw), np.where(none, fh, ch)
    top = np.floor(rng.random(n) * (h - ch + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (w - cw + 1)).astype(np.int64)
    top, left = np.where(none, (h - ch) // 2, top), np.where(none, (w - cw) // 2, left)
    return np.stack([left, top, left + cw, top + ch], axis=1)


def center_crop_boxes(h, w, resize_to: int, size: int) -> np.ndarray:
    """torchvision's Resize(resize_to) (shorter side) + CenterCrop(size), as (n, 4) float boxes
    x1, y1, x2, y2 in the source image."""
    h, w = np.atleast_1d(np.asarray(h, np.float64)), np.atleast_1d(np.asarray(w, np.float64))
    short, long = np.minimum(h, w), np.maximum(h, w)
    other = np.floor(resize_to * long / short)  # torchvision truncates the longer side
    rh, rw = np.where(h <= w, resize_to, other), np.where(h <= w, other, resize_to)
    top, left = np.round((rh - size) / 2), np.round((rw - size) / 2)
    sy, sx = h / rh, w / rw
    return np.stack([left * sx, top * sy, (left + size) * sx, (top + size) * sy], axis=1)


def dct_denominator(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
    """The largest of 8, 4, 2 (else 1) that leaves the crop at least out_h x out_w after scaling."""
    for d in SCALES:
        if crop_h // d >= out_h and crop_w // d >= out_w:
            return d
    return 1


def scaled_span(start: int, length: int, d: int, limit: int):
    """Source rows/cols [start, start + length) in an image decoded at 1/d (rounded edges)."""
    lo = (start + d // 2) // d
    hi = min(limit, (start + length + d // 2) // d)
    return lo, max(hi, lo + 1)
