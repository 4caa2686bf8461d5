"""pytest-benchmark suite for the loaders: `pytest bench/ --benchmark-only`.

One epoch of a small synthetic converted set per backend, at 224 px, after a warm-up epoch
(numba compilation, DALI pipeline build). For the full table use `python -m bench.loaders`.
"""
import pytest

from fastmix.data.convert import ConvertConfig, convert
from fastmix.data.synth import write_imagefolder
from loaders import make_loader


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders-bench")
    write_imagefolder(root / "src", 4, {"train": 32}, seed=0)
    convert(ConvertConfig(source=str(root / "src"), out=str(root / "out"), num_classes=4,
                          splits=("train",), shard_size=64))
    return root


@pytest.mark.parametrize("backend", ["pil", "pil-wds", "ffcv", "opencv", "dali", "nvjpeg", "synthetic"])
def test_epoch(benchmark, converted, backend):
    loader = make_loader(backend, converted / "out", "train", batch_size=32, image_size=224,
                         imagefolder=str(converted / "src"))

    def epoch():
        return sum(len(labels) for _, labels in loader)

    assert benchmark.pedantic(epoch, rounds=3, warmup_rounds=1) == 128
