"""How a message names an option: as the Python API spells it (``on_bad_rows='skip'``,
``max_length``) or, while a command of the command line runs, as that command's flag
(``--on-bad-rows skip``, ``--max-length``), so that advice names what its reader can type.
The CLI says which flags its command has (:func:`command_flags`); the library words its
advice with :func:`option`."""

from __future__ import annotations

import contextlib
import contextvars
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

_FLAGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "smoothalign_command_flags", default=None
)
_UNSET = object()


def option(name: str, value: Any = _UNSET) -> str:
    """Option ``name`` (the Python keyword), set to ``value`` if given, as the reader types
    it: the running command's flag (``--on-bad-rows skip``; ``True``: the switch alone,
    ``--overwrite``) where it has one, else the keyword (``on_bad_rows='skip'``)."""
    flags = _FLAGS.get()
    flag = None if flags is None else flags.get(name)
    if value is _UNSET:
        return name if flag is None else flag
    if flag is None:
        return f"{name}={value!r}"
    return flag if value is True else f"{flag} {shlex.quote(str(value))}"


@contextlib.contextmanager
def command_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """While it lasts, :func:`option` names the options of ``flags`` (keyword → flag: a
    command's) by their flags."""
    token = _FLAGS.set(dict(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)
