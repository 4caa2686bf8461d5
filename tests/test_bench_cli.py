"""The bench commands as a user types them (issues 26 and 28): a default run writes under runs/bench/
and never into the committed bench/results/ (only --publish does), no command writes over its input,
bad input is one line before anything is measured, and every `--help` works and its examples parse."""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# every bench command of this package's own flags (bench.gpu has its own, tests/test_bench_gpu.py)
MODULES = ["bench.loaders", "bench.feed", "bench.calibration", "bench.cpu_step", "bench.convert", "bench.stages",
           "bench.tta", "bench.report"]
WRITERS = {m: [] for m in MODULES if m != "bench.report"} | {"bench.tta": ["--data", "data/x"]}


def bench(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m bench.X ...` run from `cwd`, the checkout on the path (as from its root)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder: Path) -> dict:
    """Every file under `folder`: its size and modification time (a rewrite changes the time)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


class Resolved(BaseException):
    """Raised by the spy once a command has chosen where it writes: nothing is measured."""


@pytest.fixture
def where_written(monkeypatch):
    """Each path a command checks before writing (bench.cli.check_writable), stopping it there."""
    seen = []
    real = cli.check_writable

    def spy(p, path, publish, inputs=()):
        real(p, path, publish, inputs)
        seen.append(Path(path))
        raise Resolved
    monkeypatch.setattr(cli, "check_writable", spy)
    return seen


@pytest.mark.parametrize("module", list(WRITERS))
def test_a_default_run_writes_under_runs_and_publish_into_bench_results(module, where_written, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    with pytest.raises(Resolved):
        main(WRITERS[module])
    assert where_written[-1].resolve().is_relative_to(tmp_path / "runs" / "bench"), where_written
    with pytest.raises(Resolved):
        main([*WRITERS[module], "--publish"])
    assert where_written[-1].resolve().is_relative_to(RESULTS), where_written


@pytest.mark.parametrize("module", list(WRITERS))
def test_an_out_under_bench_results_needs_publish(module, tmp_path, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main([*WRITERS[module], "--out", str(RESULTS / "tta" if module == "bench.tta" else RESULTS)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "add --publish" in err


def test_feed_with_its_defaults_leaves_the_committed_results_alone(tmp_path):
    """The issue's command: it reads the committed loaders file, says so, writes under runs/bench/."""
    before = snapshot(RESULTS)
    done = bench("bench.feed", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"loader rates from {RESULTS / 'loaders-cpu2.json'}" in done.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == \
        [Path("runs/bench/feed-cpu2.json"), Path("runs/bench/feed-cpu2.md")]
    assert snapshot(RESULTS) == before
    # every size the loaders file has (224, 160, 128), each with its loader columns
    rows = json.loads((tmp_path / "runs/bench/feed-cpu2.json").read_text())["rows"]
    assert {r["image_size"] for r in rows} == {224, 160, 128} and all(r["cores_to_feed"] for r in rows)


def test_loaders_with_its_default_out_leaves_the_committed_results_alone(flat_converted, tmp_path):
    """The issue's `bench.loaders --data D --backends B --sizes S` rewrote bench/results/loaders-cpu2.json;
    and with --stages, a --name not starting `loaders-` had the stages written over the loaders file."""
    before = snapshot(RESULTS)
    done = bench("bench.loaders", "--data", flat_converted[0], "--backends", "pil-wds", "--sizes", "32", "--epochs", "1",
                 "--min-seconds", "0.2", "--workers", "1", "--model", "convmixer_256_8", "--model-batch", "1",
                 "--model-steps", "1", "--device", "cpu", "--name", "mine", "--stages", "--repeats", "1",
                 cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.relative_to(tmp_path / "runs/bench") for p in tmp_path.rglob("*") if p.is_file()} == \
        {Path("mine.json"), Path("mine.png"), Path("stages-mine.json"), Path("stages-mine.png")}
    assert json.loads((tmp_path / "runs/bench/mine.json").read_text())["rows"][0]["backend"] == "pil-wds"
    assert snapshot(RESULTS) == before
    assert cli.derived_name("loaders-cpu2", "stages") == "stages-cpu2"  # the published names keep their form


def loaders_file(path: Path, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": "cpu", "cpu_count": 2, "rows": [
        {"backend": "opencv", "image_size": size, "images_per_s": 900.0, "cpu_cores_used": 1.8}]}))
    return path


def test_feed_never_writes_over_its_input_and_names_a_size_the_input_lacks(tmp_path):
    source = loaders_file(tmp_path / "runs/bench/loaders.json")
    text = source.read_text()
    # the command: feed's name follows the input's, so it lands beside it, not on it
    done = bench("bench.feed", "--loaders", "runs/bench/loaders.json", "--out", "runs/bench", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert source.read_text() == text
    rows = json.loads((tmp_path / "runs/bench/feed-loaders.json").read_text())["rows"]
    assert {r["image_size"] for r in rows} == {64} and all(r["cores_to_feed"]["opencv"] > 0 for r in rows)
    named = bench("bench.feed", "--loaders", "runs/bench/loaders.json", "--out", "runs/bench", "--name", "loaders",
                  cwd=tmp_path)
    assert named.returncode == 2 and source.read_text() == text
    assert len(named.stderr.strip().splitlines()) == 1 and "is this command's input" in named.stderr
    sizes = bench("bench.feed", "--loaders", "runs/bench/loaders.json", "--sizes", "224,64", cwd=tmp_path)
    assert sizes.returncode == 2 and len(sizes.stderr.strip().splitlines()) == 1
    assert "no loader rows at 224 px (it has 64)" in sizes.stderr


@pytest.mark.parametrize("args,says", [
    (["--data", "{tmp}/missing"], "--data {tmp}/missing: not a converted folder"),
    (["--backends", "opencv,opencvv"], "opencvv: unknown backend"),
    (["--backends", "synthetic"], "synthetic: hands back one batch held in memory"),
    (["--backends", "ffcv@x"], "ffcv@x: NAME@SIDE takes"),
])
def test_loaders_refuses_bad_input_in_one_line_before_measuring(args, says, tmp_path):
    done = bench("bench.loaders", *[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert says.format(tmp=tmp_path) in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing measured, nothing written


def test_the_other_commands_refuse_bad_input_in_one_line(tmp_path):
    (tmp_path / "feed.json").write_text(json.dumps({"rows": [{"gpu": "t4"}]}))  # not a loaders result
    for args, says in ((["bench.stages", "--data", tmp_path / "missing"], "not a converted folder"),
                       (["bench.stages", "--backends", "resident"], "resident: unknown backend"),
                       (["bench.convert", "--images", tmp_path / "missing", "--skip-throughput"], "not a folder"),
                       (["bench.tta", "--data", tmp_path / "missing"], "not a converted folder"),
                       (["bench.feed", "--loaders", tmp_path / "feed.json"], "feed.json: not a bench.loaders result")):
        done = bench(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()  # bench.tta tried no backend and wrote no tta.json


def test_replot_into_bench_results_needs_publish(tmp_path, capsys):
    from bench.loaders import main
    before = snapshot(RESULTS)
    with pytest.raises(SystemExit):
        main(["--replot", str(RESULTS / "loaders-cpu2.json")])
    assert "add --publish" in capsys.readouterr().err and snapshot(RESULTS) == before


def help_examples(text: str) -> list[tuple[str, list[str]]]:
    """The `python -m bench.X ...` command lines a help text shows (continued lines joined,
    comments dropped): (module, arguments)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        m = re.match(r"\s*python -m (bench\.[\w.]+)(.*)", line)
        if m:
            out.append((m.group(1), shlex.split(m.group(2).split("#")[0])))
    return out


@pytest.mark.parametrize("module", MODULES)
def test_help_works_and_its_examples_parse(module, tmp_path):
    done = bench(module, "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    examples = help_examples(done.stdout)
    assert examples, f"{module} --help shows no example"
    for name, args in examples:
        parser = importlib.import_module(name).build_parser()
        parser.parse_args(args)  # an example that does not parse exits here (SystemExit 2)
    assert "this issue" not in done.stdout and "GRACE_S" not in done.stdout


def test_estimate_cost_json_is_a_path_and_the_old_switch_is_refused(tmp_path):
    tool = [sys.executable, str(ROOT / "tools" / "estimate_cost.py")]
    path = tmp_path / "cost.json"
    done = subprocess.run([*tool, "--model", "convmixer_768_32", "--gpu", "l4", "--json", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| convmixer_768_32 | l4 |" in done.stdout and f"wrote {path}" in done.stdout
    rows = json.loads(path.read_text())
    assert rows[0]["gpu"] == "l4" and rows[0]["hours"] > 0
    again = subprocess.run([*tool, "--gpu", "l4", "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    old = subprocess.run([*tool, "--json", "--gpu", "l4"], capture_output=True, text=True, timeout=300)
    assert old.returncode == 2 and old.stderr.count("\n") == 1 and "--json takes a file path" in old.stderr


def test_the_plan_names_the_loader_file_it_read(tmp_path):
    rates = loaders_file(tmp_path / "mine.json", size=224)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "estimate_cost.py"), "--plan", "--model",
                           "convmixer_768_32", "--gpu", "t4", "--epochs", "2", "--loader-results", str(rates)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Loader rates per core: {rates} (cpu, 2 cores)." in done.stdout and "opencv: cores needed" in done.stdout
