#!/usr/bin/env bash
# Set up iunet-nb in ./.venv (or in the active virtual environment).
#   bash scripts/setup.sh        # the package
#   bash scripts/setup.sh test   # the package plus what the tests need (incl. Debian chromium
#                                # for the real-browser test, when run as root with apt)
# PyTorch: if a torch is already installed (e.g. a CUDA build you chose, see README), it is
# kept. Otherwise torch==2.13.0 is installed: on this project's machines that resolves to a
# local CPU wheel (a plain `pip install torch` would pull a 5.5 GB CUDA build). Nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
else
  py=python
fi
"$py" -m pip install --quiet --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install --quiet "torch==2.13.0"
fi
if [ "$extra" = "test" ]; then
  "$py" -m pip install --quiet -e ".[view,test]"
  bash scripts/install_browser.sh
  # GeodisTK, only to cross-check our geodesic port against it (tests/test_geodesic.py). Its
  # PyPI sdist needs NumPy at build time and the old NumPy C-API name below; without a C++
  # compiler the cross-check is skipped with a reason.
  if ! "$py" -c "import GeodisTK" 2>/dev/null; then
    "$py" -m pip install --quiet setuptools wheel
    CPPFLAGS=-DNPY_IN_ARRAY=NPY_ARRAY_IN_ARRAY "$py" -m pip install --quiet --no-build-isolation GeodisTK \
      || echo "GeodisTK could not be built: the cross-check test will be skipped" >&2
  fi
else
  "$py" -m pip install --quiet -e .
fi
# Compile the geodesic scan once now, into numba's on-disk cache, so that the first refinement
# a user asks for loads it (about 0.5 s) instead of compiling it (2-3.5 s on 2 cores).
"$py" -c "import numpy as np, torch, iunet_nb
from iunet_nb.interactive.geodesic import geodesic_distance
seeds = np.zeros((2, 2, 2), bool); seeds[0, 0, 0] = True
geodesic_distance(np.zeros((2, 2, 2), np.float32), seeds, backend='numba')
print(f'iunet-nb {iunet_nb.__version__} ready (torch {torch.__version__}, CUDA available: {torch.cuda.is_available()})')"
