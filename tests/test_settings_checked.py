"""Settings that passed the up-front check and failed later, or were read without a limit
(issue 26, items 7, 12 and 14's run folder): each is refused by tools/train.py in one line naming
the key, before the model or a loader is built and before the run folder exists."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastmix import safeyaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402  (tools/train.py)
from test_run_folder import TINY  # noqa: E402

BOMB = "".join([f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'x'}]\n" for i in range(8)])

CASES = [  # (id, --set values (then any other flags), words the one line must hold)
    ("image-size-1", ["image_size=1"], ["image_size: 1 px", "model_overrides.patch (4 px)"]),
    ("patch-1000", ["model_overrides={dim: 16, depth: 2, kernel: 3, patch: 1000}"],
     ["image_size: 32 px", "model_overrides.patch (1000 px)"]),
    ("val-size-below-patch", ["val_image_size=2"], ["val_image_size: 2 px"]),
    ("crop-ratio-5", ["crop_ratio=5"], ["crop_ratio", "(0, 1]", "5.0"]),
    ("loader-option-unknown", ["loader_options={colour: red}"], ["loader_options", "'colour'", "memory_share"]),
    ("loader-option-near", ["loader_options={memory_shar: 0.5}"], ["did you mean 'memory_share'"]),
    ("loader-option-other-backend", ["loader_options={crop: pad}"], ["loader_options.crop", "pil-wds", "does not read"]),
    ("loader-option-trainer-sets", ["loader_options={hflip: false}"], ["loader_options.hflip", "set it with hflip"]),
    ("loader-option-type", ["loader_options={padding: wide}", "--backend", "resident"], ["loader_options.padding", "'wide'"]),
    ("loader-option-value", ["loader_options={crop: square}", "--backend", "resident"], ["loader_options", "'square'"]),
    ("rand-augment-m999", ["rand_augment=rand-m999"], ["rand_augment 'rand-m999'", "m in [0, 10]"]),
    ("rand-augment-field", ["rand_augment=rand-q3"], ["rand_augment 'rand-q3'", "'q3'"]),
    ("seed-huge", ["seed=99999999999999999999999"], ["seed", "2**32"]),
    ("threads-100000", ["threads=100000"], ["threads: 100000", "CPUs"]),
    ("set-alias", ["loader_options={a: &x [1, 2], b: *x}"], ["--set", "aliases (*x)"]),
]


def train(argv: list[str], capsys) -> tuple[int, list[str]]:
    rc = train_tool.main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def data(tmp_path) -> Path:
    """Only classes.json: every refusal here comes before a loader would read more."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.json").write_text(json.dumps([{"index": i, "wnid": f"n0{i}", "name": ""}
                                                                for i in range(3)]))
    return tmp_path / "data"


@pytest.mark.parametrize("sets, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_setting_that_would_fail_later_is_one_line_up_front(sets, words, data, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [a for s in sets for a in (("--set", s) if not s.startswith("-") and "=" in s else (s,))]
    rc, err = train([*TINY, *flags, "--data", str(data), "--out", str(out)], capsys)
    assert rc in (1, 2) and len(err) == 1, err
    assert err[0].startswith("train: ")
    for word in words:
        assert word in err[0], (word, err[0])
    assert not out.exists()  # refused before anything was built or written


def test_threads_up_to_the_cpus_pass_the_check(data, tmp_path, capsys):
    """The threads limit is this machine's CPUs: as many as it has is no error (the run then stops
    at the data, which holds only classes.json)."""
    rc, err = train([*TINY, "--set", f"threads={os.cpu_count()}", "--data", str(data), "--out", str(tmp_path / "run")],
                    capsys)
    assert rc == 1 and "manifest.json: not found" in err[-1], err


@pytest.mark.parametrize("text, words", [
    (BOMB, ["aliases (*a0)", "line 2"]),                     # 10^7 leaves from 400 bytes
    ("epochs: 2\nloader_options: &x {a: *x}\n", ["aliases (*x)"]),  # a node that holds itself
    ("epochs: " + "[" * 5000 + "\n", ["nested too deeply"]),
    ("- epochs: 2\n", ["expected a mapping of TrainConfig keys", "list"]),
])
def test_a_recipe_is_read_without_aliases(text, words, data, tmp_path):
    """Through the script a user runs: before, the bomb wrote an 18 MB config.yaml at 1.1 GB RSS
    and the self-referencing anchor ended in RecursionError after the model was built."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    done = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "--recipe", str(recipe), "--data", str(data),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(recipe) in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "run").exists()


def test_the_loader_refuses_aliases_but_reads_anchors_and_plain_yaml():
    assert safeyaml.loads("a: &x 1\nb: [1, {c: 2}]\n", "t") == {"a": 1, "b": [1, {"c": 2}]}
    with pytest.raises(safeyaml.YAMLRefused, match="^t: line 2: YAML aliases"):
        safeyaml.loads("a: &x 1\nb: *x\n", "t")


def test_a_catalog_with_aliases_is_refused(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import estimate_cost
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text("t4: &t4 {memory_gb: 16}\nmine: *t4\n")
    rc = estimate_cost.main(["--catalog", str(catalog)])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and str(catalog) in line and "aliases (*t4)" in line


def test_out_that_is_a_file_is_one_line(data, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    for out, words in ((tmp_path / "taken", ["is not a folder"]),
                       (tmp_path / "taken" / "run", ["is not a folder", f"({tmp_path / 'taken'} is a file)"])):
        rc, err = train([*TINY, "--data", str(data), "--out", str(out)], capsys)
        assert rc == 1 and len(err) == 1 and err[0].startswith(f"train: out: {out}"), err
        assert all(w in err[0] for w in words), err[0]
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_out_that_is_read_only_is_one_line(data, tmp_path, capsys):
    """A mode 555 folder; as root (who writes anywhere) a read-only tmpfs where mounting is allowed."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    mounted = os.access(locked, os.W_OK) and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "fastmix-test", str(locked)], capture_output=True).returncode == 0
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes into a mode 555 folder and cannot mount a read-only one")
        rc, err = train([*TINY, "--data", str(data), "--out", str(locked / "run")], capsys)
        assert rc == 1 and len(err) == 1 and "cannot be written" in err[0] and str(locked) in err[0], err
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=True)
        locked.chmod(0o755)


def test_the_trainer_writes_no_aliases_and_compare_reads_none(tmp_path, capsys):
    """PyYAML's safe_dump writes an object held twice as &id001/*id001, which the loader refuses:
    config.yaml goes through safeyaml.dumps, and tools/compare.py reads it through the loader."""
    shared = [1, 2]
    text = safeyaml.dumps({"a": shared, "b": {"c": shared}})
    assert "&" not in text and safeyaml.loads(text, "t") == {"a": [1, 2], "b": {"c": [1, 2]}}
    import compare  # tools/compare.py
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("config: &c {lr: 0.1}\nagain: *c\n")
    rc = compare.main([str(run), "--out", str(tmp_path / "c.png")])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and str(run / "config.yaml") in line and "aliases (*c)" in line, line
