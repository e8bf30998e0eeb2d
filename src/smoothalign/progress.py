"""Progress bars on or off for everything a command runs, sub-runs included.

The switch is ``transformers``' (which also switches ``huggingface_hub``'s): model loading
("Loading weights") and saving ("Writing model shards") read it, :func:`training_arguments
<smoothalign.train.common.training_arguments>` gives it to the Trainer (``disable_tqdm``),
and smoothalign's own bars read it through :func:`bar_disable`. A study's ``--no-progress``
turns it off with :func:`progress_bars` for as long as the study runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def enabled() -> bool:
    """Whether progress bars are on (``transformers``' switch)."""
    from transformers.utils import logging

    return logging.is_progress_bar_enabled()


def bar_disable(disable: bool | None = None) -> bool | None:
    """tqdm's ``disable`` for one of smoothalign's bars: ``True`` while progress bars are
    off, else ``disable`` (``None``: off when not writing to a terminal)."""
    return True if not enabled() else disable


@contextmanager
def progress_bars(on: bool) -> Iterator[None]:
    """With ``on`` false, no progress bar inside the block (transformers' and
    huggingface_hub's, the Trainer's, smoothalign's); the switch is restored after it."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    if not on and was:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if not on and was:
            logging.enable_progress_bar()
