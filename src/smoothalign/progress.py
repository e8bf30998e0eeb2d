"""Progress bars on or off for everything a command runs, sub-runs included.

smoothalign keeps its own switch, which only :func:`progress_bars` (any command's
``--no-progress``: a study's, an evaluation's, a training run's) turns off, for as long as the block runs. While it is off,
:func:`training_arguments <smoothalign.train.common.training_arguments>` gives the Trainer
``disable_tqdm`` (and the trainers then print no log dicts either), smoothalign's own bars
read it through :func:`bar_disable`, and ``transformers``' switch (which ``huggingface_hub``
follows: "Loading weights", "Writing model shards") is off too.

The switch is not ``transformers``' own: that one also follows the environment
(``HF_HUB_DISABLE_PROGRESS_BARS=1``, common on clusters to quiet downloads), and reading it
would silence a training run's bar and its logged lines there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_quiet = False  # set by progress_bars(False) while its block runs


def enabled() -> bool:
    """Whether smoothalign's progress bars are on (off only inside ``progress_bars(False)``)."""
    return not _quiet


def bar_disable(disable: bool | None = None) -> bool | None:
    """tqdm's ``disable`` for one of smoothalign's bars: ``True`` while progress bars are
    off, else ``disable`` (``None``: off when not writing to a terminal)."""
    return True if _quiet else disable


def add_argument(parser) -> None:
    """A command's ``--no-progress`` (``args.no_progress``), which :func:`progress_bars`
    honours. Not a config option: it changes no result, so it is not in ``config.json``
    and a resumed run may differ in it."""
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (the results are the same)"
    )


@contextmanager
def progress_bars(on: bool) -> Iterator[None]:
    """With ``on`` false, no progress bar inside the block (smoothalign's, the Trainer's,
    and transformers' and huggingface_hub's); both switches are restored after it."""
    global _quiet
    from transformers.utils import logging

    was_quiet, hf_was = _quiet, logging.is_progress_bar_enabled()
    if not on:
        _quiet = True
        if hf_was:
            logging.disable_progress_bar()
    try:
        yield
    finally:
        _quiet = was_quiet
        if not on and hf_was:
            logging.enable_progress_bar()
