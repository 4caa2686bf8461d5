"""fastmix: fast data loading and performance engineering for ConvMixer on one small GPU.

The package follows the pipeline, one subpackage per stage; a stage imports only stages below it
(tests/test_layering.py checks this):

    fastmix.model, fastmix.devices   shared base: the model and its per-op costs; device facts
    fastmix.data                     1. convert: ImageNet subset -> shards + .beton + manifest
    loaders                          2. load: make_loader(backend, ...) for every backend
    fastmix.train                    3. train: recipes, speed tricks, the loop
    fastmix.perf                     4. profile and cost: measurement, calibration, predictions

The public entry points, importable from `fastmix` directly (loaded on first use):

    from fastmix import convert, ConvertConfig          # fastmix.data.convert
    from fastmix import create_model, VARIANTS          # fastmix.model.convmixer
    from fastmix import load_recipe, TrainConfig        # fastmix.train.recipe
    from fastmix import Trainer                         # fastmix.train.trainer
    from fastmix import predict_run, predict_step       # fastmix.perf.cost
    from loaders import make_loader                     # the loaders package
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "convert": "fastmix.data.convert", "ConvertConfig": "fastmix.data.convert",
    "create_model": "fastmix.model.convmixer", "VARIANTS": "fastmix.model.convmixer",
    "load_recipe": "fastmix.train.recipe", "TrainConfig": "fastmix.train.recipe",
    "Trainer": "fastmix.train.trainer",
    "predict_run": "fastmix.perf.cost", "predict_step": "fastmix.perf.cost",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    # Lazy: `import fastmix` stays cheap (converter workers import it), and no stage is
    # imported before it is asked for.
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fastmix' has no attribute {name!r}")
