"""One exception hierarchy for the whole package.

Every error a user can cause derives from :class:`IunetError`, so a front end can catch
one class and show its message. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "IunetError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "CheckpointError",
    "SessionError",
]


class IunetError(Exception):
    """Base class of every error raised on purpose by iunet_nb."""


class InputError(IunetError, ValueError):
    """A file, array, box or mask given by the user cannot be used as it is."""


class GeometryError(InputError):
    """Spacing, origin, direction or shape are missing, invalid or do not match."""


class ConfigError(IunetError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class CheckpointError(IunetError):
    """A checkpoint cannot be loaded: missing, corrupt, or made for another network."""


class SessionError(IunetError):
    """An interactive session cannot do what was asked (e.g. refine before predict)."""
