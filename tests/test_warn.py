"""``smoothalign._warn.warn_once``: a fallback's warning once per process."""

from __future__ import annotations

import warnings

from smoothalign._warn import warn_once


def _said(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_each_key_warns_once_and_points_at_the_caller():
    def fallback(name):  # a library function that warns where it falls back
        warn_once(f"falling back for {name}", key=f"test-fallback {name}")

    first = _said(lambda: [fallback("A") for _ in range(3)])
    assert first == ["falling back for A"]
    assert _said(lambda: fallback("A")) == []  # the process remembers
    assert _said(lambda: fallback("B")) == ["falling back for B"]  # another key
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_once("a message of its own", stacklevel=1)  # stacklevel 1: this line
    assert caught[0].filename == __file__
