"""Weights to evaluate: fastmix checkpoints (model or EMA), timm state_dicts, timm's pretrained.

    model, info = load_weights("runs/x/best.pt", classes)                       # fastmix checkpoint
    model, info = load_weights("convmixer_768_32.pth", classes, "convmixer_768_32")   # timm file
    model, info = load_weights("timm:convmixer_1536_20.in1k", classes)          # timm's download

`classes` is the data's classes.json. A 1000-way ImageNet-1k head evaluated on a subset keeps
only the subset's rows, in the subset's label order (ImageNet-1k's label i is the i-th WNID in
sorted order, timm's ImageNetInfo list), so it neither fails nor scores against the wrong rows.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastmix.model.convmixer import create_model

from . import checkpoint

IMAGENET1K = 1000


def imagenet1k_wnids() -> list[str]:
    from timm.data import ImageNetInfo
    return list(ImageNetInfo().label_names())


def subset_head(head: nn.Linear, wnids: list[str], source: str) -> nn.Linear:
    """The rows of a 1000-way ImageNet-1k classifier for `wnids`, in that order."""
    index = {w: i for i, w in enumerate(imagenet1k_wnids())}
    missing = [w for w in wnids if w not in index]
    if missing:
        raise ValueError(f"{source}: has a {IMAGENET1K}-way ImageNet-1k head, but {len(missing)} classes of the "
                         f"data are not ImageNet-1k WNIDs, so it cannot be mapped: {missing[:5]}")
    rows = torch.tensor([index[w] for w in wnids])
    out = nn.Linear(head.in_features, len(wnids), bias=head.bias is not None)
    with torch.no_grad():
        out.weight.copy_(head.weight[rows])
        if head.bias is not None:
            out.bias.copy_(head.bias[rows])
    return out.to(head.weight.device)


def _fit_head(model: nn.Module, head_name: str, classes: list[dict], source: str) -> dict:
    head = model.get_submodule(head_name)
    if head.out_features == len(classes):
        return {"head": f"{head.out_features} classes, as the data"}
    if head.out_features != IMAGENET1K:
        raise ValueError(f"{source}: its head has {head.out_features} classes and the data {len(classes)}; "
                         f"only a {IMAGENET1K}-way ImageNet-1k head can be mapped onto a subset")
    parent, _, leaf = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf,
            subset_head(head, [c["wnid"] for c in classes], source))
    return {"head": f"ImageNet-1k's {IMAGENET1K} rows mapped onto the data's {len(classes)} WNIDs"}


def _read_state(path: Path, trust: bool = False) -> dict:
    """Tensors only, never code from the file (checkpoint.load), unless the caller trusts it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    return checkpoint.load(path, trust=trust, missing="not found")


def load_weights(spec: str, classes: list[dict], model_name: str | None = None,
                 ema: bool = False, trust: bool = False, other_classes: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode with a head for `classes`, what was loaded). `trust` unpickles the
    file fully (it may run code); without it, a file that needs more than tensors is refused.
    A fastmix checkpoint trained on other classes than `classes` is refused unless `other_classes`."""
    if spec.startswith("timm:"):
        import timm
        model = timm.create_model(spec[5:], pretrained=True)
        head_name = next(n for n, m in model.named_modules() if m is model.get_classifier())
        return model.eval(), {"weights": spec, "model": spec[5:], **_fit_head(model, head_name, classes, spec)}
    path = Path(spec)
    state = _read_state(path, trust)
    info = {"weights": str(path)}
    if isinstance(state, dict) and "config" in state and "model" in state:  # a fastmix checkpoint
        config = checkpoint.check_weights(state, path)  # its config as --set values are checked, one line if not
        differ = checkpoint.classes_differ(state.get("classes"), checkpoint.class_ids(classes))
        if differ and not other_classes:
            raise ValueError(f"{path}: {differ}; pass --other-classes to score it on these anyway")
        if ema and state.get("ema") is None:
            raise ValueError(f"{path}: the run kept no EMA weights (ema: false)")
        weights = state["ema"] if ema else state["model"]
        # ModelEmaV3 keeps its copy as `.module`
        weights = {k.removeprefix("module."): v for k, v in weights.items()} if ema else weights
        name, overrides = model_name or config["model"], config.get("model_overrides", {})
        epoch = state.get("epoch")  # the checkpoint keeps the 0-based index; logs count from 1
        info.update(kind="fastmix checkpoint", epoch=epoch + 1 if isinstance(epoch, int) else epoch, ema=ema,
                    config=config, classes=("not recorded (an older checkpoint)" if state.get("classes") is None
                                            else f"other than the data's: {differ}" if differ else "the data's"))
    else:
        for key in ("state_dict", "model"):  # common wrappers around a timm state_dict
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not model_name:
            raise ValueError(f"{path}: a plain state_dict; name its variant with --model")
        weights, name, overrides = state, model_name, {}
        info.update(kind="state_dict")
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: holds a {type(weights).__name__}, not a state_dict")
    if "head.weight" not in weights:
        raise ValueError(f"{path}: no head.weight, not a ConvMixer state_dict (keys: {list(weights)[:5]})")
    model = create_model(name, num_classes=weights["head.weight"].shape[0], **overrides)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit {name} {overrides or ''}: {' '.join(str(e).split())[:300]}") from None
    info.update(model=name, overrides=overrides, **_fit_head(model, "head", classes, str(path)))
    return model.eval(), info
