"""DPO training on transformers' Trainer with per-pair smoothing (CALS and baselines)."""

from smoothalign.train.config import DPOConfig

__all__ = ["DPOConfig", "run_dpo"]


def run_dpo(config: DPOConfig, *, callbacks: list | None = None):
    """Train with ``config``; see :func:`smoothalign.train.run.run_dpo`."""
    from smoothalign.train.run import run_dpo as _run

    return _run(config, callbacks=callbacks)
