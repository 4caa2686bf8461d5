"""Build the folder a GPU loan sends along, and check what travels, before any GPU time is spent.

    python -m bench.gpu.prepare --photos /path/to/imagenet-photos        # -> out/gpu-loan/ (git-ignored)

Copies the first --count real `<wnid>_*.JPEG` photos (one or more per class, sorted by name) into
OUT/photos, checking that each decodes; writes a 64 px copy of each into OUT/photos-64 (the loader
rows for small images; a Tiny ImageNet archive is too large to send); refuses a photo set over
--max-mib. Then checks that OUT is inside this repository and ignored by git (photos are never
committed; a lent machine sees only the tree and the ignored folders a command carries), and that
the tree that travels plus OUT stays under the 64 MiB a command may send. Prints the command to run
there, what to carry, and the time limit to ask for (docs/gpu.md).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bench.gpu.data import PHOTO, SMALL_SIZE
from bench.gpu.lent import GRACE_S, KILL_AFTER_S
from bench.gpu.plan import BUDGET_S

ROOT = Path(__file__).resolve().parents[2]
MARK = ".prepared-by-bench-gpu"  # this command made the folder: it may replace it
TRAVEL_LIMIT_MIB = 64
TIMEOUT_S = 600  # a command's most; the lent command ends by BUDGET_S + GRACE_S + KILL_AFTER_S + the copy
MIB = 2**20


class Refused(Exception):
    """One line for the user: what is wrong and with which file."""


def pick(src: Path, count: int) -> list[Path]:
    photos = sorted(p for p in src.rglob("*") if p.is_file() and PHOTO.match(p.name))
    if not photos:
        raise Refused(f"{src}: no <wnid>_*.JPEG photos")
    return photos[:count]


def copy_photos(photos: list[Path], out: Path, max_mib: float) -> int:
    """The photos into out/photos and their 64 px copies into out/photos-64; total bytes of both."""
    from PIL import Image
    total = sum(p.stat().st_size for p in photos)
    if total > max_mib * MIB:
        raise Refused(f"{len(photos)} photos take {total / MIB:.1f} MiB, over --max-mib {max_mib:g}: pass a smaller --count")
    (out / "photos").mkdir(parents=True)
    (out / MARK).write_text("")
    (out / "photos-64").mkdir()
    for p in photos:
        try:
            with Image.open(p) as im:
                small = im.convert("RGB").resize((SMALL_SIZE, SMALL_SIZE), Image.BICUBIC)
        except OSError as e:
            raise Refused(f"{p}: does not decode ({e})") from None
        shutil.copyfile(p, out / "photos" / p.name)
        small.save(out / "photos-64" / p.name, "JPEG", quality=90)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True)


def tree_bytes() -> int:
    """What a command sends without `carry`: tracked files and untracked ones git does not ignore."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in listed
               if name and (ROOT / name.decode()).is_file())


def check_place(out: Path) -> str:
    """out's path relative to the repository, if it is inside it and ignored by git."""
    try:
        rel = out.resolve().relative_to(ROOT)
    except ValueError:
        raise Refused(f"{out}: outside this repository ({ROOT}); only the tree and its carried folders travel") from None
    if git("check-ignore", "-q", str(rel) + "/").returncode != 0:
        raise Refused(f"{out}: not ignored by git; photos must not be committed: use a folder under out/ or runs/")
    return str(rel)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="folder of real <wnid>_*.JPEG photos (searched recursively)")
    p.add_argument("--out", default=str(ROOT / "out" / "gpu-loan"), help="folder to build (default out/gpu-loan)")
    p.add_argument("--count", type=int, default=150, help="photos to take (default 150)")
    p.add_argument("--max-mib", type=float, default=20.0, help="the most the photos may take (default 20)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder this command did not make")
    a = p.parse_args(argv)
    out = Path(a.out)
    try:
        if not Path(a.photos).is_dir():
            raise Refused(f"--photos {a.photos}: not a folder")
        if a.count < 1:
            raise Refused(f"--count {a.count}: at least 1")
        rel = check_place(out)
        if out.exists():
            if not (out / MARK).is_file() and not a.overwrite:
                raise Refused(f"{out}: exists and was not made by this command; pass --overwrite to replace it")
            shutil.rmtree(out)
        photos = pick(Path(a.photos), a.count)
        size = copy_photos(photos, out, a.max_mib)
        tree = tree_bytes()
        if tree + size > TRAVEL_LIMIT_MIB * MIB:
            raise Refused(f"the tree ({tree / MIB:.1f} MiB) and {rel} ({size / MIB:.1f} MiB) are over the "
                          f"{TRAVEL_LIMIT_MIB} MiB a command may send")
    except Refused as e:
        print(f"bench.gpu.prepare: {e}", file=sys.stderr)
        return 2
    classes = len({PHOTO.match(p.name).group(1) for p in photos})
    ends = BUDGET_S + GRACE_S + KILL_AFTER_S
    print(f"{rel}: {len(photos)} photos of {classes} classes and their {SMALL_SIZE} px copies, {size / MIB:.1f} MiB; "
          f"with the tree ({tree / MIB:.1f} MiB) {(tree + size) / MIB:.1f} of {TRAVEL_LIMIT_MIB} MiB travel")
    print(f"on the lent machine (carry [\"{rel}\"], timeout_s {TIMEOUT_S}; the command ends by {ends:.0f} s):")
    print(f"  python3 -m bench.gpu.lent --images {rel}/photos --small-images {rel}/photos-64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
