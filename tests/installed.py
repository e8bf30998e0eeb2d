"""``installed(name)``: whether a distribution (a wheel the tests may use) is installed."""

from __future__ import annotations

import importlib.metadata


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
