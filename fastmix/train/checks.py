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


SEED_LIMIT = 2**32
RAND_AUGMENT_M = 10  # timm's magnitude scale (_LEVEL_DENOM): it clips anything above, DALI fails on it
# make_loader options the trainer sets from the config, each from the key named (None: from the run itself)
TRAINER_SETS = {"data": "data", "split": None, "batch_size": "micro_batch", "image_size": "image_size",
                "device": "device", "dtype": "precision", "rank": None, "world_size": None, "workers": "workers",
                "seed": "seed", "imagefolder": "imagefolder", "num_classes": None, "crop_ratio": "crop_ratio",
                "last_batch": None, "scale": "crop_scale", "hflip": "hflip", "rand_augment": "rand_augment",
                "train": None}


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
    model_fits(cfg)
    if cfg.crop_ratio > 1:  # resize_to below image_size: the center crop would be larger than the image
        raise ConfigError(f"crop_ratio: must be in (0, 1] (the val crop's share of the resized side), got {cfg.crop_ratio!r}")
    if cfg.seed >= SEED_LIMIT:  # torch.manual_seed and the loaders' generators take 64-bit seeds plus offsets
        raise ConfigError(f"seed: must be below 2**32, got {cfg.seed!r}")
    if cfg.rand_augment is not None:
        rand_augment(cfg.rand_augment)
    loader_options(cfg.backend, cfg.loader_options)


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


def model_fits(cfg) -> None:
    """Every image size the run uses holds at least one patch: a 1 px image or a 1000 px patch
    would fail inside the first convolution, after the model and loaders were built."""
    from fastmix.model.convmixer import VARIANTS
    patch = cfg.model_overrides.get("patch", VARIANTS[cfg.model].patch)
    sizes = {"image_size": cfg.image_size, "val_image_size": cfg.val_image_size,
             "progressive.start": (cfg.progressive or {}).get("start")}
    for key, size in sizes.items():
        if size is not None and size < patch:
            where = "model_overrides.patch" if "patch" in cfg.model_overrides else f"{cfg.model}'s patch"
            raise ConfigError(f"{key}: {size} px is smaller than {where} ({patch} px); the model needs at least one patch")


def rand_augment(policy: str) -> None:
    """timm's RandAugment string, parsed as the loaders parse it, each field in its range."""
    from loaders.common import parse_rand_augment
    try:
        ra = parse_rand_augment(policy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= ra["m"] <= RAND_AUGMENT_M or ra["n"] < 1 or ra["mstd"] < 0 or ra["inc"] not in (0, 1):
        raise ConfigError(f"rand_augment {policy!r}: expected m in [0, {RAND_AUGMENT_M}], n >= 1, mstd >= 0, "
                          f"inc 0 or 1 (got m={ra['m']}, n={ra['n']}, mstd={ra['mstd']}, inc={ra['inc']})")


def loader_options(backend: str, options: dict) -> None:
    """Each key a make_loader option that `backend` reads and the trainer does not set itself,
    with a value of its type that the loader's config accepts."""
    import loaders
    from loaders.common import LoaderConfig
    if backend not in loaders.BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(loaders.BACKENDS)}")
    for key in options:
        if key in TRAINER_SETS:
            source = f"set it with {TRAINER_SETS[key]}" if TRAINER_SETS[key] else "it is not a recipe setting"
            raise ConfigError(f"loader_options.{key}: the trainer sets this loader option itself; {source}")
    unknown_keys(options, [f.name for f in dataclasses.fields(LoaderConfig) if f.name not in TRAINER_SETS],
                 "loader_options")
    reads, hints = loaders.options(backend), typing.get_type_hints(LoaderConfig)
    for key, value in options.items():
        if key not in reads:
            raise ConfigError(f"loader_options.{key}: the {backend} backend does not read it "
                              f"(its options: {', '.join(k for k in reads if k not in TRAINER_SETS)})")
        if typing.get_origin(hints[key]) is tuple:
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in value)
                    and value[0] <= value[1]):
                raise ConfigError(f"loader_options.{key}: expected [low, high], 0 < low <= high, got {value!r}")
        else:
            options[key] = _typed(f"loader_options.{key}", value, hints[key])
    try:
        LoaderConfig(data="", **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"loader_options: {e}") from None
    share = options.get("memory_share", 0.5), options.get("hw_decoder_load", 0.5)
    if not (0 < share[0] <= 1 and 0 <= share[1] <= 1) or options.get("padding", 0) < 0:
        raise ConfigError(f"loader_options: expected memory_share in (0, 1], hw_decoder_load in [0, 1] and "
                          f"padding >= 0, got {options!r}")
    choices = {"order": ("random", "quasi_random"), "decode_device": ("auto", "mixed", "cpu")}
    for key, allowed in choices.items():
        if key in options and options[key] not in allowed:
            raise ConfigError(f"loader_options.{key}: {options[key]!r} is not one of {', '.join(allowed)}")


def on_this_machine(cfg) -> None:
    """What depends on the machine the run starts on (not checked where a saved config is read
    elsewhere): more compute threads than CPUs made torch allocate per-thread buffers until it
    failed, reported as something else."""
    import os
    cpus = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cpus:
        raise ConfigError(f"threads: {cfg.threads} is more than this machine's {cpus} CPUs")


def out_folder(out) -> None:
    """The run folder can be one: not a file, nor under one, and writable where it is or will be
    created (checked, not created: a start that fails later leaves nothing behind)."""
    import os
    from pathlib import Path
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "" if existing == out else f" ({existing} is a file)"
        raise ConfigError(f"out: {out} is not a folder{where}; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"out: {out} cannot be written ({existing} is read-only to this user); choose another --out")
