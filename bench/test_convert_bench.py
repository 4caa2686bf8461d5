"""pytest-benchmark suite for the converter's per-image work: `pytest bench/ --benchmark-only`."""
import numpy as np
import pytest

from fastmix.data.images import prepare
from fastmix.data.synth import jpeg_bytes, photo, quirk_bytes


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return {"kept_500x375": jpeg_bytes(photo(rng, 1, (500, 375))),
            "shrunk_1024x768": jpeg_bytes(photo(rng, 2, (1024, 768))),
            "cmyk_500x375": quirk_bytes("cmyk", rng, 3)}


@pytest.mark.parametrize("kind", ["kept_500x375", "shrunk_1024x768", "cmyk_500x375"])
def test_prepare(benchmark, photos, kind):
    result = benchmark(prepare, photos[kind], 512, 90)
    assert max(result.width, result.height) <= 512
