"""torchrun DDP on CPU (gloo): two ranks train, see disjoint data, end with identical weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_on_gloo(flat_converted, tmp_path):
    data, _, label_of = flat_converted
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "ddp_worker.py"), str(data), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    train_ids = {i for i in label_of if i < len(label_of) - 12}
    for epoch in ("0", "1"):
        a, b = (set(r["seen"][epoch]) for r in ranks)
        per_rank = ranks[0]["updates_per_epoch"] * ranks[0]["batch_size"]
        assert len(a) == len(ranks[0]["seen"][epoch]) == per_rank  # no repeats within a rank
        assert len(b) == len(ranks[1]["seen"][epoch]) == per_rank
        assert not a & b, "ranks trained on the same images"
        assert a | b <= train_ids
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]  # reshuffled per epoch
    assert ranks[0]["params"] == ranks[1]["params"]  # gradients were all-reduced
    assert ranks[0]["eval"] == ranks[1]["eval"] and ranks[0]["eval"]["eval_images"] == 12
    assert (tmp_path / "epochs.csv").is_file() and (tmp_path / "last.pt").is_file()
