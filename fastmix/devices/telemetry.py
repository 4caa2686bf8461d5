"""GPU telemetry through NVML (nvidia-ml-py), sampled in a background thread while work runs.

    with Telemetry(device_index=0) as tel:
        ...                       # the timed work
    tel.summary()                 # clocks, power, utilization, memory, temperature, throttling

Without a GPU or without the NVML library, `Telemetry` still works: it samples nothing and
`summary()` says why ({"available": False, "reason": ...}); nothing raises. A metric NVML
refuses (old driver, MIG, vGPU) is dropped and named under `unsupported`; the rest go on.
The GPU is found by the UUID torch reports for the CUDA device, not by NVML's own index.
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


def nvml_handle(lib, index: int) -> tuple[object, str]:
    """NVML's handle for CUDA device `index`, and how it was found.

    NVML numbers GPUs its own way and ignores CUDA_VISIBLE_DEVICES, so CUDA's index can name
    another GPU. The device is looked up by the UUID torch reports (then its PCI bus id);
    NVML's index is the last resort, and then `how` says so."""
    props = None
    try:
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
    except Exception:  # no usable CUDA runtime: NVML's own numbering is all there is
        props = None
    if props is not None:
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid:
            uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"  # NVML's spelling
            try:
                return lib.nvmlDeviceGetHandleByUUID(uuid), "uuid"
            except Exception:
                pass
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            try:
                pci = f"{getattr(props, 'pci_domain_id', 0):08X}:{bus:02X}:{getattr(props, 'pci_device_id', 0):02X}.0"
                return lib.nvmlDeviceGetHandleByPciBusId(pci), "pci bus id"
            except Exception:
                pass
    return lib.nvmlDeviceGetHandleByIndex(index), "nvml index (could not match torch's device)"


def _reasons(lib, h) -> list[str]:
    bits = lib.nvmlDeviceGetCurrentClocksEventReasons(h)
    return [name for attr, name in REASONS.items() if bits & getattr(lib, attr, 0)]


# Each metric alone: drivers before R535 lack clock-event reasons, MIG and vGPU lack power and
# utilization. A metric that fails is dropped (and named in the summary); the others go on.
METRICS = {
    "sm_clock_mhz": lambda lib, h: lib.nvmlDeviceGetClockInfo(h, lib.NVML_CLOCK_SM),
    "mem_clock_mhz": lambda lib, h: lib.nvmlDeviceGetClockInfo(h, lib.NVML_CLOCK_MEM),
    "power_w": lambda lib, h: lib.nvmlDeviceGetPowerUsage(h) / 1000,
    "gpu_util": lambda lib, h: lib.nvmlDeviceGetUtilizationRates(h).gpu,
    "mem_util": lambda lib, h: lib.nvmlDeviceGetUtilizationRates(h).memory,
    "memory_used_gb": lambda lib, h: lib.nvmlDeviceGetMemoryInfo(h).used / 1e9,
    "temperature_c": lambda lib, h: lib.nvmlDeviceGetTemperature(h, lib.NVML_TEMPERATURE_GPU),
    "throttle": _reasons,
}
INFO = {
    "name": lambda lib, h: lib.nvmlDeviceGetName(h),
    "driver": lambda lib, h: lib.nvmlSystemGetDriverVersion(),
    "memory_total_gb": lambda lib, h: lib.nvmlDeviceGetMemoryInfo(h).total / 1e9,
    "power_limit_w": lambda lib, h: lib.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
    "max_sm_clock_mhz": lambda lib, h: lib.nvmlDeviceGetMaxClockInfo(h, lib.NVML_CLOCK_SM),
}


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def device_info(index: int = 0) -> dict:
    """Name, driver, memory, power limit, max clock; a field NVML refuses is None and named in
    `unsupported`. Never raises: a calibration must not lose its measurements here."""
    lib, reason = nvml()
    if lib is None:
        return {"available": False, "reason": reason}
    try:
        h, found_by = nvml_handle(lib, index)
    except Exception as e:
        return {"available": False, "reason": f"no NVML handle for CUDA device {index} ({_why(e)})"}
    out, unsupported = {"available": True, "found_by": found_by}, {}
    for key, read in INFO.items():
        try:
            out[key] = read(lib, h)
        except Exception as e:
            out[key], unsupported[key] = None, _why(e)
    return {**out, "unsupported": unsupported}


class Telemetry:
    def __init__(self, device_index: int = 0, interval_s: float = 0.1):
        self.index, self.interval = device_index, interval_s
        self.samples: list[dict] = []
        self.unsupported: dict[str, str] = {}
        self.found_by, self.error = None, None
        self.lib, self.reason = nvml()
        self._stop = threading.Event()
        self._thread = None

    @property
    def available(self) -> bool:
        return self.lib is not None

    def _sample(self, h) -> dict:
        sample = {"t": time.monotonic()}
        for key, read in METRICS.items():
            if key in self.unsupported:
                continue
            try:
                sample[key] = read(self.lib, h)
            except Exception as e:
                self.unsupported[key] = _why(e)
        return sample

    def _run(self) -> None:
        try:
            h, self.found_by = nvml_handle(self.lib, self.index)
            while not self._stop.is_set():
                self.samples.append(self._sample(h))
                self._stop.wait(self.interval)
        except Exception as e:  # recorded, never silent: summary() reports it
            self.error = _why(e)

    def __enter__(self) -> "Telemetry":
        if self.available:
            self._thread = threading.Thread(target=self._run, name="nvml-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, windows: list[tuple[float, float]] | None = None) -> dict:
        """Median, min and max of each metric; with `windows` ((start, end) in time.monotonic()
        seconds), over the samples inside them only: the steady training steps, not start-up,
        compilation, evaluation or checkpointing."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        samples = self.samples if windows is None else \
            [s for s in self.samples if any(t0 <= s["t"] <= t1 for t0, t1 in windows)]
        out = {"available": True, "samples": len(samples), "found_by": self.found_by,
               "unsupported": dict(self.unsupported)}
        if windows is not None:
            out.update(windowed=True, samples_all=len(self.samples),
                       window_s=round(sum(t1 - t0 for t0, t1 in windows), 3))
        if self.error:
            out["error"] = self.error
        for key in METRICS:
            values = [s[key] for s in samples if key in s]
            if key == "throttle" or not values:
                continue
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        throttled = [s["throttle"] for s in samples if "throttle" in s]
        if throttled:
            seen: dict[str, int] = {}
            for names in throttled:
                for name in names:
                    seen[name] = seen.get(name, 0) + 1
            out["throttle_share"] = {k: v / len(throttled) for k, v in seen.items()}
        return out
