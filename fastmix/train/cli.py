"""What the command-line tools share: bad arguments answered in one line, not a usage block."""
from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an argument error is one line on stderr (`prog: reason (see --help)`), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parser(prog: str, doc: str) -> OneLineParser:
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def fail(prog: str, error: BaseException | str, code: int = 2) -> int:
    """Print `prog: error` as one line on stderr; return the exit code."""
    print(f"{prog}: {' '.join(str(error).split())}", file=sys.stderr)
    return code
