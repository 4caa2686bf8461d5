"""OpenCV: the .beton's stored JPEGs decoded by libjpeg-turbo (OpenCV) on threads of the training
process. No ffcv Loader, no worker processes, no numba: the cores go to decoding.

Per image, only the work its output needs:
- decode at the smallest of libjpeg-turbo's 1/2, 1/4, 1/8 DCT scales that still leaves the crop
  at least the output's size (`geometry.dct_denominator`), straight to RGB;
- resize the crop bilinearly; where it shrinks by `ANTIALIAS_FROM` or more, a small Gaussian
  first (sigma 0.5 sqrt(f^2 - 1) per axis, 3 or 5 taps) stands in for the antialiasing of
  torchvision's PIL resize (bench.stages' `psnr_vs_pil_db`; tests/test_opencv_loader.py);
- mirror with one cv2.flip from the resized crop into the batch slot;
- hand off one uint8 NHWC batch (which is NCHW channels_last), normalized by `normalize` on the
  consuming device in one pass.

OpenCV releases the GIL while it decodes, blurs and resizes, so `workers` threads build whole
batches in parallel, `workers + 1` ahead. Each batch draws its crops and flips from its own seed
(seed, rank, epoch, batch): the same for any worker count.
"""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from .common import BaseLoader, LoaderConfig, batch_slices, manifest_split, normalize, rank_indices, require
from .geometry import center_crop_boxes, dct_denominator, resized_crop_boxes, scaled_span
from .labels import check_beton_labels, class_count

ANTIALIAS_FROM = 1.25  # shrink from which bilinear alone aliases (below ~41 dB vs PIL on the sample photos)


def blur_sigma(factor: float) -> float:
    """The Gaussian that, followed by bilinear sampling, approximates PIL's triangle filter of
    support `factor` (fitted against PIL on real photos: 0.5 sqrt(f^2 - 1))."""
    return 0.5 * math.sqrt(factor * factor - 1) if factor > 1 else 0.0


def resize_into(src: np.ndarray, dst: np.ndarray, flip: bool = False) -> None:
    """Resize an HxWx3 uint8 crop into `dst` (h x w x 3, contiguous), mirrored if `flip`."""
    import cv2
    fy, fx = src.shape[0] / dst.shape[0], src.shape[1] / dst.shape[1]
    if max(fx, fy) >= ANTIALIAS_FROM:
        sx, sy = blur_sigma(fx), blur_sigma(fy)
        # 3 taps up to sigma 2/3 (a 1.67x shrink), 5 up to 4/3 (2.85x); 1 tap (none) on an axis not shrunk.
        kx, ky = (2 * math.ceil(1.5 * s) + 1 if s > 0 else 1 for s in (sx, sy))
        src = cv2.GaussianBlur(src, (kx, ky), sigmaX=max(sx, 1e-3), sigmaY=max(sy, 1e-3))
    size = (dst.shape[1], dst.shape[0])
    if flip:
        cv2.flip(cv2.resize(src, size, interpolation=cv2.INTER_LINEAR), 1, dst=dst)
    else:
        cv2.resize(src, size, dst=dst, interpolation=cv2.INTER_LINEAR)


def decode_flags(cv2) -> dict[int, int]:
    """imdecode flags per DCT denominator, decoding straight to RGB (OpenCV >= 4.10) or BGR."""
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if rgb is None:
        return {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}
    return {1: rgb, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | rgb, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | rgb,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | rgb}


_FLAGS: dict[int, int] = {}  # decode_flags for the OpenCV in use, filled on first decode


def decode_rgb(data: np.ndarray, d: int) -> np.ndarray | None:
    """A JPEG decoded at 1/d scale (d in 1, 2, 4, 8) to HxWx3 RGB; None if it is no JPEG."""
    import cv2
    if not _FLAGS:
        _FLAGS.update(decode_flags(cv2))
    image = cv2.imdecode(data, _FLAGS[d])
    if image is not None and not hasattr(cv2, "IMREAD_COLOR_RGB"):  # before OpenCV 4.10: BGR only
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


