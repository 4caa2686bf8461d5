"""One flag vocabulary across bench/ (bench/cli.py): new spellings in --help, old ones hidden but
working with a one-line warning, --out always a folder."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from bench.cli import add_out, alias, out_path

MODULES = ["bench.loaders", "bench.stages", "bench.feed", "bench.convert", "bench.calibration", "bench.gpu.__main__",
           "bench.gpu.lent"]
OLD = {"bench.loaders": "--stage-repeats", "bench.feed": "--batch", "bench.calibration": "--reps",
       "bench.gpu.__main__": "--repeat", "bench.gpu.lent": "--results"}


def help_text(module: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", MODULES)
def test_help_shows_the_vocabulary_only(module, capsys):
    text = help_text(module, capsys)
    assert "--out" in text
    for old in ("--batch ", "--stage-repeats", "--reps", "--repeat ", "--results"):
        assert old not in text, (module, old)
    if module in ("bench.loaders", "bench.stages", "bench.feed"):
        assert "--batch-size" in text
    if module in ("bench.loaders", "bench.stages", "bench.calibration", "bench.gpu.__main__"):
        assert "--repeats" in text


def test_alias_stores_into_the_new_flag_and_warns(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fast", action="store_true")
    alias(p, "--batch", "--batch-size")
    alias(p, "--quick", "--fast")
    a = p.parse_args(["--batch", "32", "--quick"])
    assert a.batch_size == 32 and isinstance(a.batch_size, int) and a.fast is True
    err = capsys.readouterr().err
    assert "x: --batch is deprecated; use --batch-size" in err and "--quick is deprecated; use --fast" in err
    assert p.parse_args([]).batch_size == 64 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        p.parse_args(["--batch", "many"])  # the new flag's type checks the old spelling too


def test_old_spellings_still_work(tmp_path, capsys):
    from bench.gpu.__main__ import main as gpu
    assert gpu(["--out", str(tmp_path / "g"), "--smoke", "--repeat", "1"]) == 2  # refused by its value, not its name
    err = capsys.readouterr().err
    assert "--repeat is deprecated; use --repeats" in err and "--repeats 1: at least 2" in err
    from bench.feed import main as feed
    with pytest.raises(SystemExit, match="not found"):
        feed(["--batch", "32", "--loaders", str(tmp_path / "none.json")])
    assert "--batch is deprecated; use --batch-size" in capsys.readouterr().err


def test_out_is_a_folder(tmp_path, capsys):
    p = argparse.ArgumentParser(prog="b")
    add_out(p, "thing", "the JSON")
    assert out_path(p, p.parse_args(["--out", str(tmp_path)]), "thing") == tmp_path / "thing.json"
    assert out_path(p, p.parse_args([]), "dflt") == Path("runs/bench/dflt.json")
    a = p.parse_args(["--out", str(tmp_path), "--name", "run-2"])
    assert out_path(p, a, "thing") == tmp_path / "run-2.json"
    old = out_path(p, p.parse_args(["--out", str(tmp_path / "x.json")]), "thing")
    assert old == tmp_path / "x.json"
    assert f"--out {tmp_path / 'x.json'} (a file) is deprecated; use --out {tmp_path} --name x" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        out_path(p, p.parse_args(["--out", str(tmp_path / "file")]), "thing")
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        out_path(p, p.parse_args(["--out", str(tmp_path), "--name", "a/b"]), "thing")


def test_loader_dtype_is_checked(capsys):
    from bench.loaders import main
    with pytest.raises(SystemExit) as e:
        main(["--dtype", "float64"])
    assert e.value.code == 2 and "invalid choice: 'float64'" in capsys.readouterr().err
