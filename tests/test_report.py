"""Numbers that cannot drift: docs/benchmarks.md is what `python -m bench.report` makes of
bench/results/, and README's quickstart commands exist as written (each answers --help, and every
flag the README gives it is in that help)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_page_is_what_the_results_give():
    assert report.PAGE.read_text() == report.render(), \
        "docs/benchmarks.md is stale or edited by hand: run `python -m bench.report`"


def test_the_check_fails_when_a_result_changes(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    page = tmp_path / "benchmarks.md"
    assert report.main(["--results", str(results), "--page", str(page)]) == 0
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 0
    loaders = results / "loaders-cpu2.json"
    data = json.loads(loaders.read_text())
    row = data["rows"][0]
    old = f"-| {row['backend']} | {row['image_size']} | {row['images_per_s']:.0f} |"
    row["images_per_s"] += 100  # one measured number moves
    loaders.write_text(json.dumps(data))
    capsys.readouterr()
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 1
    err = capsys.readouterr().err
    assert "differs" in err and old in err  # the diff shows the row as it was
    (results / "stages-cpu2.json").unlink()  # a required result file gone: refused by name
    with pytest.raises(SystemExit, match="stages-cpu2.json: result file not found"):
        report.render(results)


def test_a_new_result_without_its_table_is_refused(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    s = next(s for s in report.SECTIONS if s.missing is not None)
    (results / s.source).unlink(missing_ok=True)  # not measured yet: the page says so
    assert f"## {s.title}\n\n{s.missing}" in report.render(results)
    (results / s.source).parent.mkdir(parents=True, exist_ok=True)
    (results / s.source).write_text("{}")
    with pytest.raises(SystemExit, match=f"{s.source}: not what section"):
        report.render(results)


def quickstart_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def test_readme_starts_with_the_two_commands_and_is_short():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    assert len(text) <= 12_000
    assert "../shared" not in text and not re.search(r"\bissue \d+", text, re.I)


def test_quickstart_covers_every_stage():
    programs = [c[1] if c[1] != "-m" else c[2] for c in quickstart_commands()]
    for needed in ("tools/convert_subset.py", "bench.loaders", "tools/train.py", "tools/evaluate.py",
                   "tools/estimate_cost.py"):
        assert needed in programs, needed


@pytest.mark.parametrize("command", quickstart_commands(), ids=lambda c: " ".join(c[:3]))
def test_quickstart_command_runs_as_written(command):
    assert command[0] == ".venv/bin/python", f"{command}: the README's commands use the venv's python"
    program = command[1:3] if command[1] == "-m" else command[1:2]
    run = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for flag in (t for t in command[len(program) + 1:] if t.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", run.stdout), f"{' '.join(program)}: {flag} is not in --help"


HELP: dict[tuple[str, ...], subprocess.CompletedProcess] = {}


def help_of(program: tuple[str, ...]) -> subprocess.CompletedProcess:
    if program not in HELP:
        HELP[program] = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=300)
    return HELP[program]


def opening_commands(page: Path) -> list[list[str]]:
    """The python commands of a docs page's first code block (the commands it opens with)."""
    block = re.search(r"```bash\n(.*?)```", page.read_text(), re.S).group(1)
    lines = [line.split("  #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_pages_open_with_commands_that_exist(page):
    commands = opening_commands(page)
    assert commands, f"{page.name}: no commands at the top"
    for command in commands:
        if command[0] == "torchrun":  # torchrun ... SCRIPT args: the script's own flags
            command = [".venv/bin/python", *command[next(i for i, t in enumerate(command) if t.endswith(".py")):]]
        # python3: a lent GPU machine's interpreter, where nothing is installed (docs/gpu.md)
        assert command[0] in (".venv/bin/python", "python", "python3"), f"{page.name}: {command}"
        program = tuple(command[1:3] if command[1] == "-m" else command[1:2])
        run = help_of(program)
        assert run.returncode == 0, f"{page.name}: {' '.join(program)} --help: {run.stderr[-1500:]}"
        for flag in (t for t in command[len(program) + 1:] if t.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", run.stdout), f"{page.name}: {' '.join(program)}: {flag}?"
