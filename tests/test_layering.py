"""The stages are a one-way chain: a module imports only its own stage and the stages below it.

    fastmix.model, fastmix.devices   0  shared base (neither imports the other)
    fastmix.data                     1  convert
    loaders                          2  load
    fastmix.train                    3  train
    fastmix.perf                     4  profile and cost
    tools/, bench/                      thin CLIs and measurements: may import anything, and
                                        nothing in the library imports them

Within a stage, and across bench/, modules import one way too: no import circles.
Read from the import statements (ast), so a lazy import inside a function counts too.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import fastmix

ROOT = Path(__file__).resolve().parents[1]
RANK = {"fastmix.model": 0, "fastmix.devices": 0, "fastmix.data": 1, "loaders": 2, "fastmix.train": 3,
        "fastmix.perf": 4, "tools": 5, "bench": 5}


def stage_of(module: str) -> str | None:
    return next((s for s in sorted(RANK, key=len, reverse=True) if module == s or module.startswith(s + ".")), None)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse(path: Path) -> ast.AST:
    """ast.parse, shielded from a CPython 3.11 bug: the AST constructor's recursion count is kept
    per interpreter, so an AST built at the same moment by another thread (one left running by an
    earlier test) makes this parse fail with "AST constructor recursion depth mismatch" (seen in
    CI on 3.11.7; python/cpython#106905). The GIL is kept for the parse, and a parse that still
    meets it is repeated: a real syntax error is a SyntaxError, not this SystemError."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        for attempt in range(5):
            try:
                return ast.parse(path.read_text(), str(path))
            except SystemError as e:
                if "recursion depth mismatch" not in str(e) or attempt == 4:
                    raise
    finally:
        sys.setswitchinterval(interval)


def imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved; a name taken
    from the `fastmix` package itself counts as the module it is loaded from."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if stage_of(full):
                    out.append((node.lineno, full))
                elif base == "fastmix" and a.name in fastmix._PUBLIC:
                    out.append((node.lineno, fastmix._PUBLIC[a.name]))
                else:
                    out.append((node.lineno, base))
    return out


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted([*root.glob("fastmix/**/*.py"), *root.glob("loaders/**/*.py")]):
        src = stage_of(module_name(path, root))
        if src is None:  # fastmix/__init__.py: the public entry points, above every stage
            continue
        for line, module in imported(path, root):
            dst = stage_of(module)
            if dst is None or dst == src:
                continue
            if RANK[dst] > RANK[src] or RANK[dst] == RANK[src]:
                found.append(f"{path.relative_to(root)}:{line}: {src} (stage {RANK[src]}) imports {module} "
                             f"(stage {RANK[dst]})")
    return found


def test_no_stage_imports_a_stage_above_it():
    assert violations(ROOT) == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: an upward import, relative or absolute, lazy or not, is reported."""
    for package in ("fastmix/model", "fastmix/train", "fastmix/perf", "loaders"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "fastmix/perf/cost.py").write_text("X = 1\n")
    (tmp_path / "fastmix/train/trainer.py").write_text("def mfu():\n    from ..perf import cost\n")
    (tmp_path / "fastmix/model/convmixer.py").write_text("import fastmix.train.trainer\n")
    (tmp_path / "loaders/common.py").write_text("from fastmix import Trainer\n")
    (tmp_path / "fastmix/perf/ok.py").write_text("from ..train import trainer\nfrom . import cost\n")
    found = violations(tmp_path)
    assert len(found) == 3, found
    assert any("trainer.py:2" in f and "fastmix.perf.cost" in f for f in found)
    assert any("convmixer.py:1" in f for f in found) and any("common.py:1" in f for f in found)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (lazy ones too), over fastmix/, loaders/ and bench/.
    `from pkg import name` counts as pkg.name where that is a module, else as pkg."""
    paths = sorted([*root.glob("fastmix/**/*.py"), *root.glob("loaders/**/*.py"), *root.glob("bench/**/*.py")])
    names = {module_name(p, root) for p in paths}
    graph = {}
    for path in paths:
        name = module_name(path, root)
        edges = set()
        for _, module in imported(path, root):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):  # a package's own __init__
                edges.add(module)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as [a, b, ..., a] (strongly connected components of size > 1,
    each shown along one of its circles)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's algorithm, iterative enough for a package of a few hundred modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    """Within a stage too, modules import one way: no module is reached again from what it imports."""
    assert cycles(import_graph(ROOT)) == []


def test_the_check_sees_an_import_circle(tmp_path):
    """A lazy import back is a circle; a package importing its own submodules is not."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/__init__.py").write_text("from . import a\n")
    (tmp_path / "bench/a.py").write_text("import json\nfrom bench import b\n")
    (tmp_path / "bench/b.py").write_text("def f():\n    from bench.a import g\n")
    (tmp_path / "bench/c.py").write_text("from bench.b import f\n")
    assert cycles(import_graph(tmp_path)) == [["bench.a", "bench.b"]]


def test_readers_do_not_import_the_converter():
    """Loaders, verify and the loader benchmarks read a .beton through fastmix.data.betonread; the
    converter's writer (fastmix.data.beton: the image clean-up and the writer's worker pool) and the
    conversion itself stay on the convert side (bench/convert.py measures conversion: exempt)."""
    files = [*sorted((ROOT / "loaders").rglob("*.py")), ROOT / "fastmix/data/verify.py",
             ROOT / "bench/loaders.py", ROOT / "bench/stages.py"]
    banned = {"fastmix.data.beton": files, "fastmix.data.convert": files[:-2]}
    offenders = []
    for module, paths in banned.items():
        for path in paths:
            for line, name in imported(path, ROOT):
                if name == module or name.startswith(module + "."):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not offenders, offenders
