#!/usr/bin/env python
"""Strip outputs from notebooks before they are committed (the repository keeps them clean).

Clears every code cell's outputs and execution count, drops cell metadata except ``tags``
(papermill's ``parameters`` tag must stay), and drops notebook metadata except
``kernelspec`` and ``language_info.name`` (papermill, widget state, execution timings go).

Usage::

    python scripts/clean_notebooks.py                 # clean notebooks/*.ipynb in place
    python scripts/clean_notebooks.py a.ipynb b.ipynb
    python scripts/clean_notebooks.py --check         # exit 1 if any notebook is not clean (CI)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nbformat

logger = logging.getLogger("clean_notebooks")

_KEEP_CELL_METADATA = ("tags",)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with outputs, execution counts and volatile metadata removed."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in _KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    meta = {}
    if "kernelspec" in nb.metadata:
        meta["kernelspec"] = nb.metadata["kernelspec"]
    if "language_info" in nb.metadata:
        meta["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    nb.metadata = meta
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks (default: notebooks/*.ipynb next to this script)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook has outputs or metadata")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = args.paths or sorted((Path(__file__).resolve().parents[1] / "notebooks")
                                 .glob("*.ipynb"))
    dirty = []
    for path in paths:
        before = path.read_text(encoding="utf-8")
        nb = nbformat.reads(before, as_version=4)
        after = _text(clean(nb))
        if after == before:
            continue
        dirty.append(path)
        if not args.check:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(after, encoding="utf-8")
            tmp.replace(path)
            logger.info("cleaned %s", path)
    if args.check and dirty:
        logger.error("not clean (run scripts/clean_notebooks.py): %s",
                     ", ".join(str(p) for p in dirty))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
