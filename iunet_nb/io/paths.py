"""Safe file names from user ids: a case, reader or session id can never leave its folder.

Ids come from people (a reader types her name), plan files and papermill parameters, and
become folder or file names (``<out>/<reader>/<case>/``). :func:`check_id` accepts only
short names of letters, digits, ``.``, ``_`` and ``-`` that start with a letter or digit,
so ``..``, ``/``, ``\\``, drive letters, NUL bytes, hidden names and Windows device names
(``CON``, ``NUL``, ...) are refused; :func:`safe_join` then joins ids under a root and
checks that the resolved result (symbolic links followed) still lies inside the root.
:func:`check_output` refuses an output path that is one of the inputs (the same file by
another name, a symbolic or hard link included), so a slip such as ``--out ct.nii.gz``
cannot overwrite the CT.

Example:
    >>> safe_join("/data/study", "reader1", "case07").as_posix()
    '/data/study/reader1/case07'
    >>> check_id("../../etc")
    Traceback (most recent call last):
    ...
    iunet_nb.errors.ConfigError: case id '../../etc' contains a path separator or '..'; ids become folder names: use letters, digits, '.', '_' and '-' only (e.g. 'case07')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError

__all__ = ["MAX_ID_LENGTH", "check_id", "check_output", "safe_join"]

#: Longest accepted id (characters); file systems allow 255 bytes per name.
MAX_ID_LENGTH = 128

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
_ALLOWED = "use letters, digits, '.', '_' and '-' only"


def check_id(value: Any, what: str = "case id") -> str:
    """Check an id that will become a file or folder name; return it unchanged.

    Args:
        value: the id (from a user, a plan file or a notebook parameter).
        what: what the id names, for the message (``"case id"``, ``"reader id"``, ...).

    Returns:
        ``value`` (a ``str``).

    Raises:
        ConfigError: not a string; empty; longer than :data:`MAX_ID_LENGTH`; a path
            separator, ``..`` or a NUL byte; a character other than ASCII letters, digits,
            ``.``, ``_``, ``-``; not starting with a letter or digit; a Windows device name;
            ending with ``.``.

    Example:
        >>> check_id("reader_2", "reader id")
        'reader_2'
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__} {value!r}; "
                          f"write it in quotes, e.g. 'case07'")
    if not value:
        raise ConfigError(f"{what} is empty; give a name such as 'case07'")
    if len(value) > MAX_ID_LENGTH:
        raise ConfigError(f"{what} is {len(value)} characters long; use at most "
                          f"{MAX_ID_LENGTH} (it becomes a folder name)")
    if "/" in value or "\\" in value or ".." in value or "\x00" in value:
        raise ConfigError(f"{what} {value!r} contains a path separator or '..'; ids become "
                          f"folder names: {_ALLOWED} (e.g. 'case07')")
    if not _ID.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a valid id: {_ALLOWED}, starting with a "
                          "letter or digit (it becomes a folder name)")
    if value.endswith(".") or value.split(".")[0].upper() in _WINDOWS_DEVICES:
        raise ConfigError(f"{what} {value!r} is not a valid file name on every system "
                          f"(a device name such as 'CON' or a trailing '.'); choose another, "
                          "e.g. 'case07'")
    return value


def safe_join(root: str | os.PathLike, *ids: str, what: str = "id") -> Path:
    """``root / id1 / id2 / ...`` after checking every id; never a path outside ``root``.

    Each part is checked with :func:`check_id`; then the joined path is resolved (symbolic
    links followed, for the parts that exist) and must still lie inside the resolved root,
    so a link planted inside the output folder cannot redirect writes elsewhere either.

    Args:
        root: the output folder (need not exist yet).
        *ids: one or more ids, outermost first.
        what: what the ids name, for messages.

    Returns:
        the joined path, ``Path(root) / id1 / ...`` (not resolved: as the caller wrote it).

    Raises:
        ConfigError: an invalid id (see :func:`check_id`), no id, or a path that resolves
            outside ``root`` (a symbolic link inside it pointing elsewhere).

    Example:
        >>> safe_join("out", "r1", "c1").as_posix()
        'out/r1/c1'
    """
    if not ids:
        raise ConfigError(f"safe_join needs at least one {what} to join under {root}")
    for part in ids:
        check_id(part, what)
    path = Path(root).joinpath(*ids)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise ConfigError(f"{path} resolves to {real}, outside the output folder {real_root} "
                          "(a symbolic link?); remove the link or choose another output folder")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # links and other spellings of one file
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_output(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *,
                 what: str = "output") -> Path:
    """Refuse an output path that is one of the inputs; return it as a Path.

    Args:
        out: the file about to be written.
        inputs: {what the input is (``"CT"``): its path, or None when not given}.
        what: what ``out`` is, for the message (``"--out"``).

    Raises:
        InputError: ``out`` is an input file (or a link to one), or an input folder.

    Example:
        >>> check_output("mask.nii.gz", {"CT": "ct.nii.gz"}).as_posix()
        'mask.nii.gz'
    """
    target = Path(out)
    for name, source in inputs.items():
        if source is not None and _same_file(target, Path(source)):
            raise InputError(f"{what} {out} is the {name} ({source}); writing it would "
                             f"overwrite your {name}. Choose another file name for {what}")
    return target
