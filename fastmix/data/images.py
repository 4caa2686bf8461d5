"""Turn one source file's bytes into a clean RGB image, or a reason to reject it.

ImageNet really holds CMYK and grayscale JPEGs, a PNG behind a `.JPEG` name and
EXIF-rotated photos; a converted dataset must hold only baseline RGB JPEGs that
every decoder (PIL, libjpeg-turbo in FFCV, nvJPEG in DALI/torchvision) reads the
same way. Everything here is pure and deterministic: same bytes in, same bytes out.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard: an image of more pixels is rejected from its header, before it is
# decoded (a 27 KB PNG can declare 15000 x 15000). PIL's own guard only warns up to twice its
# limit (the warning is silenced below), so the limit is checked here, exactly; PIL's stays on as
# the backstop for any other reader in this process.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
EXIF_ORIENTATION = 0x0112


class Rejected(Exception):
    """The file cannot become a training image; str(self) is the reason."""


@dataclass(frozen=True)
class Prepared:
    jpeg: bytes        # what goes into the shards
    width: int
    height: int
    reencoded: str     # "" when the source bytes were kept, else why they were not


def open_rgb(data: bytes, max_side: int) -> tuple[Image.Image, str]:
    """Decode by content (not by file name), convert to RGB, shrink to `max_side`.

    Returns the image and "" if the source could be kept byte for byte as a JPEG,
    else the reason it must be re-encoded.
    """
    if not data:
        raise Rejected("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF; we judge by decoding
            img = Image.open(io.BytesIO(data))
            check_pixels(img.width, img.height)
            img.load()  # full decode: truncated or corrupt data fails here, not later
    except UnidentifiedImageError:
        raise Rejected("not an image (no decoder recognises its content)") from None
    except Image.DecompressionBombError as e:  # PIL's, above twice the limit, raised by open()
        count = re.search(r"\((\d+) pixels\)", str(e))  # PIL calls twice our limit its own: not repeated
        raise Rejected(f"over the {MAX_PIXELS:,}-pixel limit ({f'{int(count[1]):,}' if count else 'more'} pixels; "
                       "a decompression bomb or no photo)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected(f"corrupt or truncated image: {e}") from None

    reasons = []
    if img.format != "JPEG":
        reasons.append(f"{img.format} content")
    elif img.info.get("progressive") or img.info.get("progression"):
        reasons.append("progressive JPEG")
    elif img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        # Decoders disagree on EXIF rotation (cv2 and nvImageCodec apply it, PIL and
        # libjpeg-turbo do not); re-encoding drops the tag so all see the same pixels.
        reasons.append("EXIF orientation tag")
    if img.mode != "RGB":
        reasons.append(f"{img.mode} mode")
        img = _to_rgb(img)
    if max(img.size) > max_side:
        reasons.append(f"larger than {max_side}px")
        img = shrink(img, max_side)
    return img, ", ".join(reasons)


def check_pixels(width: int, height: int) -> None:
    """Reject an image of more than MAX_PIXELS pixels (exactly that many is accepted)."""
    if width * height > MAX_PIXELS:
        raise Rejected(f"over the {MAX_PIXELS:,}-pixel limit ({width} x {height} = {width * height:,} pixels; "
                       "a decompression bomb or no photo)")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels have arbitrary colour underneath; put them on white.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")  # CMYK (PIL undoes Adobe's inversion), L, I;16, ...


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Resize so the longer side is `max_side`, keeping the aspect ratio."""
    w, h = img.size
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap: a cheap box pre-shrink, then Lanczos; near-identical to pure Lanczos.
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_jpeg(img: Image.Image, quality: int, subsampling: str = "4:2:0") -> bytes:
    out = io.BytesIO()
    # Baseline, 4:2:0, no EXIF/ICC: the most portable JPEG there is. (4:4:4 for tiny images such as
    # CIFAR's, where halving the chroma resolution costs 6 dB: README, CIFAR-10.)
    img.save(out, format="JPEG", quality=quality, subsampling=subsampling, optimize=False,
             progressive=False)
    return out.getvalue()


def prepare(data: bytes, max_side: int, quality: int, subsampling: str = "4:2:0") -> Prepared:
    """Source bytes -> bytes for a shard. Baseline RGB JPEGs within `max_side` are kept as they are."""
    img, reason = open_rgb(data, max_side)
    jpeg = data if not reason else encode_jpeg(img, quality, subsampling)
    return Prepared(jpeg=jpeg, width=img.width, height=img.height, reencoded=reason)
