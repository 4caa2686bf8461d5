"""Per-file preparation: what is kept, what is re-encoded, what is rejected."""
import io

import numpy as np
import pytest
from PIL import Image

from fastmix.data.images import Rejected, prepare
from fastmix.data.synth import QUIRKS, jpeg_bytes, photo, quirk_bytes


@pytest.mark.parametrize("kind", sorted(QUIRKS))
def test_quirk_outcome(kind):
    data = quirk_bytes(kind, np.random.default_rng(0), 3)
    if QUIRKS[kind][0] == "rejected":
        with pytest.raises(Rejected):
            prepare(data, 512, 90)
        return
    p = prepare(data, 512, 90)
    assert p.reencoded, "a quirk file must be re-encoded"
    img = Image.open(io.BytesIO(p.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert not img.info.get("progressive") and img.getexif().get(0x0112, 1) == 1
    assert max(img.size) <= 512 and (img.width, img.height) == (p.width, p.height)


def test_baseline_rgb_jpeg_within_max_side_is_kept_byte_for_byte():
    data = jpeg_bytes(photo(np.random.default_rng(0), 1, (500, 375)))
    p = prepare(data, 512, 90)
    assert p.jpeg == data and p.reencoded == ""


def test_larger_image_is_shrunk_keeping_aspect():
    data = jpeg_bytes(photo(np.random.default_rng(0), 1, (1000, 600)))
    p = prepare(data, 500, 90)
    assert (p.width, p.height) == (500, 300) and "larger" in p.reencoded


def test_reasons_are_specific():
    with pytest.raises(Rejected, match="zero-byte"):
        prepare(b"", 512, 90)
    with pytest.raises(Rejected, match="truncated"):
        prepare(quirk_bytes("truncated", np.random.default_rng(0), 0), 512, 90)
    with pytest.raises(Rejected, match="not an image"):
        prepare(b"hello", 512, 90)


def test_cmyk_colours_survive_conversion():
    img = photo(np.random.default_rng(0), 2, (200, 150))
    p = prepare(jpeg_bytes(img.convert("CMYK"), quality=95), 512, 95)
    back = np.asarray(Image.open(io.BytesIO(p.jpeg)), dtype=float)
    assert np.abs(back - np.asarray(img, dtype=float)).mean() < 12  # not inverted, not garbled
