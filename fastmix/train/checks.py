"""TrainConfig's values checked before any work: each field's type (from its annotation) and range.

A recipe YAML or `--set` value of the wrong type, or out of range, is refused with one line that
names the key, so a run never starts on a value the optimizer or the loader would choke on later
(a string lr used to fail inside AdamW after the model was built).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing

CHOICES = {"schedule": ("onecycle", "cosine"), "precision": ("auto", "fp32", "bf16", "fp16"),
           "channels_last": ("auto", "on", "off"), "compile_mode": ("default", "reduce-overhead", "max-autotune")}
POSITIVE = ("epochs", "batch_size", "image_size", "val_image_size", "lr", "lr_base", "lr_base_batch", "opt_eps",
            "clip_grad", "crop_ratio", "log_every", "max_nonfinite", "max_steps_per_epoch", "threads",
            "time_budget_min", "progress_every_s")
NON_NEGATIVE = ("workers", "weight_decay", "warmup_epochs", "mixup", "cutmix", "seed")
FRACTION = ("label_smoothing", "reprob", "ema_decay")  # in [0, 1]


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the key."""


def unknown_keys(keys, known, where: str) -> None:
    """Refuse keys that are not fields, naming the nearest field and all of them."""
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    key = unknown[0]
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ConfigError(f"{where}: unknown key {key!r}; {hint}keys: {', '.join(sorted(known))}")


def _as(value, kind):
    """`value` as `kind` (int, float, str, bool, dict, tuple, NoneType), or ConfigError."""
    if kind is type(None):
        if value is None:
            return None
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string: a number all the same
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif isinstance(value, kind):
        return value
    raise TypeError


def _typed(key: str, value, hint):
    kinds = typing.get_args(hint) or (hint,)
    for kind in kinds:
        try:
            return _as(value, kind)
        except TypeError:
            continue
    names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def validate(cfg) -> None:
    """Coerce numbers where the field wants a float, refuse wrong types and nonsense values."""
    hints = typing.get_type_hints(type(cfg))
    if isinstance(cfg.channels_last, bool):  # YAML 1.1 reads on/off (`--set channels_last=off`) as booleans
        cfg.channels_last = "on" if cfg.channels_last else "off"
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, _typed(f.name, getattr(cfg, f.name), hints[f.name]))
    for key in POSITIVE + NON_NEGATIVE + FRACTION:
        value = getattr(cfg, key)
        if value is None:
            continue
        if not math.isfinite(value) or (key in POSITIVE and value <= 0) or value < 0 or (key in FRACTION and value > 1):
            rule = "in [0, 1]" if key in FRACTION else "> 0" if key in POSITIVE else ">= 0"
            raise ConfigError(f"{key}: must be {rule}, got {value!r}")
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(choices)}")
    micro = cfg.micro_batch.values() if isinstance(cfg.micro_batch, dict) else [cfg.micro_batch]
    if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in micro):
        raise ConfigError(f"micro_batch: must be a positive integer (or {{variant: integer}}), got {cfg.micro_batch!r}")
    low_high = cfg.crop_scale
    if len(low_high) != 2 or not all(isinstance(s, (int, float)) for s in low_high) or not 0 < low_high[0] <= low_high[1] <= 1:
        raise ConfigError(f"crop_scale: expected [low, high] with 0 < low <= high <= 1, got {list(low_high)!r}")
    if cfg.progressive is not None:
        progressive(cfg.progressive)
    model_fields(cfg.model, cfg.model_overrides)


def progressive(value: dict) -> None:
    """{start: pixels, until: fraction of the epochs}, as the trainer's image_size_at reads it."""
    unknown_keys(value, ("start", "until"), "progressive")
    start, until = value.get("start"), value.get("until", 0.75)
    if (isinstance(start, bool) or not isinstance(start, int) or start < 32 or isinstance(until, bool)
            or not isinstance(until, (int, float)) or not 0 < until <= 1):
        raise ConfigError(f"progressive: expected {{start: pixels >= 32, until: fraction in (0, 1]}}, got {value!r}")


def model_fields(model: str, overrides: dict) -> None:
    """The model name and its overrides, checked here rather than when the network is built: a sweep
    cell with kernel=abc is refused before the first cell trains, not minutes into the sweep."""
    from fastmix.model.convmixer import ACTIVATIONS, VARIANTS, ConvMixerConfig
    if model not in VARIANTS:
        raise ConfigError(f"model: {model!r} is not one of {', '.join(VARIANTS)}")
    unknown_keys(overrides, [f.name for f in dataclasses.fields(ConvMixerConfig)], "model_overrides")
    for key, value in overrides.items():
        if key == "act":
            if value not in ACTIVATIONS:
                raise ConfigError(f"model_overrides.act: {value!r} is not one of {', '.join(ACTIVATIONS)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"model_overrides.{key}: must be a positive integer, got {value!r}")
