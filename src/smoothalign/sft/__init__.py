"""Supervised fine-tuning with token-level label smoothing (SPEC §5): ``smoothalign sft``.

    from smoothalign.sft import SFTConfig, run_sft
    result = run_sft(SFTConfig(model="tiny", data="sft.jsonl", label_smoothing=0.1))

Layers: ``objective`` (tensors: ``sft_loss`` from last hidden states and the LM head),
``data`` (rows → examples with a completion-only label mask → batches), ``trainer``
(``transformers.Trainer`` with our ``compute_loss``, metrics and evaluation), ``run`` (the
wiring) and ``report``. ``cli`` is the ``smoothalign sft`` command.
"""

from smoothalign.sft.config import SFTConfig
from smoothalign.sft.objective import sft_loss

__all__ = ["SFTConfig", "run_sft", "sft_loss"]


def run_sft(config: SFTConfig, *, callbacks: list | None = None):
    """Train with ``config``; see :func:`smoothalign.sft.run.run_sft`."""
    from smoothalign.sft.run import run_sft as _run

    return _run(config, callbacks=callbacks)
