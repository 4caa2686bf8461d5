"""YAML read one way everywhere (recipes, a run's config.yaml, catalogs, --set and --grid values):
PyYAML's safe loader, minus aliases.

An alias (`*name`) repeats a node, and nested aliases multiply: an 845-byte recipe expanded to
an 18 MB config.yaml, and a node that aliases itself recursed until Python gave up. No fastmix
file needs them, so any alias is refused, naming the file and line, before anything is built.
Nesting deeper than Python's recursion allows is refused the same way, as is a file over
MAX_BYTES (recipes and configs are a few kilobytes). dumps() writes what loads() reads: no aliases.
"""
from __future__ import annotations

from pathlib import Path

import yaml

MAX_BYTES = 1 << 20


class YAMLRefused(ValueError):
    """A YAML text that is not read; the message is one line naming where it came from."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLRefused(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                              "accepted; write the value out")
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def dumps(value) -> str:
    """YAML that loads() reads back: an object met twice is written out twice, never as an alias
    (PyYAML's safe_dump writes a list or dict the value holds twice as &id001 / *id001)."""
    return yaml.dump(value, Dumper=_NoAliasDumper, sort_keys=False)


def loads(text: str, where: str):
    """The value of one YAML document, or YAMLRefused naming `where` (a file, or e.g. "--set x=...")."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader subclass)
    except YAMLRefused as e:
        raise YAMLRefused(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise YAMLRefused(f"{where}: not YAML ({_reason(e)})") from None
    except RecursionError:
        raise YAMLRefused(f"{where}: nested too deeply to read") from None


def _reason(error: yaml.YAMLError) -> str:
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def load(path: str | Path):
    """The YAML file's value (refused: over MAX_BYTES, not text, not YAML, with aliases)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.stat().st_size > MAX_BYTES:
        raise YAMLRefused(f"{path}: {path.stat().st_size} bytes, more than the {MAX_BYTES} a settings file may hold")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise YAMLRefused(f"{path}: not YAML (not UTF-8 text)") from None
    return loads(text, str(path))


def load_mapping(path: str | Path, what: str = "a mapping") -> dict:
    """load(), and the value must be a mapping (an empty file reads as {})."""
    value = load(path)
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise YAMLRefused(f"{path}: expected {what}, got a {type(value).__name__}")
    return value
