"""DALI's failures named by file: a label that is not a class, a JPEG that does not decode.

DALI reports a bad JPEG as its decoder's words ("nvImageCodec failure: '#4'") for a whole batch,
and hands labels over as padded ASCII: neither names a shard or member. Here the labels of each
batch are parsed and checked on the CPU (vectorized) against the reader's source_info, and a
decode failure replays the failed batches through the reader alone to find the member.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from .common import parse_ascii_labels
from .labels import LabelError, check_labels, not_a_label
from .shardnames import CorruptSample


def source_member(row: torch.Tensor | np.ndarray, ext: str = "jpg") -> str:
    """One sample's padded source_info ("<shard>:<offset>:<key>.jpg") -> "<shard>: member <key>.<ext>"."""
    info = bytes(np.asarray(row, dtype=np.uint8)).rstrip(b"\0").decode("utf-8", "replace")
    tar, _, member = info.rsplit(":", 2) if info.count(":") >= 2 else (info, "", "?")
    return f"{tar}: member {member.rpartition('.')[0] or member}.{ext}"


def labels_of(padded: torch.Tensor, source: torch.Tensor, count: int) -> torch.Tensor:
    """A batch's `.cls` rows (CPU uint8, zero-padded ASCII) -> int64 labels, each checked to be
    1..8 digits and one of `count` classes; a LabelError names the first bad member."""
    nondigit = ((padded != 0) & ((padded < 48) | (padded > 57))).any(1) | (padded[:, 0] == 0)
    if bool(nondigit.any()):
        i = int(nondigit.nonzero()[0, 0])
        raise not_a_label(source_member(source[i], "cls"), bytes(padded[i].numpy()).rstrip(b"\0"))
    labels = parse_ascii_labels(padded)
    check_labels(labels, count, lambda i: source_member(source[i], "cls"))
    return labels


def dali_reason(error: BaseException) -> str:
    """DALI's own words for a failure, without its traceback and pipeline boilerplate."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines
    keep = [x for x in after if not x.startswith(("Current pipeline object", "Critical error"))]
    return " ".join(keep) or (lines[-1] if lines else type(error).__name__)


def replayed(loader, first: int, count: int) -> list[tuple[str, bytes]]:
    """(member, JPEG bytes) of batches first..first+count-1 of the loader's epoch, read again by a
    pipeline of its (seeded) reader alone: no decode."""
    from nvidia.dali import pipeline_def
    cfg, epoch = loader.cfg, loader.built_epoch

    @pipeline_def(batch_size=cfg.batch_size, num_threads=1, device_id=None, seed=loader.seed(epoch),
                  prefetch_queue_depth=1)
    def pipe():
        jpg, _, source = loader.read(epoch)
        return jpg, source

    p = pipe()
    p.build()
    out = []
    for k in range(min(first + count, math.ceil(loader.num_samples / cfg.batch_size))):
        jpg, source = p.run()
        if k >= first:
            out += [(source_member(np.array(source.at(i))), np.array(jpg.at(i)).tobytes()) for i in range(len(jpg))]
    return out


def undecodable(loader, done: int, error: RuntimeError) -> BaseException:
    """The error to raise for a DALI failure after `done` batches of an epoch: for a decode failure,
    CorruptSample naming the member that PIL cannot decode either; anything else as DALI raised it."""
    from PIL import Image
    if "decoders." not in str(error):
        return error
    reason = dali_reason(error)
    members = replayed(loader, done, loader.prefetch + 1)  # DALI runs ahead: any of these may be it
    for name, data in members:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on damaged data
            return CorruptSample(f"{name}: not a readable JPEG (DALI: {reason}; PIL: {' '.join(str(e).split())})")
    names = ", ".join(n for n, _ in members[:3])
    return CorruptSample(f"DALI could not decode a JPEG among {len(members)} samples from batch {done} on "
                         f"({reason}); PIL decodes them all; first: {names}")