class OpenCVLoader(BaseLoader):
    def __init__(self, cfg: LoaderConfig):
        self.cv2 = require("cv2", "ffcv")
        from fastmix.data.betonread import StoredImages
        info = manifest_split(cfg)
        self.path = Path(cfg.data) / (info.get("beton") or f"ffcv/{cfg.split}.beton")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: not found; convert with --formats ffcv")
        self.store = StoredImages(self.path)  # opens it through check_beton: a cut file is refused
        check_beton_labels(self.path, self.store.labels, class_count(cfg.data))
        super().__init__(cfg, len(self.store))
        self.threads = max(1, cfg.workers)
        self._pin = cfg.torch_device.type == "cuda"
        self._pool = None

    def _decode(self, i: int, crop_h: int, crop_w: int) -> tuple[np.ndarray, int]:
        """Sample i's image at the smallest DCT scale that keeps the crop's resolution, and that scale."""
        store = self.store
        if not store.is_jpeg[i]:  # ffcv's raw write mode: stored pixels, nothing to decode
            return store.encoded(i).reshape(store.heights[i], store.widths[i], 3), 1
        d = dct_denominator(crop_h, crop_w, self.cfg.image_size, self.cfg.image_size)
        image = decode_rgb(store.encoded(i), d)
        if image is None:
            raise ValueError(f"{self.path}: sample {i} is not a decodable JPEG")
        return image, d

    def _batch(self, ids: np.ndarray, seed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, size = self.cfg, self.cfg.image_size
        h, w = self.store.heights[ids], self.store.widths[ids]
        if cfg.is_train:
            rng = np.random.default_rng(seed)
            boxes = resized_crop_boxes(h, w, cfg.scale, cfg.ratio, rng)
            flips = (rng.random(len(ids)) < 0.5) & cfg.hflip
        else:
            boxes = np.round(center_crop_boxes(h, w, cfg.resize_to, size)).astype(np.int64)
            flips = np.zeros(len(ids), bool)
        # Pinned on CUDA, so the copy in `normalize` is asynchronous; torch's pinned-memory cache
        # does not hand a buffer out again before that copy has finished.
        out = torch.empty((len(ids), size, size, 3), dtype=torch.uint8, pin_memory=self._pin)
        dst = out.numpy()
        for k, i in enumerate(ids.tolist()):
            x1, y1, x2, y2 = boxes[k].tolist()
            try:
                image, d = self._decode(i, y2 - y1, x2 - x1)
                r0, r1 = scaled_span(y1, y2 - y1, d, image.shape[0])
                c0, c1 = scaled_span(x1, x2 - x1, d, image.shape[1])
                resize_into(image[r0:r1, c0:c1], dst[k], bool(flips[k]))
            except ValueError:
                raise
            except Exception as e:  # an OpenCV error or a raw sample of the wrong size: say which
                raise ValueError(f"{self.path}: sample {i}: {type(e).__name__}: {e}") from e
        return out.permute(0, 3, 1, 2), torch.from_numpy(self.store.labels[ids])

    def __iter__(self):
        cfg = self.cfg
        if self._pool is None:
            # OpenCV's own thread pool inside each call would only fight these threads for the cores.
            self.cv2.setNumThreads(1)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fastmix-opencv")
        epoch = self.epoch  # one epoch's order and draws, even if set_epoch runs before it ends
        batches = enumerate(batch_slices(rank_indices(self.split_size, cfg, epoch), cfg.batch_size, cfg.last_batch))
        ahead = deque()

        def submit():
            for k, ids in batches:
                ahead.append(self._pool.submit(self._batch, ids, [cfg.seed, cfg.rank, epoch, k]))
                return

        try:
            for _ in range(self.threads + 1):
                submit()
            while ahead:
                images, labels = ahead.popleft().result()
                submit()
                yield normalize(images, cfg), labels.to(cfg.torch_device, non_blocking=True)
        finally:  # abandoned mid-epoch: drop the batches not started, let the running ones finish
            for future in ahead:
                future.cancel()
            wait(ahead)  # so no decoding goes on behind the caller's back (e.g. while it evaluates)
