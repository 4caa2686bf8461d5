"""What a checkpoint holds is checked before it is used (issue 26, items 10 and 11): a checkpoint
records its classes, and tools/evaluate.py and --resume refuse data of other classes (even as many)
in one line; every value read from a checkpoint or the config.yaml beside it is checked as a --set
value is, and a bad one is one line naming the file and the key, never a traceback or a silent
score."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import evaluate as evaluate_tool  # noqa: E402  (tools/evaluate.py)
import train as train_tool  # noqa: E402  (tools/train.py)
from test_run_folder import TINY  # noqa: E402

ONE_EPOCH = [*TINY, "--epochs", "1", "--set", "max_steps_per_epoch=2"]
EVAL = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(flat_converted, tmp_path_factory) -> tuple[Path, Path]:
    """(data, run folder) of one tiny finished epoch."""
    data, _, _ = flat_converted
    out = tmp_path_factory.mktemp("values") / "run"
    assert train_tool.main([*ONE_EPOCH, "--data", str(data), "--out", str(out)]) == 0
    return data, out


def other_classes(data: Path, dest: Path) -> Path:
    """A copy of `data` whose classes are as many, under other WNIDs."""
    shutil.copytree(data, dest)
    classes = json.loads((dest / "classes.json").read_text())
    for c in classes:
        c["wnid"] = "n0" + c["wnid"][2:][::-1]
    (dest / "classes.json").write_text(json.dumps(classes))
    return dest


def edited(run: Path, dest: Path, **changes) -> Path:
    """A copy of the run folder whose last.pt has `changes` (config_KEY: a config value; None: removed)."""
    shutil.copytree(run, dest)
    state = torch.load(dest / "last.pt", weights_only=True)
    for key, value in changes.items():
        if key.startswith("config_"):
            state["config"][key[7:]] = value
        elif value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, dest / "last.pt")
    return dest


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_checkpoint_records_its_classes_and_evaluate_says_so(run, capsys):
    data, out = run
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["classes"] == [c["wnid"] for c in json.loads((data / "classes.json").read_text())]
    result = evaluate_tool.main(["--checkpoint", str(out / "best.pt"), "--data", str(data), *EVAL])
    assert result["classes"] == "the data's" and "classes: the data's" in capsys.readouterr().out


def test_evaluate_refuses_other_classes_of_the_same_count(run, tmp_path, capsys):
    """Before: "top-1 ... (3 classes, as the data)" on three other WNIDs."""
    data, out = run
    other = other_classes(data, tmp_path / "other")
    argv = ["--checkpoint", str(out / "best.pt"), "--data", str(other), *EVAL]
    assert evaluate_tool.main(argv) == 2
    line = one_line(capsys)
    assert str(out / "best.pt") in line and "other classes" in line and "--other-classes" in line, line
    result = evaluate_tool.main([*argv, "--other-classes"])  # transfer, asked for
    assert result["eval_images"] == 12 and result["classes"].startswith("other than the data's")


def test_resume_refuses_a_checkpoint_of_other_classes(run, tmp_path, capsys):
    """The same --data, its classes changed since (say, converted again with other classes)."""
    data, out = run
    ids = torch.load(out / "last.pt", weights_only=True)["classes"]
    run_copy = edited(out, tmp_path / "run", classes=[w[::-1] for w in ids])
    where = ["--data", str(data), "--out", str(run_copy), "--resume"]
    assert train_tool.main([*ONE_EPOCH, *where]) == 1  # the same settings: only the classes differ
    line = one_line(capsys)
    assert str(run_copy / "last.pt") in line and "other classes" in line and "--allow-changes" in line, line
    epochs_before = (run_copy / "epochs.csv").read_text()
    with pytest.warns(UserWarning, match="on other classes"):
        assert train_tool.main([*TINY, "--epochs", "2", "--set", "max_steps_per_epoch=2", *where, "--allow-changes"]) == 0
    assert len((run_copy / "epochs.csv").read_text().splitlines()) == len(epochs_before.splitlines()) + 1


BAD_CONFIG = [  # (last.pt change, words the line must hold after the file's name)
    ({"config_val_image_size": -8}, ["config: val_image_size", "-8"]),
    ({"config_crop_ratio": 0}, ["config: crop_ratio", "> 0"]),
    ({"config_micro_batch": "abc"}, ["config: micro_batch", "'abc'"]),
    ({"config_model_overrides": {"dim": "abc"}}, ["config: model_overrides.dim", "'abc'"]),
    ({"config": [1, 2]}, ["config: expected a mapping", "list"]),
    ({"epoch": "zero"}, ["epoch: expected an epoch index", "'zero'"]),
    ({"classes": "n01"}, ["classes: expected a list of class ids"]),
]
BAD_RESUME = [
    ({"optimizer": None}, ["optimizer: expected an optimizer state_dict", "missing"]),
    ({"rng": []}, ["rng: expected a list of RNG states"]),
    ({"updates": -3}, ["updates: expected an update count"]),
    ({"scaler": [1]}, ["scaler: expected a GradScaler state_dict"]),
    ({"time_budget": {"epochs": 2, "last_epoch_updates": "x"}}, ["time_budget.last_epoch_updates: expected a count"]),
    ({"optimizer": {"state": {}, "param_groups": []}}, ["optimizer: does not fit this run", "parameter groups"]),
]


@pytest.mark.parametrize("change, words", BAD_CONFIG, ids=[next(iter(c)) for c, _ in BAD_CONFIG])
def test_evaluate_checks_the_checkpoint_values(change, words, run, tmp_path, capsys):
    """Before: val_image_size=-8 scored silently (at another size), the others were tracebacks."""
    data, out = run
    path = edited(out, tmp_path / "run", **change) / "last.pt"
    assert evaluate_tool.main(["--checkpoint", str(path), "--data", str(data), *EVAL]) == 2
    line = one_line(capsys)
    assert line.startswith(f"evaluate: {path}: ") and all(w in line for w in words), line


@pytest.mark.parametrize("change, words", BAD_CONFIG + BAD_RESUME, ids=[next(iter(c)) for c, _ in BAD_CONFIG + BAD_RESUME])
def test_resume_checks_the_checkpoint_values(change, words, run, tmp_path, capsys):
    data, out = run
    folder = edited(out, tmp_path / "run", **change)
    assert train_tool.main([*ONE_EPOCH, "--data", str(data), "--out", str(folder), "--resume"]) == 1
    line = one_line(capsys)
    assert line.startswith(f"train: {folder / 'last.pt'}: ") and all(w in line for w in words), line


@pytest.mark.parametrize("text, words", [
    ("- 1\n- 2\n", ["expected the trainer's config.yaml", "list"]),
    ("channels_last: maybe\n", ["channels_last: expected true or false", "'maybe'"]),
    ("config: {crop_ratio: 7}\nchannels_last: true\n", ["config: crop_ratio", "(0, 1]"]),
    ("a: &x [1]\nb: *x\n", ["line 2", "aliases (*x)"]),
])
def test_evaluate_checks_the_config_yaml_beside_it(text, words, run, tmp_path, capsys):
    data, out = run
    folder = edited(out, tmp_path / "run")
    (folder / "config.yaml").write_text(text)
    assert evaluate_tool.main(["--checkpoint", str(folder / "best.pt"), "--data", str(data), *EVAL]) == 2
    line = one_line(capsys)
    assert line.startswith(f"evaluate: {folder / 'config.yaml'}: ") and all(w in line for w in words), line
