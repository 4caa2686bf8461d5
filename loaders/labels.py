"""Every label a loader hands out is one of the data's classes: 0..N-1, N the classes in classes.json.

A label outside them (a damaged `.cls`, a `.beton` written for other data) would otherwise surface
deep in the model or in mixup ("index 9 is out of bounds"), naming neither file nor sample. Each
backend checks the labels it will hand out once, vectorized, where it loads them: ShardIndex
(pil-wds, resident, dali, nvjpeg), the .beton's table (ffcv, opencv); pil's labels are its class
folders' places in classes.json, in range by construction. DALI re-reads each `.cls` every epoch, so it also checks every batch (on the CPU, before
the labels reach the device). The error is one line naming the file: shard and member, or
.beton and sample index.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np


LABEL_DIGITS = 8  # a `.cls` holds the label as 1..8 ASCII digits (DALI pads them to this width)


class LabelError(ValueError):
    """A stored label that is not one of the data's classes; the message names its file."""


def class_count(data: str | Path) -> int:
    """How many classes the converted folder `data` has (its classes.json, as the trainer counts them)."""
    path = Path(data) / "classes.json"
    try:
        classes = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; convert the data first (tools/convert_subset.py)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: not a list of classes")
    return len(classes)


def first_outside(labels, count: int) -> int | None:
    """Position of the first label outside 0..count-1, or None: one vectorized pass (numpy, or a
    CPU torch tensor viewed as numpy)."""
    values = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    bad = np.flatnonzero((values < 0) | (values >= count))
    return int(bad[0]) if len(bad) else None


def check_labels(labels, count: int, name: Callable[[int], str]) -> None:
    """Raise LabelError naming (by `name(i)`) the first label outside 0..count-1."""
    i = first_outside(labels, count)
    if i is not None:
        raise LabelError(f"{name(i)}: label {int(labels[i])} is not one of the data's classes "
                         f"(0..{count - 1}: classes.json lists {count})")


def check_beton_labels(path: Path, labels, count: int) -> None:
    """A .beton's labels (its metadata table, as ffcv reads it), a bad one named by sample index."""
    check_labels(labels, count, lambda i: f"{path}: sample {i}")


def not_a_label(where: str, raw: bytes) -> LabelError:
    """A `.cls` whose bytes are no label at all (not 1..LABEL_DIGITS ASCII digits)."""
    return LabelError(f"{where}: {raw[:20]!r} is not a label (1 to {LABEL_DIGITS} ASCII digits)")
