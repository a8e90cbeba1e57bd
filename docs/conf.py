"""Sphinx configuration of the xharmonise documentation.

Build with ``ci/docs.sh`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``);
``tests/test_docs.py`` runs the same build with warnings as errors.

Two pieces of the pages are filled in at build time, so that they cannot go stale:

- ``<!-- cli-help COMMAND -->`` in a page becomes the ``--help`` text of that
  ``xharmonise`` subcommand (or of the command itself when COMMAND is empty), taken from
  the installed parser;
- ``<!-- paper-table -->`` becomes ``docs/paper_table.md`` (written by
  ``benchmarks/paper_table.py``) with its headings moved under the including section, or
  a note saying how to generate it while it does not exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
PAPER_TABLE = DOCS / "paper_table.md"

project = "xharmonise"
author = "the xharmonise developers"
copyright = "2026, the xharmonise developers"
release = _version("xharmonise")
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# paper_table.md is included into method.md, never a page of its own.
exclude_patterns = ["_build", "paper_table.md"]

# MyST: `(label)=` targets and heading anchors for in-page links.
myst_heading_anchors = 3

# Signatures show names and defaults; the numpydoc sections give the types.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autosummary_generate = False
# numpydoc: no per-member autosummary tables under classes (they would need stub pages);
# the members are documented with :members: in api.rst.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = f"xharmonise {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []


# --------------------------------------------------------------------------- build-time text
_CLI_HELP = re.compile(r"<!-- cli-help ?([a-z]*) -->")
_PAPER_TABLE = "<!-- paper-table -->"
_PAPER_TABLE_PLACEHOLDER = """\
```{note}
The table of the paper's experiment reproduced on simulated pairs has not been generated
in this checkout yet. Run `python benchmarks/paper_table.py` (it trains every method on
four simulated scenarios; `--size` sets the scene side); it writes
`benchmarks/results/paper_table.json` and `docs/paper_table.md`, which this section
includes on the next build.
```
"""


def _cli_help(command: str) -> str:
    """The ``--help`` text of ``xharmonise [COMMAND]`` as a fenced block."""
    from xharmonise.cli import main

    out = io.StringIO()
    os.environ["COLUMNS"] = "88"  # argparse wraps help text to the terminal width
    with contextlib.redirect_stdout(out):
        main([command, "--help"] if command else ["--help"])
    prompt = f"$ xharmonise {command} --help" if command else "$ xharmonise --help"
    return f"```text\n{prompt}\n{out.getvalue().rstrip()}\n```"


def _demoted(markdown: str, levels: int) -> str:
    """``markdown`` with every ATX heading moved ``levels`` levels down."""

    def deeper(m: re.Match[str]) -> str:
        return "#" * min(6, len(m[1]) + levels) + " "

    return re.sub(r"^(#{1,6}) ", deeper, markdown, flags=re.MULTILINE)


def _fill(app: Any, docname: str, source: list[str]) -> None:
    text = source[0]
    if _CLI_HELP.search(text):
        text = _CLI_HELP.sub(lambda m: _cli_help(m[1]), text)
    if _PAPER_TABLE in text:
        # Rebuild the page when the generated table appears or changes.
        app.env.note_dependency(str(PAPER_TABLE))
        if PAPER_TABLE.exists():
            table = _demoted(PAPER_TABLE.read_text(encoding="utf-8"), 2)
        else:
            table = _PAPER_TABLE_PLACEHOLDER
        text = text.replace(_PAPER_TABLE, table)
    source[0] = text


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True}
