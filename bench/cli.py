"""The benchmarks' shared flag vocabulary, so every bench command spells the same thing the same way:

    --batch-size N      the batch                        --repeats N   best-of / repetitions / copies
    --images DIR        a folder of photos (never a count; a count is --num-images)
    --out DIR           always a folder; the file name inside it is --name (a default per benchmark)
    --precision P       checked against its choices by argparse

Old spellings stay for one release as hidden aliases: they still work, are not in --help, and print
one line saying what to use instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _Deprecated(argparse.Action):
    """An old flag: stores into the new flag's dest (converted by the new flag's type) and warns once."""

    def __init__(self, option_strings, dest, new: str, prog: str, **kw):
        self.new, self.prog = new, prog
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{self.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def alias(p: argparse.ArgumentParser, old: str, new: str, **kw) -> None:
    """`old` as a hidden, warning alias of the already added flag `new` (same dest, type and choices)."""
    action = next(a for a in p._actions if new in a.option_strings)
    extra = {"nargs": 0} if action.nargs == 0 else {"type": action.type, "choices": action.choices}
    p.add_argument(old, dest=action.dest, action=_Deprecated, new=new, prog=p.prog, help=argparse.SUPPRESS,
                   **extra, **kw)


def add_out(p: argparse.ArgumentParser, default_dir: str | Path | None, default_name: str, what: str) -> None:
    """--out DIR and --name STEM: the result is DIR/STEM.json (and a PNG beside it). The defaults are
    texts for --help; main() passes the actual ones to out_path (some depend on other flags)."""
    p.add_argument("--out", help=f"folder for {what} (default: {default_dir})")
    p.add_argument("--name", help=f"file name stem inside --out (default: {default_name})")


def out_path(p: argparse.ArgumentParser, a: argparse.Namespace, default_dir: str | Path, default_name: str) -> Path:
    """DIR/NAME.json from --out/--name, or the defaults given. An --out ending in .json is the old
    spelling (a file): it still works, with one line saying how to write it now."""
    if a.out and a.out.endswith(".json") and a.name:
        p.error(f"--out {a.out} is a file; with --name give --out a folder")
    out = Path(a.out or default_dir)
    a.name = a.name or default_name
    if out.suffix == ".json":
        print(f"{p.prog}: --out {out} (a file) is deprecated; use --out {out.parent} --name {out.stem}",
              file=sys.stderr)
        return out
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: not a folder")
    if not a.name or "/" in a.name:
        p.error(f"--name {a.name!r}: a file name stem, without a folder")
    return out / f"{a.name}.json"
