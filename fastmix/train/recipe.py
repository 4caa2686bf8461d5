"""One training config type, filled from a recipe YAML (fastmix/train/recipes/*.yaml) plus overrides.

    cfg = load_recipe("t4", model="convmixer_768_32", data="data/imagenet100")

Defaults are the paper's ImageNet recipe (timm's train.py flags in the ConvMixer README):
AdamW eps 1e-3, lr 0.01 at batch 640 (scaled linearly), one-cycle schedule, label smoothing
0.1, mixup 0.5 / cutmix 0.5, RandAugment m9 mstd0.5 inc1, random erasing 0.25, clip 1.0.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmix import safeyaml

from . import checks

RECIPES = Path(__file__).parent / "recipes"


@dataclass
class TrainConfig:
    # data: a converted folder (tools/convert_subset.py) read by one loaders/ backend
    data: str = "data/demo"
    backend: str = "dali"
    imagefolder: str | None = None           # pil backend: the original ImageFolder tree
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    # model
    model: str = "convmixer_768_32"
    model_overrides: dict = field(default_factory=dict)  # e.g. {dim: 64, depth: 2} for tiny runs
    # batch: micro_batch x accumulation steps = batch_size (the optimizer's batch, per process)
    batch_size: int = 64
    micro_batch: int | dict = 64             # int, or {variant: int} (the t4 recipe)
    epochs: int = 100                        # with time_budget_min: the most epochs
    time_budget_min: float | None = None     # fit the epochs to this wall clock, measured here (budget.py)
    image_size: int = 224
    val_image_size: int | None = None        # default: image_size
    progressive: dict | None = None          # {start: 160, until: 0.75}: size ramps start -> image_size
    # optimizer and schedule
    lr: float | None = None                  # default: lr_base * batch_size * world / lr_base_batch
    lr_base: float = 0.01
    lr_base_batch: int = 640
    weight_decay: float = 2e-5               # timm's default, which the authors' command kept
    opt_eps: float = 1e-3
    schedule: str = "onecycle"               # onecycle | cosine
    warmup_epochs: float = 0.0               # cosine only
    clip_grad: float | None = 1.0
    # regularization
    label_smoothing: float = 0.1
    mixup: float = 0.5
    cutmix: float = 0.5
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25                     # random erasing probability
    crop_scale: tuple = (0.08, 1.0)
    hflip: bool = True
    crop_ratio: float = 224 / 256            # val: resize the shorter side to size/crop_ratio, center crop
    loader_options: dict = field(default_factory=dict)  # any other make_loader option, e.g. {crop: pad}
    ema: bool = False
    ema_decay: float = 0.9999
    # speed (see fastmix/train/speed.py)
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    precision: str = "auto"                  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"              # auto (measured) | on | off
    compile: bool = False
    compile_mode: str = "default"            # default | reduce-overhead | max-autotune
    threads: int | None = None               # CPU compute threads (torch intra-op); default: every core
    # run
    out: str = "runs/demo"
    seed: int = 0
    log_every: int = 10                      # optimizer steps between JSONL lines (and progress lines)
    progress_every_s: float = 30.0           # off a terminal: the longest silence between progress lines
    tensorboard: bool = True                 # event files in OUT/tensorboard (the `tensorboard` extra)
    max_nonfinite: int = 5                   # stop after this many non-finite losses in a row
    max_steps_per_epoch: int | None = None   # cut epochs short (smoke tests, GPU benchmarks)

    def __post_init__(self):
        checks.validate(self)  # types and ranges, one line naming the key (ConfigError)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch "
                             f"{self.micro_batch_size} ({self.model})")

    @property
    def micro_batch_size(self) -> int:
        if isinstance(self.micro_batch, dict):
            if self.model not in self.micro_batch:
                raise ValueError(f"micro_batch has no entry for {self.model} (has {sorted(self.micro_batch)})")
            return int(self.micro_batch[self.model])
        return int(self.micro_batch)

    @property
    def accum_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recipe not found")
        return path
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name!r}; built in: {known}, or pass a .yaml path")
    return path


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def load_recipe(name: str | None = None, **overrides) -> TrainConfig:
    """A recipe's values over TrainConfig's defaults, then the non-None `overrides` over both."""
    return recipe_config(name, {k: v for k, v in overrides.items() if v is not None})


def recipe_config(name: str | None, overrides: dict) -> TrainConfig:
    """A recipe's values over TrainConfig's defaults, then every one of `overrides` (None included:
    `--set rand_augment=null` switches RandAugment off). Without an `out` override the run folder
    is per recipe and model: <the recipe's out, else runs/<recipe>>-<model>, so runs of two models
    never share one."""
    values = {}
    if name:
        path = recipe_path(name)
        values = safeyaml.load_mapping(path, "a mapping of TrainConfig keys")  # no aliases (safeyaml.py)
        checks.unknown_keys(values, FIELDS, str(path))
    checks.unknown_keys(overrides, FIELDS, "--set")
    values = {**values, **overrides}
    if name and "out" not in overrides:
        model = values.get("model", TrainConfig.model)
        values["out"] = f"{values.get('out') or f'runs/{Path(name).stem}'}-{model}"
    return TrainConfig(**values)


def saved_config(values, where: str) -> TrainConfig:
    """A config read from a file (a checkpoint's, a run's config.yaml) checked as --set values are,
    any refusal one line naming `where` and the key."""
    if not isinstance(values, dict):
        raise checks.ConfigError(f"{where}: expected a mapping of TrainConfig keys, got a {type(values).__name__}")
    try:
        checks.unknown_keys(values, FIELDS, where)
        return TrainConfig(**values)
    except checks.ConfigError as e:
        raise checks.ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    except (ValueError, TypeError) as e:
        raise checks.ConfigError(f"{where}: {e}") from None


def merge_flags(sets: dict, flags: dict) -> dict:
    """--set values and the flags that were given (not None), one dict; a key given both ways with
    different values is refused rather than silently resolved."""
    flags = {k: v for k, v in flags.items() if v is not None}
    for key in sorted(set(sets) & set(flags)):
        if sets[key] != flags[key]:
            raise checks.ConfigError(f"--{key.replace('_', '-')} {flags[key]} and --set {key}={sets[key]} disagree; give one")
    return {**sets, **flags}


def parse_sets(pairs: list[str]) -> dict:
    """`--set key=value` pairs; values parsed as YAML (numbers, booleans, lists, dicts)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise checks.ConfigError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip().replace("-", "_")] = safeyaml.loads(value, f"--set {pair!r}")
        except safeyaml.YAMLRefused as e:
            raise checks.ConfigError(str(e).replace(": not YAML", ": the value is not YAML", 1)) from None
    return out


def image_size_at(cfg: TrainConfig, epoch: int, epochs: int | None = None) -> int:
    """Progressive resizing: `start` -> image_size by `until` x epochs, in steps of 32 px (FFCV's
    ImageNet schedule), or of 8 px below 128 px, where 32 px steps would leave two sizes.
    `epochs`: in a run of that many epochs instead of cfg.epochs (a time budget's plans)."""
    if not cfg.progressive:
        return cfg.image_size
    start, until = int(cfg.progressive["start"]), float(cfg.progressive.get("until", 0.75))
    end_epoch = max(1, round(until * (cfg.epochs if epochs is None else epochs)) - 1)
    size = np.interp(epoch, [0, end_epoch], [start, cfg.image_size])
    step = 32 if cfg.image_size >= 128 else 8
    return int(min(cfg.image_size, max(32, size // step * step)))
