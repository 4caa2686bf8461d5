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


def png_claiming(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header declares width x height, followed by 64 bytes of pixel data: its
    size is known from the header, and a decode stops at the missing rows (a few MB at most)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def test_the_pixel_limit_is_exact_through_the_converter(tmp_path):
    """200,000,000 px is decoded (and fails only for its missing rows); one pixel more, 15000 x 15000
    and 30000 x 20000 are rejected from the header. Before: PIL only warned (silenced) up to 400 Mpx,
    so the first two were decoded (a full 15000 x 15000 PNG of 27 KB cost 0.7 GB)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    from fastmix.data.images import MAX_PIXELS
    from fastmix.data.synth import class_wnids
    assert MAX_PIXELS == 200_000_000
    src = tmp_path / "src"
    sizes = {"at_limit": (20_000, 10_000), "one_over": (66_666_667, 3), "225mpx": (15_000, 15_000),
             "600mpx": (30_000, 20_000)}
    for split in ("train", "val"):
        for c, wnid in enumerate(class_wnids(2)):
            (src / split / wnid).mkdir(parents=True)
            for k in range(2):
                (src / split / wnid / f"ok_{k}.JPEG").write_bytes(jpeg_bytes(photo(np.random.default_rng(k), c, (64, 48))))
    for name, (w, h) in sizes.items():
        (src / "train" / class_wnids(2)[0] / f"{name}.png").write_bytes(png_claiming(w, h))
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "tools/convert_subset.py"), "--source", str(src), "--out",
                          str(tmp_path / "out"), "--formats", "wds", "--workers", "1", "--num-classes", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {Path(r["path"]).stem: r["reason"] for r in manifest["splits"]["train"]["rejected"]}
    assert reasons["at_limit"].startswith("corrupt or truncated image"), reasons
    limit = "over the 200,000,000-pixel limit ("
    assert reasons["one_over"] == limit + "66666667 x 3 = 200,000,001 pixels; a decompression bomb or no photo)"
    assert reasons["225mpx"] == limit + "15000 x 15000 = 225,000,000 pixels; a decompression bomb or no photo)"
    assert reasons["600mpx"] == limit + "600,000,000 pixels; a decompression bomb or no photo)"
    assert manifest["splits"]["train"]["written"] == 4


def test_an_image_of_exactly_the_limit_converts_and_one_pixel_more_does_not(monkeypatch):
    """The same check at a limit small enough to decode real images on either side of it."""
    from fastmix.data import images
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 48)
    assert prepare(jpeg_bytes(photo(np.random.default_rng(0), 0, (64, 48))), 512, 90).width == 64
    monkeypatch.setattr(images, "MAX_PIXELS", 439 * 7 - 1)
    assert prepare(jpeg_bytes(photo(np.random.default_rng(0), 0, (64, 48))), 512, 90).width == 64
    with pytest.raises(Rejected, match=r"over the 3,072-pixel limit \(439 x 7 = 3,073 pixels"):
        prepare(jpeg_bytes(photo(np.random.default_rng(0), 0, (439, 7))), 512, 90)
