"""The benchmarks' shared flag vocabulary, so every bench command spells the same thing the same way:

    --batch-size N      the batch                        --repeats N   best-of / repetitions / copies
    --images DIR        a folder of photos (never a count; a count is --num-images)
    --out DIR           always a folder; the file name inside it is --name (a default per benchmark)
    --publish           write into bench/results/ (the committed reference results) instead of runs/bench/
    --precision P       checked against its choices by argparse

A benchmark writes under runs/bench/ unless --publish: a default run never touches the committed
results that the cost planner and docs/benchmarks.md read, and nothing is written under
bench/results/ without --publish (an --out there is refused without it). No result overwrites the
file it was computed from. Bad input ends in one line on stderr (`python -m bench.X: reason`), as
the tools/ do (fastmix/train/cli.py).

Old spellings stay for one release as hidden aliases: they still work, are not in --help, and print
one line saying what to use instead.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from fastmix.train.cli import OneLineParser, fail

PUBLISHED = Path(__file__).resolve().parent / "results"  # the committed reference results
RUNS = Path("runs") / "bench"                             # a run's results, relative to where it runs


def parser(module: str, doc: str | None) -> OneLineParser:
    """A bench command's parser: `python -m bench.X` as its name, argument errors in one line."""
    return OneLineParser(prog=f"python -m {module}", description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def one_line_errors(main):
    """main(argv) with bad input (a missing or unreadable file, a value that is refused) answered
    in one line on stderr and exit code 2, not a traceback."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv)
        except (OSError, ValueError, KeyError, TypeError) as e:
            spec = main.__globals__.get("__spec__")  # run as `python -m bench.X`, the module is __main__
            prog = f"python -m {spec.name if spec else main.__module__}"
            if isinstance(e, KeyError):
                return fail(prog, f"missing key {e.args[0]!r}" if e.args else "missing key")
            if isinstance(e, OSError) and e.filename and e.strerror:
                return fail(prog, f"{e.filename}: {e.strerror}")
            return fail(prog, e)
    return run


def published(path: Path) -> bool:
    """Whether `path` lies under bench/results/."""
    try:
        Path(path).resolve().relative_to(PUBLISHED)
        return True
    except ValueError:
        return False


def check_writable(p: argparse.ArgumentParser, path: Path, publish: bool, inputs=()) -> None:
    """Refuse (one line) a write under bench/results/ without --publish, and a write over an input."""
    if published(path) and not publish:
        p.error(f"{path} is under bench/results/ (the committed reference results); "
                "add --publish to update them, or give another --out")
    for given in inputs:
        if given and Path(given).resolve() == Path(path).resolve():
            p.error(f"{path} is this command's input; it would be overwritten (give another --out or --name)")


def read_converted(data: str | Path) -> dict:
    """The manifest of a converted folder, or one line saying why there is none."""
    path = Path(data) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: not a converted folder (no manifest.json; "
                                "tools/convert_subset.py makes one)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


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


def add_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publish", action="store_true",
                   help="write into bench/results/, the committed reference results the cost planner and "
                        "docs/benchmarks.md read (default: runs/bench/)")


def add_out(p: argparse.ArgumentParser, default_name: str, what: str) -> None:
    """--out DIR, --name STEM and --publish: the result is DIR/STEM.json (and a PNG beside it). The
    name's default is a text for --help; main() passes the actual one to out_path (some depend on
    other flags)."""
    p.add_argument("--out", help=f"folder for {what} (default: {RUNS}/, with --publish bench/results/)")
    p.add_argument("--name", help=f"file name stem inside --out (default: {default_name})")
    add_publish(p)


def derived_name(stem: str, kind: str) -> str:
    """The name of a result derived from a bench.loaders one: `loaders-cpu2` -> `KIND-cpu2`, any other
    stem -> `KIND-STEM` (never the stem itself: it would overwrite its source)."""
    return f"{kind}-{stem.removeprefix('loaders-')}"


def default_dir(a: argparse.Namespace) -> Path:
    return PUBLISHED if a.publish else RUNS


def out_path(p: argparse.ArgumentParser, a: argparse.Namespace, default_name: str, inputs=()) -> Path:
    """DIR/NAME.json from --out/--name, or the defaults (runs/bench/, or bench/results/ with
    --publish). Refused: a path under bench/results/ without --publish, and one of `inputs`. An
    --out ending in .json is the old spelling (a file): it still works, with one line saying how to
    write it now."""
    if a.out and a.out.endswith(".json") and a.name:
        p.error(f"--out {a.out} is a file; with --name give --out a folder")
    out = Path(a.out) if a.out else default_dir(a)
    a.name = a.name or default_name
    if out.suffix == ".json":
        print(f"{p.prog}: --out {out} (a file) is deprecated; use --out {out.parent} --name {out.stem}",
              file=sys.stderr)
        check_writable(p, out, a.publish, inputs)
        return out
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: not a folder")
    if not a.name or "/" in a.name:
        p.error(f"--name {a.name!r}: a file name stem, without a folder")
    check_writable(p, out / f"{a.name}.json", a.publish, inputs)
    return out / f"{a.name}.json"


def replot(p: argparse.ArgumentParser, a: argparse.Namespace, plot) -> int:
    """--replot JSON: redraw the PNG beside it (bench.plotting.replot); under bench/results/ only with --publish."""
    from bench.plotting import replot as redraw
    source = Path(a.replot)
    check_writable(p, source.with_suffix(".png"), a.publish)
    return redraw(source, plot)
