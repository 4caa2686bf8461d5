"""Shared base: what a device can do (the catalog of peaks, bandwidth, memory and prices) and
what it reports while it works (NVML telemetry). Imports nothing else of fastmix."""
