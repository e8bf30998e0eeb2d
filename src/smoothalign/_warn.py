"""Warnings said once per process: a fallback taken at every step must not flood the log."""

from __future__ import annotations

import warnings

_said: set[str] = set()


def warn_once(message: str, *, key: str | None = None, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` the first time ``key`` (default: the message) is seen.
    ``stacklevel`` as for ``warnings.warn``, counted from the caller of this function."""
    key = message if key is None else key
    if key not in _said:
        _said.add(key)
        warnings.warn(message, stacklevel=stacklevel + 1)
