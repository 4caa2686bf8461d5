"""The decode limit, measured one way in one place: libjpeg-turbo (OpenCV's `imdecode`, one thread)
decoding a given list of JPEG byte strings, best of `repeats` passes (the machine is noisy), in
images per second per core. Every benchmark that quotes a decode limit calls this and names the
bytes it passed (bench.convert: its own re-encodes per max side and quality; bench.loaders: the
bytes each format stores)."""
from __future__ import annotations

import time

import numpy as np


def decode_rate_per_core(jpegs: list, repeats: int = 5) -> float:
    import cv2
    cv2.setNumThreads(1)
    arrays = [np.frombuffer(b, np.uint8) if isinstance(b, (bytes, bytearray)) else b for b in jpegs]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a in arrays:
            cv2.imdecode(a, cv2.IMREAD_COLOR)
        best = min(best, time.perf_counter() - t0)
    return len(arrays) / best
