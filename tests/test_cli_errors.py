"""Bad input to every tool (train, evaluate, estimate_cost, convert_subset, sweep, profile_gpu) is
refused before any work: exit code != 0 and exactly one line on stderr naming the key, value or file
(issue 21, item 10).

One table; most rows call the tool's main(argv) (fast), the rows marked `subprocess` run the real
script with this interpreter, as a user would."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import convert_subset as convert_subset_tool  # noqa: E402  (tools/convert_subset.py)
import estimate_cost as estimate_cost_tool  # noqa: E402  (tools/estimate_cost.py)
import evaluate as evaluate_tool  # noqa: E402  (tools/evaluate.py)
import profile_gpu as profile_gpu_tool  # noqa: E402  (tools/profile_gpu.py)
import sweep as sweep_tool  # noqa: E402  (tools/sweep.py)
import train as train_tool  # noqa: E402  (tools/train.py)

TOOLS = {"train": train_tool, "evaluate": evaluate_tool, "estimate_cost": estimate_cost_tool,
         "convert_subset": convert_subset_tool, "sweep": sweep_tool, "profile_gpu": profile_gpu_tool}


def files(tmp: Path) -> dict:
    """Inputs the rows refer to: {name} in a row's argv is replaced by the path."""
    (tmp / "data").mkdir()
    classes = [{"index": i, "wnid": w, "name": w} for i, w in enumerate("ab")]  # as convert_subset.py writes it
    (tmp / "data" / "classes.json").write_text(json.dumps(classes))
    (tmp / "bad-classes").mkdir()
    (tmp / "bad-classes" / "classes.json").write_text("{not json")
    (tmp / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint at all" * 10)
    torch.save([1, 2, 3], tmp / "list.pt")
    (tmp / "garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp / "shape.json").write_text(json.dumps({"efficiency": 5}))
    (tmp / "ops.json").write_text(json.dumps({"op_efficiency": {"pointwise:x": {"efficiency": "fast"}}}))
    (tmp / "recipe.yaml").write_text("epochs: 2\nlr: fast\n")
    (tmp / "recipe-key.yaml").write_text("epochs: 2\nwieght_decay: 0.1\n")
    for split in ("train", "val"):  # a one-image ImageFolder source for the converter
        (tmp / "src" / split / "n01440764").mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp / "src" / split / "n01440764" / "a.JPEG")
    return {k: str(tmp / k) for k in ("data", "bad-classes", "garbage.pt", "list.pt", "garbage.json", "shape.json",
                                      "ops.json", "recipe.yaml", "recipe-key.yaml", "src")} | {
        "missing": str(tmp / "nope.pt"), "out": str(tmp / "out")}


CONVERT = ["--source", "{src}", "--out", "{out}"]


CASES = [  # (id, tool, argv, exit code, words the one line must contain, run as subprocess)
    ("epochs-0", "train", ["--set", "epochs=0"], 2, ["epochs", "0"], False),
    ("epochs-flag-negative", "train", ["--epochs", "-1"], 2, ["epochs", "-1"], True),
    ("batch-0", "train", ["--batch-size", "0"], 2, ["batch_size", "0"], False),
    ("micro-batch-0", "train", ["--set", "micro_batch=0"], 2, ["micro_batch", "0"], False),
    ("image-size-0", "train", ["--set", "image_size=0"], 2, ["image_size", "0"], False),
    ("lr-abc", "train", ["--set", "lr=abc"], 2, ["lr", "'abc'"], True),
    ("lr-negative", "train", ["--set", "lr=-0.1"], 2, ["lr", "-0.1"], False),
    ("mixup-list", "train", ["--set", "mixup=[1, 2]"], 2, ["mixup", "[1, 2]"], False),
    ("hflip-string", "train", ["--set", "hflip=sometimes"], 2, ["hflip", "'sometimes'"], False),
    ("unknown-set-key", "train", ["--set", "lrr=0.1"], 2, ["'lrr'", "did you mean 'lr'", "weight_decay"], False),
    ("set-without-value", "train", ["--set", "epochs"], 2, ["'epochs'", "key=value"], False),
    ("flag-and-set-disagree", "train", ["--epochs", "4", "--set", "epochs=10"], 2, ["--epochs 4", "epochs=10"], False),
    ("recipe-string-lr", "train", ["--recipe", "{recipe.yaml}"], 2, ["lr", "'fast'"], False),
    ("recipe-unknown-key", "train", ["--recipe", "{recipe-key.yaml}"], 2,
     ["recipe-key.yaml", "'wieght_decay'", "did you mean 'weight_decay'"], False),
    ("train-precision-fp8", "train", ["--precision", "fp8"], 2, ["--precision", "'fp8'", "fp32"], False),
    ("epochs-not-a-number", "train", ["--epochs", "ten"], 2, ["--epochs", "'ten'"], False),
    ("resume-and-overwrite", "train", ["--data", "{data}", "--out", "{data}", "--resume", "--overwrite"], 1,
     ["--resume", "--overwrite"], False),
    ("checkpoint-missing", "evaluate", ["--checkpoint", "{missing}", "--data", "{data}"], 2, ["nope.pt", "not found"], False),
    ("checkpoint-garbage", "evaluate", ["--checkpoint", "{garbage.pt}", "--data", "{data}"], 2,
     ["garbage.pt", "not a readable checkpoint"], True),
    ("checkpoint-not-a-dict", "evaluate", ["--checkpoint", "{list.pt}", "--data", "{data}", "--model", "convmixer_256_8"],
     2, ["list.pt", "not a state_dict"], False),
    ("data-missing", "evaluate", ["--checkpoint", "{garbage.pt}", "--data", "{missing}"], 2,
     ["nope.pt/classes.json", "not found"], False),
    ("classes-not-json", "evaluate", ["--checkpoint", "{garbage.pt}", "--data", "{bad-classes}"], 2,
     ["bad-classes/classes.json", "not JSON"], False),
    ("eval-image-size-0", "evaluate", ["--checkpoint", "{garbage.pt}", "--data", "{data}", "--image-size", "0"], 2,
     ["--image-size", "'0'"], False),
    ("eval-crop-ratio-2", "evaluate", ["--checkpoint", "{garbage.pt}", "--data", "{data}", "--crop-ratio", "2"], 2,
     ["--crop-ratio", "'2'"], False),
    ("cost-precision-fp8", "estimate_cost", ["--precision", "fp8"], 2, ["--precision", "'fp8'", "bf16"], True),
    ("cost-calibration-garbage", "estimate_cost", ["--calibration", "{garbage.json}"], 2, ["garbage.json", "not JSON"], False),
    ("cost-calibration-shape", "estimate_cost", ["--calibration", "{shape.json}"], 2, ["shape.json", "efficiency"], False),
    ("cost-calibration-op", "estimate_cost", ["--calibration", "{ops.json}"], 2, ["ops.json", "pointwise:x"], False),
    ("cost-calibration-missing", "estimate_cost", ["--calibration", "{missing}"], 2, ["nope.pt", "not found"], False),
    ("cost-epochs-0", "estimate_cost", ["--epochs", "0"], 2, ["--epochs", "0"], False),
    ("cost-progressive-start", "estimate_cost", ["--plan", "--progressive", "{start: 16}"], 2,
     ["--progressive", "start", ">= 32"], False),
    ("convert-unknown-format", "convert_subset", [*CONVERT, "--formats", "wds,tfrecord"], 2,
     ["'tfrecord'", "--formats", "wds, ffcv"], False),
    ("convert-class-list-missing", "convert_subset", [*CONVERT, "--class-list", "{missing}"], 2,
     ["nope.pt", "not found"], False),
    ("convert-shard-size-0", "convert_subset", [*CONVERT, "--shard-size", "0"], 2, ["--shard-size 0", ">= 1"], True),
    ("convert-quality-200", "convert_subset", [*CONVERT, "--quality", "200"], 2, ["--quality 200", "1..100"], False),
    ("convert-num-classes-0", "convert_subset", [*CONVERT, "--num-classes", "0"], 2, ["--num-classes 0"], False),
    ("convert-layout-choice", "convert_subset", [*CONVERT, "--layout", "zip"], 2, ["--layout", "'zip'"], False),
    ("sweep-kernel-abc", "sweep", ["--grid", "kernel=3,abc", "--out", "{out}"], 2,
     ["kernel=abc", "model_overrides.kernel", "'abc'"], True),
    ("sweep-repeated-axis", "sweep", ["--grid", "kernel=3", "--grid", "kernel=5", "--out", "{out}"], 2,
     ["'kernel' is already an axis"], False),
    ("sweep-unknown-field", "sweep", ["--grid", "kernal=3,5", "--out", "{out}"], 2, ["'kernal'"], False),
    ("sweep-no-out", "sweep", ["--grid", "kernel=3,5"], 2, ["--out"], False),
    ("sweep-grid-and-set", "sweep", ["--grid", "lr=0.01,0.05", "--set", "lr=0.1", "--out", "{out}"], 2,
     ["'lr' is both a --grid axis and a --set"], False),
    ("sweep-grid-and-model-set", "sweep", ["--grid", "kernel=3,5", "--set", "model_overrides={kernel: 7}",
                                           "--out", "{out}"], 2, ["'kernel'", "model_overrides"], False),
    ("sweep-grid-out", "sweep", ["--grid", "out=a,b", "--out", "{out}"], 2, ["cells/<cell>"], False),
    ("sweep-data-and-set", "sweep", ["--grid", "kernel=3", "--data", "{data}", "--set", "data=elsewhere",
                                     "--out", "{out}"], 2, ["--data", "data=elsewhere", "disagree"], False),
    ("sweep-data-missing", "sweep", ["--grid", "kernel=3,5", "--data", "{missing}", "--out", "{out}"], 2,
     ["nope.pt/classes.json", "not found"], False),
    ("profile-steps-0", "profile_gpu", ["--steps", "0"], 2, ["--steps", "'0'"], False),
    ("cost-catalog-not-yaml", "estimate_cost", ["--catalog", "{garbage.json}"], 2, ["garbage.json", "not YAML"], False),
    ("profile-precision-fp8", "profile_gpu", ["--precision", "fp8"], 2, ["--precision", "'fp8'", "bf16"], False),
    ("profile-config-precision", "profile_gpu", ["--config", "convmixer_768_32:32:fp8"], 2,
     ["--config", "'fp8'", "bf16"], False),
    ("profile-config-batch", "profile_gpu", ["--config", "convmixer_768_32:many"], 2, ["--config", "BATCH"], False),
]


@pytest.mark.parametrize("tool, argv, code, words, as_subprocess", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_an_exit_code(tool, argv, code, words, as_subprocess, tmp_path, monkeypatch, capsys):
    paths = files(tmp_path)
    argv = [paths.get(a[1:-1], a) if a.startswith("{") else a for a in argv]  # {name}: a file above
    monkeypatch.chdir(tmp_path)  # a default run folder would land here, never in the checkout
    if as_subprocess:
        done = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *argv], capture_output=True,
                              text=True, timeout=300)
        rc, err = done.returncode, done.stderr
    else:
        try:
            rc = TOOLS[tool].main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{tool}: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()  # refused before any work
