"""ffcv image decoders that decode only the resolution the output needs.

ffcv's RandomResizedCropRGBImageDecoder decodes every JPEG at full size, then resizes the crop
(OpenCV INTER_AREA). When the crop is at least twice the output in both sides, libjpeg-turbo can
decode the whole image at 1/2, 1/4 or 1/8 scale in its IDCT (TurboJPEG scaling, as PIL's
`draft`), which is cheaper to decode and leaves fewer pixels to resize. These decoders pick,
per image, the smallest of those scales that still leaves the crop at least the output's size,
then crop and resize as ffcv does. The crop is drawn by ffcv's own `get_random_crop` (the
distribution of torchvision's RandomResizedCrop), so only the decode changes.

Measured and rejected: region-of-interest decode through ffcv's `imdecode(enable_crop=True)`,
which is TurboJPEG's lossless `tjTransform` crop. It entropy-decodes the whole image, re-encodes
the crop, then decodes that: as slow as a full decode or slower, 1.0-1.5x in side-by-side runs
(bench.stages reports it as `decode_roi_tjtransform_for_reference`). Non-power-of-two scales
(3/8 ... 7/8) were slower than a full decode too (no SIMD IDCT for them in libjpeg-turbo).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import (IMAGE_MODES, CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder,
                                   get_center_crop, get_random_crop)
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler

from .geometry import dct_denominator, scaled_span

def flip_in_place(image: np.ndarray) -> None:
    """Mirror an HxWx3 uint8 image left-right in place. ffcv's RandomHorizontalFlip copies every
    image through a negative-stride view into a new buffer: ~7x slower (bench.stages, "flip")."""
    h, w = image.shape[0], image.shape[1]
    rows = image.reshape(h, w * 3)
    for y in range(h):
        r = rows[y]
        i, j = 0, (w - 1) * 3
        while i < j:
            a0, a1, a2 = r[i], r[i + 1], r[i + 2]
            r[i], r[i + 1], r[i + 2] = r[j], r[j + 1], r[j + 2]
            r[j], r[j + 1], r[j + 2] = a0, a1, a2
            i += 3
            j -= 3


class _ScaledDecodeMixin:
    """Replaces ResizedCropRGBImageDecoder.generate_code: same crop, DCT-scaled decode, and an
    optional in-place flip (`flip_prob`) fused after the resize."""

    flip_prob = 0.0

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        denominator_c = Compiler.compile(dct_denominator)
        span_c = Compiler.compile(scaled_span)
        flip_c = Compiler.compile(flip_in_place)
        flip_prob = float(self.flip_prob)
        out_h, out_w = int(self.output_size[0]), int(self.output_size[1])
        scale = np.array(self.scale) if isinstance(self.scale, tuple) else self.scale
        ratio = np.array(self.ratio) if isinstance(self.ratio, tuple) else self.ratio

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                if field["mode"] == jpg:
                    d = denominator_c(h, w, out_h, out_w)
                    # TJSCALED: the decoded size rounds up
                    sh, sw = (height + d - 1) // d, (width + d - 1) // d
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                    image = buf.reshape(-1)[:3 * sh * sw].reshape(sh, sw, 3)
                    r0, r1 = span_c(i, h, d, sh)
                    c0, c1 = span_c(j, w, d, sw)
                else:  # stored raw: nothing to decode
                    image = image_data.reshape(height, width, 3)
                    r0, r1, c0, c1 = i, i + h, j, j + w
                resize_crop_c(image, r0, r1, c0, c1, destination[dst_ix])
                if flip_prob > 0 and np.random.rand() < flip_prob:
                    flip_c(destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class ScaledRandomResizedCropDecoder(_ScaledDecodeMixin, RandomResizedCropRGBImageDecoder):
    """RandomResizedCropRGBImageDecoder with DCT-scaled decoding; `flip_prob` replaces a
    following RandomHorizontalFlip(flip_prob)."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.0):
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.flip_prob = flip_prob

    @property
    def get_crop_generator(self):
        return get_random_crop


class ScaledCenterCropDecoder(_ScaledDecodeMixin, CenterCropRGBImageDecoder):
    """CenterCropRGBImageDecoder with DCT-scaled decoding (same arguments)."""

    @property
    def get_crop_generator(self):
        return get_center_crop
