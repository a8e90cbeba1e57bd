"""The package's import shape: layers one way, no import circles, no private names shared.

Every module of ``xharmonise`` is read with :mod:`ast` (nothing is imported), and each of
its imports -- at module level, inside functions, under ``TYPE_CHECKING`` -- becomes an
edge between two package modules. A module may import from its own layer or below:

====  =======================================================================
Face  the package itself, ``__main__``, accessor, cli, demo, runfiles
Flow  api, arguments, stages, validation
Out   inference, store, plot
Learn training, losses
Prep  scaling, grid, coregister, sampling, masks, simulate
Model harmoniser, records, models
Base  errors, checks, psf, metrics, calibration
====  =======================================================================

The checker itself is tested on planted faults, so a passing run means something.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import xharmonise

PACKAGE = "xharmonise"
ROOT = Path(xharmonise.__file__).parent

#: Layer of every module, highest first. A package (``plot``, ``models``) names its
#: ``__init__`` and, unless listed on their own, all its submodules.
PREP = ("scaling", "dates", "grid", "coregister", "sampling", "masks", "simulate")
LEARN = ("training", "losses")
OUT = ("inference", "store", "plot")
LAYERS: dict[str, tuple[str, ...]] = {
    "Face": ("", "__main__", "accessor", "cli", "demo", "runfiles"),
    "Flow": ("api", "arguments", "evaluation", "stages", "validation"),
    # The "Prep / Learn / Out" side by side, held to one order so that no sideways
    # import goes unnoticed: outputs may read the prepared data's helpers (plot crops with
    # grid and scaling), learning reads neither, preparation reads neither of the others.
    "Out": OUT,
    "Learn": LEARN,
    "Prep": PREP,
    "Model": ("harmoniser", "records", "models"),
    "Base": ("errors", "checks", "psf", "metrics", "calibration", "applicability"),
}


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from`` imports, one name) at one line."""

    importer: str
    module: str
    name: str | None
    line: int

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.module}.{self.name}"
        return f"{self.importer}:{self.line} imports {what}"


# --------------------------------------------------------------------------- the checker
def read_package(root: Path, package: str) -> dict[str, str]:
    """``{module name: source text}`` of every ``.py`` file under ``root``."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join([package, *parts])] = path.read_text(encoding="utf-8")
    return sources


def _is_package(module: str, sources: dict[str, str], root_package: str) -> bool:
    # Packages are the root and any module that another module lives under.
    return module == root_package or any(m.startswith(module + ".") for m in sources)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module of a ``from`` import, relative ones resolved."""
    if not node.level:
        return node.module or ""
    # `from . import x` in a.b.c means a.b; in the package a.b itself, a.b too.
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(importer: str, text: str, sources: dict[str, str], package: str) -> list[Import]:
    """Every import of a package module by ``importer``, wherever it sits in the file.

    Uses of a private name through an imported module (``grid._crs`` after
    ``from xharmonise import grid``) come back as imports of that name too.
    """
    tree = ast.parse(text, filename=importer)
    found = []
    aliases: dict[str, str] = {}  # local name -> package module it is bound to
    own_package = _is_package(importer, sources, package)

    def ours(module: str) -> bool:
        return module == package or module.startswith(package + ".")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if ours(alias.name):
                    found.append(Import(importer, alias.name, None, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, own_package)
            if not ours(module):
                continue
            for alias in node.names:
                # `from xharmonise import grid` imports the module xharmonise.grid.
                sub = f"{module}.{alias.name}"
                if sub in sources:
                    found.append(Import(importer, sub, None, node.lineno))
                    aliases[alias.asname or alias.name] = sub
                else:
                    found.append(Import(importer, module, alias.name, node.lineno))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ):
            found.append(Import(importer, aliases[node.value.id], node.attr, node.lineno))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def layer_of(module: str, package: str, layers: dict[str, tuple[str, ...]]) -> str | None:
    """The layer of ``module``: its own entry, else that of the closest package above it
    that is listed (the root package's entry, ``""``, stands for the root only)."""
    rel = module[len(package) + 1 :] if module != package else ""
    parts = rel.split(".") if rel else []
    keys = [".".join(parts[:n]) for n in range(len(parts), 0, -1)] or [""]
    for key in keys:
        for layer, names in layers.items():
            if key in names:
                return layer
    return None


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a self-loop)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.module)
        graph.setdefault(e.module, set())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    components, placed = [], set()
    for m in sorted(graph):
        if m in placed or m not in reachable[m]:
            continue
        component = sorted(n for n in reachable[m] if m in reachable[n])
        placed.update(component)
        components.append(component)
    return components


@dataclass
class Report:
    """What the checker found; each list holds one readable line per fault."""

    unplaced: list[str]
    upward: list[str]
    circles: list[str]
    private: list[str]

    def __repr__(self) -> str:  # pytest prints the fixture: counts, the lists follow
        counts = {k: len(v) for k, v in vars(self).items()}
        return "Report(" + ", ".join(f"{k}: {n}" for k, n in counts.items()) + ")"


