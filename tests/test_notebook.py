"""notebooks/t4-imagenet100.ipynb runs top to bottom (nbclient) on the CPU against the demo data,
its parameters injected after its "parameters" cell as papermill does; a second run, as after a
session ended, reuses the conversion and the loader benchmark and resumes the run."""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "t4-imagenet100.ipynb"


def ci_parameters(tmp: Path) -> dict:
    """Small CPU settings: 5 demo classes, a 16-wide ConvMixer at 32 px, 2 epochs; no installs, no
    TensorBoard server (it would outlive the kernel)."""
    return dict(PLATFORM="local", INSTALL=False, GPU=False, KIT=str(ROOT), SOURCE="demo", DATA=str(tmp / "demo"),
                NUM_CLASSES=5, FORMATS="wds", CONVERT_ARGS=["--demo-cache", str(tmp / "cache")],
                RUNS=str(tmp / "runs"), MODEL="convmixer_256_8", EPOCHS=2, IMAGE_SIZE=32, BATCH_SIZE=16,
                MICRO_BATCH=16, TRAIN_SETS=["model_overrides={dim: 16, depth: 2, kernel: 3, patch: 4}", "workers=2"],
                BENCH_BACKENDS="dali-cpu", BENCH_SIZES="32", BENCH_PHOTOS=24,
                BENCH_ARGS=["--model-batch", "2", "--model-steps", "1", "--epochs", "1", "--min-seconds", "0",
                            "--batch-size", "8"],
                SESSION_HOURS=None, TENSORBOARD=False)


def execute(tmp: Path, parameters: dict) -> str:
    """Run the notebook with `parameters` after its parameters cell; every output's text, joined.
    A cell that raises fails the test (nbclient's CellExecutionError names the cell)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()),
                                         metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, injected)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp)}}).execute()
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_every_platform_step_is_a_cell():
    """What CI cannot run (installs, a GPU, TensorBoard's server) is still in the notebook, behind a
    parameter, not removed."""
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    for words in ("apt-get", '"make", "gpu-setup"', "import nvidia.dali", "bench.loaders", '"--recipe", "t4"',
                  '"--resume"', "%load_ext tensorboard", '"tensorboard"', "estimate_cost.py", "compare.py",
                  "drive.mount", "/kaggle/working", "imagenet-object-localization-challenge"):
        assert words in source, words
    params = nbformat.read(NOTEBOOK, as_version=4).cells[1]
    assert params.metadata["tags"] == ["parameters"]
    assert set(ci_parameters(Path("/x"))) <= {line.split("=")[0].strip() for line in params.source.splitlines()
                                                if "=" in line and not line.startswith("#")}


def test_the_notebook_runs_on_the_demo_data_then_resumes(tmp_path):
    parameters = ci_parameters(tmp_path)
    text = execute(tmp_path, parameters)
    run = tmp_path / "runs" / "t4-convmixer_256_8"
    with open(run / "epochs.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert json.loads((run / "summary.json").read_text())["config"]["backend"] == "dali"  # the t4 recipe's
    for name in ("bench/loaders-cpu.json", "bench/loaders-cpu.png", "compare.png", "estimate-t4.json"):
        assert (tmp_path / "runs" / name).is_file(), name
    assert "predicted, T4 fp16" in text and "measured on cpu" in text and "2 of 2 epochs done" in text
    assert "continuing that run" not in text

    # a new session: the same notebook again continues what is there instead of refusing or redoing it
    text = execute(tmp_path, parameters)
    assert "measured before:" in text and "continuing that run" in text and "--set workers=2 --resume\n" in text
    with open(run / "epochs.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.parametrize("bad, words", [({"PLATFORM": "paperspace"}, "PLATFORM='paperspace'"),
                                        ({"SOURCE": "/nowhere/imagenet"}, "SOURCE /nowhere/imagenet: not found")])
def test_a_bad_parameter_stops_at_the_set_up_cell(tmp_path, bad, words):
    from nbclient.exceptions import CellExecutionError
    with pytest.raises(CellExecutionError, match=words):
        execute(tmp_path, {**ci_parameters(tmp_path), **bad})
    assert not (tmp_path / "runs" / "t4-convmixer_256_8").exists()


@pytest.mark.parametrize("how", ["environment", "command line"])
def test_gpu_setup_installs_into_the_python_it_is_given(how):
    """The notebook runs `make gpu-setup PY=...`; README writes `PY=python3 make gpu-setup`. Both must
    install into that Python (the Makefile's `PY :=` beat the environment: README's form used .venv's)."""
    # not make's own variables: under `make test` (CI) a sub-make prints "Entering directory" first
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    if how == "environment":
        env["PY"] = "/opt/platform/python3"
    given = ["PY=/opt/platform/python3"] if how == "command line" else []
    plan = subprocess.run(["make", "--no-print-directory", "-n", "gpu-setup", *given], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    assert plan[0].startswith("/opt/platform/python3 -c ") and ".venv" not in "\n".join(plan), plan
