#!/usr/bin/env python
"""Convert an ImageNet subset (default: ImageNet-100) into FFCV .beton and webdataset shards.

With no --source, converts the embedded synthetic demo source (built once in a cache folder).
--source cifar-10-python.tar.gz (or cifar-100-python.tar.gz, or either extracted folder) converts
CIFAR: every class, shards at JPEG q100 4:4:4 (50.6 dB), a lossless (raw) .beton, into data/cifar10
(or cifar100). A Tiny ImageNet folder as downloaded (wnids.txt, train/<wnid>/images/, val/) converts
into data/tinyimagenet at its stored 64 px.

`convert_subset.py verify OUT` (or --verify on a finished OUT without --resume/--overwrite) checks a
conversion against its manifest and writes nothing. Ctrl-C stops with exit code 130; --resume
goes on from the last finished shard.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmix.data.convert import ConvertConfig, ConvertError, convert  # noqa: E402
from fastmix.data.manifest import read_manifest  # noqa: E402
from fastmix.data.sources import LAYOUT_NAMES, SPLITS, SourceError, detect_layout  # noqa: E402
from fastmix.train import cli  # noqa: E402

D = ConvertConfig("", "")
CIFAR_QUALITY, CIFAR_SUBSAMPLING = 100, "4:4:4"  # 32 px images: 50.6 dB (README, CIFAR-10: measured)


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser("convert_subset", __doc__)
    p.add_argument("--source", help="ImageNet root (ImageFolder tree, Kaggle download, or the "
                   "ILSVRC2012 tars + devkit), a Tiny ImageNet folder as downloaded, or a CIFAR-10/100 "
                   "python download (.tar.gz or its folder); omit for the demo source")
    p.add_argument("--layout", default="auto", choices=["auto", *LAYOUT_NAMES])
    p.add_argument("--out", help="output folder (default: data/demo, data/imagenet100, data/tinyimagenet, "
                   "or data/cifar10 / cifar100)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--num-classes", type=int, help="first N classes in sorted WNID order "
                     "(default: 100; every class for CIFAR)")
    sel.add_argument("--class-list", help="file of WNIDs, one per line (e.g. the CMC ImageNet-100 list)")
    sel.add_argument("--all-classes", action="store_true", help="all classes of the source")
    p.add_argument("--splits", default=",".join(SPLITS), help=f"comma-separated: {', '.join(SPLITS)}")
    p.add_argument("--formats", default="wds,ffcv", help="comma-separated: wds, ffcv")
    p.add_argument("--max-side", type=int, default=D.max_side, help="longer side cap in pixels")
    p.add_argument("--quality", type=int, help=f"JPEG quality of re-encoded images (default: {D.quality}; "
                   f"{CIFAR_QUALITY} for CIFAR)")
    p.add_argument("--subsampling", choices=["4:2:0", "4:4:4"],
                   help=f"chroma of re-encoded JPEGs (default: {D.subsampling}; {CIFAR_SUBSAMPLING} for CIFAR)")
    p.add_argument("--write-mode", choices=["jpg", "raw", "smart", "proportion"],
                   help=f"FFCV image storage (default: {D.write_mode}; raw, i.e. lossless, for CIFAR)")
    p.add_argument("--compress-probability", type=float, default=D.compress_probability,
                   help="with --write-mode proportion: share stored as JPEG")
    p.add_argument("--shard-size", type=int, default=D.shard_size, help="source files per shard")
    p.add_argument("--shuffle-seed", type=int, default=D.shuffle_seed, help="train sample order")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes")
    p.add_argument("--ffcv-workers", type=int, default=D.ffcv_workers,
                   help=">1 writes the .beton faster but not byte-reproducibly")
    p.add_argument("--resume", action="store_true", help="finish (or reuse) an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing conversion")
    p.add_argument("--verify", action="store_true", help="reopen and check every output afterwards; on a "
                   "finished conversion without --resume/--overwrite, only check it (`verify OUT` does the same)")
    p.add_argument("--demo-cache", help="where the demo source is built (default: ~/.cache/fastmix)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["verify"]:
            return verify_only(parse_verify_args(argv[1:]).out)
        return convert_main(parse_args(argv))
    except KeyboardInterrupt:
        return cli.fail("convert_subset", "interrupted; rerun with --resume to continue", 130)


def parse_verify_args(argv) -> argparse.Namespace:
    p = cli.parser("convert_subset verify", "Check a finished conversion against its manifest; writes nothing.")
    p.add_argument("out", help="the converted folder")
    return p.parse_args(argv)


def verify_only(out: str) -> int:
    """Read-only: reopen every output and compare it with the manifest (nothing is written)."""
    from fastmix.data.verify import verify
    problems = verify(out)
    for line in problems:
        print(f"verify: {line}", file=sys.stderr)
    try:
        count = f" ({len(read_manifest(out)['files'])} files)"
    except (OSError, ValueError):  # already among the problems
        count = ""
    print(f"verify: {'FAILED' if problems else 'ok'}{count}")
    return 1 if problems else 0


def default_out(a: argparse.Namespace, layout: str) -> str:
    if a.out:
        return a.out
    if a.source is None:
        return "data/demo"
    if layout == "cifar":
        return "data/cifar100" if "100" in Path(a.source).name else "data/cifar10"
    return "data/tinyimagenet" if layout == "tinyimagenet" else "data/imagenet100"


def convert_main(a: argparse.Namespace) -> int:
    try:
        layout = detect_layout(a.source) if a.layout == "auto" and a.source else a.layout
    except SourceError:
        layout = a.layout  # convert() reports it, with the same message
    out = default_out(a, layout)
    if a.verify and not (a.resume or a.overwrite) and (Path(out) / "manifest.json").is_file():
        # --verify on a finished conversion checks it and writes nothing (--resume to finish one).
        print(f"{out}: already converted; verifying it (nothing is written)")
        return verify_only(out)
    demo = a.source is None
    if demo:
        from fastmix.data.synth import demo_source
        print("No --source: converting the embedded synthetic demo source.")
        a.source = str(demo_source(a.demo_cache))
    cifar = layout == "cifar"
    if cifar:
        a.all_classes = a.all_classes or a.num_classes is None
    cfg = ConvertConfig(
        source=a.source, out=out, layout=a.layout,
        num_classes=None if a.all_classes else (100 if a.num_classes is None else a.num_classes), class_list=a.class_list,
        splits=tuple(a.splits.split(",")), formats=tuple(f.strip() for f in a.formats.split(",")),
        max_side=a.max_side,
        quality=a.quality or (CIFAR_QUALITY if cifar else D.quality),
        subsampling=a.subsampling or (CIFAR_SUBSAMPLING if cifar else D.subsampling),
        write_mode=a.write_mode or ("raw" if cifar else D.write_mode),
        compress_probability=a.compress_probability, shard_size=a.shard_size,
        shuffle_seed=a.shuffle_seed, workers=a.workers, ffcv_workers=a.ffcv_workers,
        resume=a.resume, overwrite=a.overwrite)
    try:
        manifest = convert(cfg)
    except ConvertError as e:  # one line even when it names a file whose name holds a newline
        return cli.fail("convert_subset", shown(str(e)))
    print(summary(manifest, out))
    return verify_only(out) if a.verify else 0


def shown(name: str) -> str:
    """A file name as one printable line: tabs, newlines and undecodable bytes escaped as in Python."""
    return name if name.isprintable() else repr(name)[1:-1]


def summary(manifest: dict, out: str) -> str:
    lines = [f"Converted {manifest['num_classes']} classes into {out}/"]
    lines += [f"  note: {note}" for note in manifest["source"].get("notes", [])]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split}: {s['written']} written, {len(s['rejected'])} rejected, "
                     f"of {s['source_files']} files; re-encoded: {s['reencoded']}")
        for r in s["rejected"][:10]:
            lines.append(f"    rejected {shown(r['path'])}: {r['reason']}")
        if len(s["rejected"]) > 10:
            lines.append(f"    ... and {len(s['rejected']) - 10} more in manifest.json")
    lines.append(f"  timings (s): {manifest['timings_s']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
