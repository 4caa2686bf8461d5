"""A .beton with its tail cut (issue 21 item 3): ffcv's Reader opens it and its Loader trains on
it, with samples whose allocation entries are gone. check_beton refuses it, naming the file,
in both loaders that read a .beton and in verify, even where the manifest was re-signed to the
cut file's size and checksum (what a resume that re-hashes would have done)."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("ffcv")

from fastmix.data.beton import check_beton  # noqa: E402
from fastmix.data.verify import verify  # noqa: E402
from loaders import make_loader  # noqa: E402
from test_convert import _resign  # noqa: E402

# Cuts by where they end, as the table's length of the small test file allows (the issue's
# 1000 bytes of a 1006-sample file ended mid-table): mid-entry; three whole entries (the length
# still a multiple of an entry: only the per-sample check sees it); into the image data.
CUTS = ["mid-entry", "whole-entries", "into-data"]


def cut_bytes(beton, where: str) -> int:
    from ffcv.reader import Reader
    table = beton.stat().st_size - int(Reader(str(beton)).header["alloc_table_ptr"])
    return {"mid-entry": table // 2 + 5, "whole-entries": 24 * 3, "into-data": table + 5000}[where]


@pytest.fixture
def cut(converted, tmp_path, request):
    out = tmp_path / "copy"
    shutil.copytree(converted[0], out)
    beton = out / "ffcv" / "train.beton"
    beton.write_bytes(beton.read_bytes()[:-cut_bytes(beton, request.param)])
    return out, beton


def test_intact_betons_pass(converted):
    for split in ("train", "val"):
        assert check_beton(converted[0] / "ffcv" / f"{split}.beton").num_samples > 0


@pytest.mark.parametrize("cut", CUTS, indirect=True)
def test_cut_beton_refused_against_the_manifest(cut):
    out, beton = cut
    with pytest.raises(ValueError, match=f"{beton}: .* bytes, the manifest says"):
        check_beton(beton)


@pytest.mark.parametrize("cut", CUTS, indirect=True)
@pytest.mark.parametrize("backend", ["ffcv", "opencv"])
def test_cut_beton_refused_by_the_loaders_and_verify_even_when_resigned(cut, backend):
    out, beton = cut
    _resign(out)  # the manifest now agrees with the cut file: only the structure can tell
    with pytest.raises(ValueError, match=f"{beton}: (truncated|damaged) .beton"):
        check_beton(beton)
    with pytest.raises(ValueError, match=f"{beton}: (truncated|damaged) .beton"):
        make_loader(backend, str(out), "train", batch_size=4, image_size=32, workers=1)
    problems = "\n".join(verify(out))
    assert f"{beton}: truncated .beton" in problems or f"{beton}: damaged .beton" in problems, problems
