"""One loader interface over every backend: `make_loader(backend, data, split, ...)`.

    for images, labels in make_loader("ffcv", "data/imagenet100", "train", batch_size=64,
                                      image_size=224, device="cuda", dtype="float16"):
        ...

Backends: pil (ImageFolder tree), pil-wds (the shards), ffcv, opencv (the .beton decoded by
OpenCV on threads), dali, nvjpeg, resident (the split decoded once into device memory), synthetic.
See loaders/common.py for the options every backend shares.
"""
from __future__ import annotations

from .common import LoaderConfig

BACKENDS = ("pil", "pil-wds", "ffcv", "opencv", "dali", "nvjpeg", "resident", "synthetic")


def make_loader(backend: str, data: str, split: str = "train", batch_size: int = 64,
                image_size: int = 224, device: str = "cpu", **options):
    cfg = LoaderConfig(data=str(data), split=split, batch_size=batch_size, image_size=image_size,
                       device=device, **options)
    if backend in ("pil", "pil-wds"):
        from .pil import PILLoader
        return PILLoader(cfg, from_shards=backend == "pil-wds")
    if backend == "ffcv":
        from .ffcv_loader import FFCVLoader
        return FFCVLoader(cfg)
    if backend == "opencv":
        from .opencv_loader import OpenCVLoader
        return OpenCVLoader(cfg)
    if backend == "dali":
        from .dali import DALILoader
        return DALILoader(cfg)
    if backend == "nvjpeg":
        from .nvjpeg import NvJPEGLoader
        return NvJPEGLoader(cfg)
    if backend == "resident":
        from .resident import ResidentLoader
        return ResidentLoader(cfg)
    if backend == "synthetic":
        from .synthetic import SyntheticLoader
        return SyntheticLoader(cfg)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


# The LoaderConfig fields only some backends read (every other field is read by all but synthetic,
# which reads batch_size, image_size, device, dtype, seed, last_batch and num_classes alone).
OWN_OPTIONS = {"pil": ("imagefolder",), "ffcv": ("order", "os_cache"), "dali": ("decode_device", "hw_decoder_load"),
               "resident": ("crop", "padding", "memory_share"), "synthetic": ("num_classes",)}


def options(backend: str) -> tuple[str, ...]:
    """The make_loader options `backend` reads: one it does not read would be dropped unused."""
    import dataclasses
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    own = {name for names in OWN_OPTIONS.values() for name in names}
    common = [f.name for f in dataclasses.fields(LoaderConfig) if f.name not in own]
    if backend == "synthetic":
        common = ["batch_size", "image_size", "device", "dtype", "seed", "last_batch"]
    return (*common, *OWN_OPTIONS.get(backend, ()))


# What each backend needs beyond torch: the modules whose import loads its compiled parts.
# `import ffcv` loads ffcv._libffcv (and libturbojpeg, OpenCV's libraries); nvidia.dali.backend
# is DALI's C++ library. opencv reads the .beton through ffcv's Reader.
NEEDS = {"ffcv": ("ffcv", "ffcv.libffcv"), "opencv": ("cv2", "ffcv", "ffcv.libffcv"),
         "dali": ("nvidia.dali", "nvidia.dali.backend"), "nvjpeg": ("torchvision.io",)}


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here, or None. Decided by importing its compiled parts, not by
    finding the package: an ffcv whose extension or system library fails to load is unavailable,
    with the import error as the reason. (`dali-gpu`/`dali-cpu` are DALI's decode devices.)"""
    import importlib
    name = "dali" if backend.startswith("dali") else backend.partition(":")[0].partition("@")[0]
    for module in NEEDS.get(name, ()):
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or OSError from a shared library ctypes cannot load
            first = (str(e).splitlines() or [""])[0]
            return f"{module} does not import ({type(e).__name__}: {first})"
    return None


__all__ = ["BACKENDS", "LoaderConfig", "make_loader", "options", "unavailable"]
