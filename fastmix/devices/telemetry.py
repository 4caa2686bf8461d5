"""GPU telemetry through NVML (nvidia-ml-py), sampled in a background thread while work runs.

    with Telemetry(device_index=0) as tel:
        ...                       # the timed work
    tel.summary()                 # clocks, power, utilization, memory, temperature, throttling

Without a GPU or without the NVML library, `Telemetry` still works: it samples nothing and
`summary()` says why ({"available": False, "reason": ...}); nothing raises.
"""
from __future__ import annotations

import statistics
import threading
import time

# NVML "clocks event" (throttle) reason bits worth naming in a report.
REASONS = {
    "nvmlClocksEventReasonGpuIdle": "idle",
    "nvmlClocksEventReasonApplicationsClocksSetting": "applications clocks setting",
    "nvmlClocksEventReasonSwPowerCap": "power cap",
    "nvmlClocksEventReasonHwSlowdown": "hardware slowdown",
    "nvmlClocksEventReasonSyncBoost": "sync boost",
    "nvmlClocksEventReasonSwThermalSlowdown": "software thermal slowdown",
    "nvmlClocksEventReasonHwThermalSlowdown": "hardware thermal slowdown",
    "nvmlClocksEventReasonHwPowerBrakeSlowdown": "power brake",
}


def nvml():
    """(pynvml module, None) when NVML initializes, else (None, a reason)."""
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound on machines without an NVIDIA driver
        return None, f"NVML unavailable ({type(e).__name__}: {e}); no GPU telemetry"
    return pynvml, None


def device_info(index: int = 0) -> dict:
    """Name, driver and NVML versions, memory, power limit; or why there are none."""
    lib, reason = nvml()
    if lib is None:
        return {"available": False, "reason": reason}
    h = lib.nvmlDeviceGetHandleByIndex(index)
    return {"available": True, "name": lib.nvmlDeviceGetName(h), "driver": lib.nvmlSystemGetDriverVersion(),
            "memory_total_gb": lib.nvmlDeviceGetMemoryInfo(h).total / 1e9,
            "power_limit_w": lib.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            "max_sm_clock_mhz": lib.nvmlDeviceGetMaxClockInfo(h, lib.NVML_CLOCK_SM)}


class Telemetry:
    def __init__(self, device_index: int = 0, interval_s: float = 0.1):
        self.index, self.interval = device_index, interval_s
        self.samples: list[dict] = []
        self.lib, self.reason = nvml()
        self._stop = threading.Event()
        self._thread = None

    @property
    def available(self) -> bool:
        return self.lib is not None

    def _sample(self, h) -> dict:
        lib = self.lib
        util = lib.nvmlDeviceGetUtilizationRates(h)
        reasons = lib.nvmlDeviceGetCurrentClocksEventReasons(h)
        return {"t": time.monotonic(), "sm_clock_mhz": lib.nvmlDeviceGetClockInfo(h, lib.NVML_CLOCK_SM),
                "mem_clock_mhz": lib.nvmlDeviceGetClockInfo(h, lib.NVML_CLOCK_MEM),
                "power_w": lib.nvmlDeviceGetPowerUsage(h) / 1000, "gpu_util": util.gpu, "mem_util": util.memory,
                "memory_used_gb": lib.nvmlDeviceGetMemoryInfo(h).used / 1e9,
                "temperature_c": lib.nvmlDeviceGetTemperature(h, lib.NVML_TEMPERATURE_GPU),
                "throttle": [name for attr, name in REASONS.items() if reasons & getattr(lib, attr, 0)]}

    def _run(self) -> None:
        h = self.lib.nvmlDeviceGetHandleByIndex(self.index)
        while not self._stop.is_set():
            self.samples.append(self._sample(h))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Telemetry":
        if self.available:
            self._thread = threading.Thread(target=self._run, name="nvml-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        if not self.samples:
            return {"available": True, "samples": 0}
        out = {"available": True, "samples": len(self.samples)}
        for key in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "gpu_util", "mem_util", "memory_used_gb",
                    "temperature_c"):
            values = [s[key] for s in self.samples]
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        seen: dict[str, int] = {}
        for s in self.samples:
            for name in s["throttle"]:
                seen[name] = seen.get(name, 0) + 1
        out["throttle_share"] = {k: v / len(self.samples) for k, v in seen.items()}
        return out
