#!/usr/bin/env bash
# Build the HTML documentation into docs/_build/html with warnings as errors.
# Extra arguments go to sphinx-build (e.g. -E to rebuild every page).
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh  # .venv with the package and its test and docs extras (idempotent)
if ! .venv/bin/python -c "import sphinx, numpydoc, pydata_sphinx_theme, myst_parser" 2>/dev/null
then
    echo "installing the docs extra into .venv"
    .venv/bin/python -m pip install --quiet -e ".[docs]"
fi
exec .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
