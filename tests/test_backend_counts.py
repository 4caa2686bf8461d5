"""After a conversion every CPU backend yields exactly the manifest's samples, per split and per class
(issue 26 item 1: colliding keys were merged by the DALI and pil-wds indexes, 11 images against
opencv's 12). The source is tests/hostile.py's tree: colliding stems, odd names, links."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hostile import CLASSES, write_hostile
from loaders import make_loader, unavailable

ROOT = Path(__file__).resolve().parents[1]
# (backend, options): every backend that runs on a CPU; dali decodes on the CPU here
BACKENDS = [("pil", {}), ("pil-wds", {}), ("ffcv", {}), ("opencv", {}), ("dali", {"decode_device": "cpu"}),
            ("resident", {})]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("counts")
    src, out = base / "src", base / "out"
    write_hostile(src, base / "elsewhere")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_subset.py"), "--source", str(src), "--out",
                          str(out), "--num-classes", str(CLASSES), "--shard-size", "5", "--workers", "2"],
                         capture_output=True, text=True, timeout=600, errors="backslashreplace")
    assert run.returncode == 0, run.stdout + run.stderr
    return src, out


@pytest.mark.parametrize("backend, options", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("split", ["train", "val"])
def test_every_backend_sees_the_manifests_samples(converted, backend, options, split):
    src, out = converted
    why = unavailable(backend)
    if why:
        pytest.skip(why)
    manifest = json.loads((out / "manifest.json").read_text())
    wnids = [c["wnid"] for c in json.loads((out / "classes.json").read_text())]
    loader = make_loader(backend, out, split, batch_size=4, image_size=32, workers=1, imagefolder=str(src),
                         **options)
    seen = Counter()
    for _, labels in loader:
        seen.update(wnids[int(y)] for y in labels)
    want = manifest["splits"][split]["per_class"]
    assert sum(seen.values()) == manifest["splits"][split]["written"], backend
    assert dict(seen) == {w: n for w, n in want.items() if n}, backend
