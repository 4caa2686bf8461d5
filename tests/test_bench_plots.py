"""Every benchmark chart redraws from its JSON (--replot) and says what, on what, and when; the
loader chart keeps the synthetic ceiling off the real backends' axis, one colour per backend."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from bench.plotting import backend_colors, is_before, when  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@pytest.fixture
def saved(monkeypatch):
    """The figures the code saves: their title texts and axes, instead of PNG files."""
    figures = []

    def capture(fig, path, **kw):
        titles = [fig._suptitle.get_text()] if fig._suptitle else []
        figures.append({"path": Path(path), "titles": titles + [ax.get_title() for ax in fig.axes], "fig": fig})
    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(RESULTS / name, dest)
    return dest


@pytest.mark.parametrize("module,name", [("bench.loaders", "loaders-cpu2.json"), ("bench.stages", "stages-cpu2.json"),
                                         ("bench.convert", "convert-quality-cpu2.json"),
                                         ("bench.convert", "storage-cpu2.json"),
                                         ("bench.calibration", "calibration-cpu2/calibration.json")])
def test_replot_titles_say_what_on_what_and_when(module, name, tmp_path, saved, capsys):
    import importlib
    source = copy(name, tmp_path)
    data = json.loads(source.read_text())
    data["measured_at"] = "2026-01-02"
    source.write_text(json.dumps(data))
    assert importlib.import_module(module).main(["--replot", str(source)]) == 0
    assert saved and all(f["path"].parent == source.parent for f in saved)
    text = "\n".join(saved[0]["titles"])
    assert "measured 2026-01-02" in text, text
    assert any(w in text for w in ("core", "cpu", "photos", "workers")), text  # on what


def test_synthetic_is_left_out_and_each_backend_has_its_colour(tmp_path, saved):
    """An older result's `synthetic` row (the loop's overhead: 47 million "images"/s) is not drawn."""
    from bench.loaders import main
    main(["--replot", str(copy("loaders-cpu2.json", tmp_path))])
    (real,) = saved[0]["fig"].axes
    rows = json.loads((RESULTS / "loaders-cpu2.json").read_text())["rows"]
    fastest_real = max(r["images_per_s"] for r in rows if r["backend"] != "synthetic")
    assert fastest_real < real.get_ylim()[1] < 3 * fastest_real
    assert not any("synthetic" in t.get_text() for t in real.get_legend().get_texts())
    names = list(dict.fromkeys(r["backend"] for r in rows if r["backend"] != "synthetic"))
    colors = backend_colors(names)
    assert len({(colors[n], is_before(n)) for n in names}) == len(names)  # colour, and hatch for a before
    assert colors["ffcv-fulldecode"] == colors["ffcv"] != colors["ffcv@320"] != colors["opencv"]


def test_when_falls_back_to_the_files_commit_then_says_unknown(tmp_path):
    assert when({"measured_at": "2026-03-04"}, None) == "2026-03-04"
    assert when({}, tmp_path / "x.json") == "date unknown"  # not in a git checkout
    assert len(when({}, RESULTS / "loaders-cpu2.json")) == 10  # YYYY-MM-DD from git


def test_replot_names_an_unreadable_file(tmp_path, capsys):
    from bench.stages import main
    bad = tmp_path / "stages.json"
    bad.write_text("{not json")
    assert main(["--replot", str(bad)]) == 2
    assert f"--replot {bad}: cannot read it" in capsys.readouterr().err
