"""What the command-line tools share: bad arguments answered in one line, not a usage block."""
from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an argument error is one line on stderr (`prog: reason (see --help)`), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each flag's default appended once: not where the help
    already says its default (which argparse would print a second time, as "(default: None)" for
    a default computed later), and not for None, False or an empty list (nothing to say)."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:  # `is`: a default of 0 is said
            return text
        return super()._get_help_string(action)


def at_least(low: int, name: str):
    """An argparse type: an integer >= low (a ValueError becomes "invalid <name> int value")."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value
    parse.__name__ = name
    return parse


positive = at_least(1, "positive")
non_negative = at_least(0, "non-negative")


def parser(prog: str, doc: str) -> OneLineParser:
    return OneLineParser(prog=prog, description=doc, formatter_class=Formatter)


def fail(prog: str, error: BaseException | str, code: int = 2) -> int:
    """Print `prog: error` as one line on stderr; return the exit code."""
    print(f"{prog}: {' '.join(str(error).split())}", file=sys.stderr)
    return code
