"""The documentation: it builds without a warning, its API reference lists every public
name, and every public callable has a numpydoc docstring with an Examples section.

The examples themselves run through pytest's doctest collection: ``--doctest-modules``
on the package and ``--doctest-glob=*.md`` on ``docs/`` (``[tool.pytest.ini_options]``
in pyproject.toml), so an example that stops working fails the suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

import xharmonise

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: The public API: the package's ``__all__`` and these modules' ``__all__``.
PUBLIC_MODULES = (
    "xharmonise",
    "xharmonise.masks",
    "xharmonise.metrics",
    "xharmonise.plot",
    "xharmonise.simulate",
    "xharmonise.validation",
)
#: The accessor's methods, under the name users call them by.
ACCESSOR = "xarray.DataArray.harmonise"
PAGES = ("index", "quickstart", "user-guide", "method", "scaling-out", "cli", "output", "api")


def _class_members(cls: type) -> dict[str, Any]:
    """Public methods and properties defined by ``cls`` itself (not inherited)."""
    out = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            out[name] = member
    return out


def public_api() -> dict[str, Any]:
    """Documented name -> object, for every public function, class, method and property."""
    api: dict[str, Any] = {}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # constants: documented by their `#:` comments
            api[f"{modname}.{name}"] = obj
            if inspect.isclass(obj):
                for attr, member in _class_members(obj).items():
                    api[f"{modname}.{name}.{attr}"] = member
    for attr, member in _class_members(xr.DataArray.harmonise).items():
        api[f"{ACCESSOR}.{attr}"] = member
    return api


API = public_api()
# Properties read like attributes: a docstring suffices, the class example shows them.
CALLABLES = sorted(name for name, obj in API.items() if not isinstance(obj, property))
_EXAMPLES = re.compile(r"^Examples\n-{8,}\n(?:.*\n)*?>>> ", re.MULTILINE)


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


@pytest.mark.parametrize("name", sorted(API))
def test_public_name_has_docstring(name):
    assert _doc(API[name]).strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", CALLABLES)
def test_public_callable_has_runnable_examples(name):
    # The section must hold at least one `>>>` line: that is what the doctest run executes.
    assert _EXAMPLES.search(_doc(API[name]) + "\n"), (
        f"{name} has no numpydoc Examples section with a `>>>` example: add one that runs "
        "in a second or two (e.g. on simulate_pair((200, 200)), a linear fit or a tiny "
        "iteration budget)"
    )


def test_public_api_is_what_the_package_exports():
    # The walk above covers the package's own list; a new export is covered automatically.
    assert {f"xharmonise.{n}" for n in xharmonise.__all__} <= set(API)
    assert {f"{ACCESSOR}.{m}" for m in ("fit", "predict", "evaluate", "estimate_shift")} <= set(API)


# --------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """The HTML documentation, built from scratch with warnings as errors."""
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip("sphinx is not installed: install the docs extra (ci/setup.sh does)")
    out = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(out / "doctrees"), str(DOCS), str(out / "html"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"sphinx-build failed (exit {proc.returncode}); ci/docs.sh reproduces it:\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return out / "html"


def _inventory(path: Path) -> set[str]:
    """Object names in a Sphinx ``objects.inv`` (format version 2)."""
    with path.open("rb") as f:
        header = [f.readline() for _ in range(4)]
        assert header[0].startswith(b"# Sphinx inventory version 2"), header[0]
        text = zlib.decompress(f.read()).decode("utf-8")
    return {line.split(" ", 1)[0] for line in text.splitlines() if line.strip()}


def test_docs_build_without_warnings(html):
    for page in PAGES:
        assert (html / f"{page}.html").is_file(), f"page {page} was not built"


def test_api_reference_documents_every_public_name(html):
    documented = _inventory(html / "objects.inv")
    expected = set(API)
    for modname in PUBLIC_MODULES[1:]:
        expected |= {f"{modname}.{n}" for n in importlib.import_module(modname).__all__}
    # A re-export (xharmonise.cloud_mask_from_scl is xharmonise.masks.cloud_mask_from_scl)
    # is documented once, under its module.
    by_object = {id(API[n]) for n in documented if n in API}
    missing = sorted(n for n in expected - documented if id(API.get(n)) not in by_object)
    assert not missing, f"not in the API reference (docs/api.rst): {missing}"


def test_cli_page_holds_the_generated_help(html):
    text = (html / "cli.html").read_text(encoding="utf-8")
    for command in ("fit", "predict", "evaluate", "report", "info", "demo"):
        assert f"usage: xharmonise {command}" in text, command
