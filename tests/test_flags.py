"""One flag vocabulary across tools/ (issue 22, item 5): --batch-size, --num-images for a count
(--images is a folder of photos), --out a folder, --precision checked by argparse, every default
said once in --help; old spellings hidden, working, and warned about in one line; estimate_cost's
--progressive takes what train.py's `--set progressive=...` takes."""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

from fastmix.perf import plan
from fastmix.train.recipe import TrainConfig
from fastmix.train.recipe import image_size_at

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
TOOLS = ["convert_subset", "estimate_cost", "evaluate", "profile_gpu", "sweep", "train"]
WITH_PRECISION = ["estimate_cost", "evaluate", "profile_gpu", "train"]


def tool(name: str):
    return importlib.import_module(name)  # tools/<name>.py


def run(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = tool(name).main(argv)
    except SystemExit as e:  # argparse: --help, bad arguments
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def options(help_text: str) -> dict[str, str]:
    """--flag -> its help entry (the lines up to the next flag)."""
    body = help_text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + body)
    return {e.split()[0].rstrip(","): " ".join(e.split()) for e in entries if e.strip().startswith("-")}


@pytest.mark.parametrize("name", TOOLS)
def test_help_says_each_default_once_and_uses_the_vocabulary(name, capsys):
    rc, text, _ = run(name, ["--help"], capsys)
    assert rc == 0
    entries = options(text)
    for flag, entry in entries.items():
        assert entry.count("default") <= 1, entry
        assert "(default: None)" not in entry and "(default: [])" not in entry, entry
    assert "--batch" not in entries and "--images" not in entries  # a count is --num-images
    if "--out" in entries:
        assert "folder" in entries["--out"], entries["--out"]


@pytest.mark.parametrize("name", WITH_PRECISION)
def test_precision_is_one_of_its_choices_everywhere(name, capsys):
    rc, _, err = run(name, ["--precision", "fp8"], capsys)
    assert rc == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"{name}: ") and "--precision" in line and "'fp8'" in line and "bf16" in line


def test_old_spellings_still_work_and_warn_in_one_line(capsys, tmp_path):
    common = ["--gpu", "t4", "--model", "convmixer_256_8"]
    rc, new, err = run("estimate_cost", ["--num-images", "5000", "--batch-size", "32", *common, "--json",
                                         str(tmp_path / "new.json")], capsys)
    assert rc == 0 and err == ""
    rc, old, err = run("estimate_cost", ["--images", "5000", "--batch", "32", *common, "--json",
                                         str(tmp_path / "old.json")], capsys)
    assert rc == 0 and (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()
    assert err.splitlines() == ["estimate_cost: --images is deprecated; use --num-images",
                                "estimate_cost: --batch is deprecated; use --batch-size"]
    [row] = json.loads((tmp_path / "new.json").read_text())
    assert row["train_images"] == 5000 and row["batch"] == 32
    rc, _, err = run("estimate_cost", ["--batch", "many"], capsys)  # the old spelling is checked as the new one
    assert rc == 2 and "invalid positive value: 'many'" in err.strip().splitlines()[-1]


def schedule(argv: list[str]) -> list[int]:
    est = tool("estimate_cost")
    return est.schedule_of(est.parse_args(argv))


def test_progressive_is_train_pys_syntax_sized_as_the_trainer_sizes_it(capsys, tmp_path):
    ramp = {"start": 160, "until": 0.75}
    sizes = schedule(["--epochs", "12", "--progressive", "{start: 160, until: 0.75}"])
    trainer = [image_size_at(TrainConfig(epochs=12, image_size=224, progressive=ramp), e) for e in range(12)]
    assert sizes == trainer and sizes[0] == 160 and sizes[-1] == 224 and len(set(sizes)) == 3
    assert schedule(["--epochs", "4"]) == [224] * 4  # no --progressive: the one size
    assert schedule(["--epochs", "8", "--image-size", "256", "--progressive", "{start: 128}"])[-1] == 256
    assert capsys.readouterr().err == ""

    # the planner is handed that schedule: it costs the sizes the trainer visits, epoch by epoch
    rc, out, _ = run("estimate_cost", ["--plan", "--model", "convmixer_768_32", "--gpu", "t4", "--epochs", "12",
                                       "--progressive", "{start: 160, until: 0.75}", "--json",
                                       str(tmp_path / "plan.json")], capsys)
    [row] = json.loads((tmp_path / "plan.json").read_text())["convmixer_768_32"]
    assert rc == 0 and row["sizes"] == list(dict.fromkeys(trainer)) and set(row["per_size"]) == {"160", "192", "224"}


def test_small_images_ramp_in_8_px_steps():
    """Below 128 px the ramp steps by 8 px: with 32 px steps a 40 -> 56 ramp was 32 then 56."""
    cfg = TrainConfig(epochs=9, image_size=56, progressive={"start": 40, "until": 0.67})
    assert [image_size_at(cfg, e) for e in range(9)] == [40, 40, 40, 48, 48, 56, 56, 56, 56]


def test_the_old_progressive_syntax_warns_and_keeps_its_meaning(capsys):
    assert schedule(["--epochs", "4", "--progressive", "128:224"]) == plan.epoch_sizes(4, [128, 224])
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("estimate_cost: --progressive 128:224 (sizes in equal blocks of epochs) is deprecated")


@pytest.mark.parametrize("value, words", [
    ("{strat: 160}", ["unknown key 'strat'", "did you mean 'start'"]),
    ("{start: 160, until: 2}", ["until", "(0, 1]"]),
    ("a:b", ["expected a mapping"]),
])
def test_a_bad_progressive_is_one_line(value, words, capsys):
    rc, _, err = run("estimate_cost", ["--plan", "--progressive", value], capsys)
    [line] = err.strip().splitlines()
    assert rc == 2 and line.startswith(f"estimate_cost: --progressive {value!r}")
    for word in words:
        assert word in line, line


def test_train_refuses_the_same_bad_progressive():
    with pytest.raises(ValueError, match="unknown key 'begin'"):
        TrainConfig(progressive={"begin": 160})
    with pytest.raises(ValueError, match=r"until: fraction in \(0, 1\]"):
        TrainConfig(progressive={"start": 160, "until": 0})
