"""Warnings said once per process, and what every rank would say alike said by one: a
fallback taken at every step must not flood the log, nor a data-parallel run's ranks
repeat each other."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

_said: set[str] = set()


class SmoothalignWarning(UserWarning):
    """smoothalign's own warnings (what :func:`warn_main` and :func:`warn_once` say): the
    data's problems, a fallback taken. The command line prints them as one line
    (:func:`command_line_warnings`); the Python API shows them as any ``UserWarning``."""


def warn_once(message: str, *, key: str | None = None, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` the first time ``key`` (default: the message) is seen,
    by the main process only (:func:`warn_main`): a fallback depends on the model, which
    every rank of a data-parallel run holds alike. ``stacklevel`` as for ``warnings.warn``,
    counted from the caller of this function."""
    key = message if key is None else key
    if key not in _said:
        _said.add(key)
        warn_main(message, stacklevel=stacklevel + 1)


def main_process() -> bool:
    """Whether this is the main process (``RANK`` 0) of a distributed launch (torchrun,
    ``accelerate launch``), or a process not launched so; readable before any process group
    or Trainer exists, as the data checks run before them."""
    return int(os.environ.get("RANK", "0")) == 0


def warn_main(message: str, *, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` on the main process only (:func:`main_process`): for what
    every rank finds alike (the data's problems: each rank reads the same data), said once
    for the run rather than once per rank."""
    if main_process():
        warnings.warn(message, SmoothalignWarning, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def command_line_warnings(prog: str) -> Iterator[None]:
    """While a command runs from the command line: a :class:`SmoothalignWarning` is shown
    as one line, ``{prog}: warning: {message}`` (``prog``: ``"smoothalign dpo"``), rather
    than Python's ``path/to/run.py:305: UserWarning: ...`` and the source line that raised
    it, which tell a user of the command nothing. Others' warnings keep Python's format.
    Only the text is changed (``warnings.formatwarning``): filters, ``-W`` and whatever
    records warnings (``catch_warnings(record=True)``, ``logging.captureWarnings``) work as
    before."""
    original = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        if isinstance(category, type) and issubclass(category, SmoothalignWarning):
            return f"{prog}: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        if warnings.formatwarning is formatwarning:  # not if another replaced it meanwhile
            warnings.formatwarning = original


PEFT_CHECKPOINTING_ALIAS = r"`is_gradient_checkpointing` is deprecated"
"""The start of transformers' FutureWarning for the deprecated ``is_gradient_checkpointing``
alias (transformers 5: ``is_activation_checkpointing``)."""


@contextlib.contextmanager
def peft_wrap_quietly() -> Iterator[None]:
    """While PEFT wraps a model (``get_peft_model``): without the FutureWarning its
    ``PeftModel.__init__`` makes by reading ``model.is_gradient_checkpointing`` (peft 0.21),
    an alias transformers deprecated. It was said on every training command with LoRA, and
    it is PEFT's code, which nothing a user (or smoothalign) passes changes. Only that
    warning (its message and category) is filtered, and only during the wrap: our own use
    of the alias would still be said."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING_ALIAS, category=FutureWarning)
        yield
