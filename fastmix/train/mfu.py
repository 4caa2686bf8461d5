"""Model FLOPs utilization, nanoGPT-style: the model's analytic training FLOPs/s over a peak.

The peak is honest per device: a GPU's datasheet peak at the run's precision (the catalog); on a
CPU, which has no datasheet peak in a VM, this host's own measured matmul rate at that precision.
"""
from __future__ import annotations

import torch

from fastmix.devices.catalog import load_catalog, present_device
from fastmix.devices.ceilings import host_matmul_tflops
from fastmix.model.flops import convmixer_ops, totals


class MFU:
    def __init__(self, model_config, num_classes: int, device: torch.device, precision: str, world_size: int = 1):
        self.model_config, self.num_classes = model_config, num_classes
        self.peak_flops, self.source = self._peak(device, precision, world_size)
        self._flops_per_image: dict[int, float] = {}

    @staticmethod
    def _peak(device: torch.device, precision: str, world_size: int) -> tuple[float | None, str]:
        if device.type == "cpu":  # measured with the compute threads the run uses
            tflops = host_matmul_tflops(precision)
            return tflops * 1e12 * world_size, f"measured on this host: {tflops:.3g} TFLOP/s matmul"
        try:
            dev = present_device(load_catalog())
            return dev.peak_tflops(precision) * 1e12 * world_size, f"catalog: {dev.name}"
        except (KeyError, ValueError) as e:
            return None, f"peak unknown ({e})"

    def __call__(self, images_per_s: float, size: int) -> float | None:
        if self.peak_flops is None:
            return None
        if size not in self._flops_per_image:  # the op list is built once per resolution, not per log line
            ops = convmixer_ops(self.model_config, size, self.num_classes)
            self._flops_per_image[size] = totals(ops).train_model_flops
        return images_per_s * self._flops_per_image[size] / self.peak_flops