def check(
    sources: dict[str, str], package: str, layers: dict[str, tuple[str, ...]] = LAYERS
) -> Report:
    """Check the import shape of the package whose modules are ``sources``."""
    rank = {layer: len(layers) - i for i, layer in enumerate(layers)}
    edges: list[Import] = []
    private: list[Import] = []
    for importer, text in sources.items():
        found = [e for e in imports_of(importer, text, sources, package) if e.module != importer]
        edges += [e for e in found if e.module in sources]
        private += [e for e in found if e.name is not None and _private(e.name)]
    unplaced = [
        f"{m}: place it in one of the layers {list(layers)} (LAYERS in tests/test_layers.py)"
        for m in sorted(sources)
        if layer_of(m, package, layers) is None
    ]
    upward = []
    for e in edges:
        a, b = layer_of(e.importer, package, layers), layer_of(e.module, package, layers)
        if a is not None and b is not None and rank[b] > rank[a]:
            upward.append(f"{e} ({a} -> {b}, a higher layer)")
    circles = []
    for component in cycles(edges):
        members = set(component)
        inside = [str(e) for e in edges if e.importer in members and e.module in members]
        circles.append(" <-> ".join(component) + ":\n    " + "\n    ".join(sorted(inside)))
    return Report(
        unplaced=unplaced,
        upward=sorted(upward),
        circles=circles,
        private=sorted(f"{e} (private)" for e in private),
    )


def _listing(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return read_package(ROOT, PACKAGE)


@pytest.fixture(scope="module")
def report(sources) -> Report:
    return check(sources, PACKAGE)


def test_every_module_has_a_layer(report):
    assert not report.unplaced, _listing("modules without a layer", report.unplaced)


def test_no_upward_imports(report):
    assert not report.upward, _listing("imports of a higher layer", report.upward)


def test_no_import_circles(report):
    assert not report.circles, _listing("import circles", report.circles)


def test_no_private_names_across_modules(report):
    assert not report.private, _listing("private names used across modules", report.private)


def test_the_layer_map_names_real_modules(sources):
    # A renamed or removed module must leave the map too, or the map drifts from the code.
    listed = {n for names in LAYERS.values() for n in names}
    present = {m[len(PACKAGE) + 1 :] if m != PACKAGE else "" for m in sources}
    assert not listed - present, f"LAYERS lists modules that do not exist: {listed - present}"


# --------------------------------------------------------------------------- the checker
def _plant(sources: dict[str, str], module: str, code: str) -> dict[str, str]:
    """The package's sources with ``code`` added at the end of one module, in memory."""
    return {**sources, module: sources[module] + "\n\n" + code + "\n"}


def test_a_planted_upward_import_fails(sources):
    # The error classes (Base) drawing on the flow (Flow), hidden inside a function.
    planted = _plant(
        sources, "xharmonise.errors", "def _late():\n    from xharmonise.api import fit\n"
    )
    report = check(planted, PACKAGE)
    assert any(
        line.startswith("xharmonise.errors:") and "imports xharmonise.api.fit" in line
        for line in report.upward
    ), report.upward
    before = check(sources, PACKAGE)
    assert len(report.upward) == len(before.upward) + 1


def test_a_planted_upward_import_under_type_checking_fails(sources):
    planted = _plant(
        sources,
        "xharmonise.psf",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .plot import report\n",
    )
    new = set(check(planted, PACKAGE).upward) - set(check(sources, PACKAGE).upward)
    assert len(new) == 1 and "xharmonise.psf" in new.pop()


def test_relative_imports_are_resolved():
    sources = {
        "pkg": "",
        "pkg.low": "from .sub import deep\nfrom . import high\n",
        "pkg.high": "",
        "pkg.sub": "from .. import low\nfrom .deep import f\n",
        "pkg.sub.deep": "def f(): ...\n",
    }
    found = {
        (e.importer, e.module, e.name)
        for m, text in sources.items()
        for e in imports_of(m, text, sources, "pkg")
    }
    assert found == {
        ("pkg.low", "pkg.sub.deep", None),
        ("pkg.low", "pkg.high", None),
        ("pkg.sub", "pkg.low", None),
        ("pkg.sub", "pkg.sub.deep", "f"),
    }


def test_a_planted_circle_fails(tmp_path):
    # A small package written to disk: a -> b -> c -> a, the last import in a function.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("def f():\n    from pkg.a import x\n")
    (pkg / "d.py").write_text("from pkg import a\n")  # outside the circle
    layers = {"Top": ("", "d"), "All": ("a", "b", "c")}
    report = check(read_package(pkg, "pkg"), "pkg", layers)
    assert len(report.circles) == 1
    assert report.circles[0].startswith("pkg.a <-> pkg.b <-> pkg.c:")
    assert "pkg.c:2 imports pkg.a.x" in report.circles[0]
    assert not report.upward and not report.private and not report.unplaced


def test_a_planted_private_import_fails(sources):
    planted = _plant(sources, "xharmonise.checks", "from xharmonise.errors import _private_thing")
    new = set(check(planted, PACKAGE).private) - set(check(sources, PACKAGE).private)
    assert len(new) == 1
    assert re.fullmatch(
        r"xharmonise\.checks:\d+ imports xharmonise\.errors\._private_thing \(private\)",
        new.pop(),
    )
    # A private name reached through an imported module counts as well; dunders do not.
    through = _plant(
        sources,
        "xharmonise.checks",
        "from xharmonise import errors as e\nX = e._hidden\nY = e.__doc__\n",
    )
    new = set(check(through, PACKAGE).private) - set(check(sources, PACKAGE).private)
    assert len(new) == 1 and "xharmonise.errors._hidden" in new.pop()


def test_an_unplaced_module_fails(sources):
    planted = {**sources, "xharmonise.newcomer": ""}
    assert check(planted, PACKAGE).unplaced == [
        "xharmonise.newcomer: place it in one of the layers "
        "['Face', 'Flow', 'Out', 'Learn', 'Prep', 'Model', 'Base'] (LAYERS in tests/test_layers.py)"
    ]
