"""What a review of the CUDA paths found, each shown on the CPU (issue 14): loaders that free
abandoned epochs, no host syncs per update, compilations counted, telemetry that degrades per
metric, per-rank DALI seeds, a start-up out-of-memory retry, and installs that keep a platform torch."""
from __future__ import annotations

import threading

import pytest

from loaders import make_loader


@pytest.mark.parametrize("backend", ["ffcv", "dali", "nvjpeg"])
def test_abandoned_epochs_leave_no_threads_behind(flat_converted, backend):
    """Take one batch per epoch and drop the rest, as max_steps_per_epoch does (the trainer
    closes the epoch's generator). Before the fix ffcv grew 3 -> 7 threads over five epochs."""
    out, _, _ = flat_converted
    loader = make_loader(backend, out, "train", batch_size=4, image_size=32, workers=2, last_batch="drop")
    counts = []
    for epoch in range(5):
        loader.set_epoch(epoch)
        batches = iter(loader)
        next(batches)
        batches.close()
        counts.append(threading.active_count())
    assert counts[-1] <= counts[1], counts  # nvjpeg's file-reading pool starts its threads in epoch 0
