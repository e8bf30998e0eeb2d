"""What the data-parallel test workers (tests/dist_*_worker.py) share: the simulated crash
after step 5 and the state each rank dumps for the test to compare."""

from __future__ import annotations

from transformers import TrainerCallback


class CrashAfterStep5(TrainerCallback):
    """Interrupt the run after its 5th step, on every rank alike (a crash the resume follows)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt("simulated crash after step 5")


def trainer_state(trainer) -> dict:
    """The trainer's CALS state and a copy of its weights."""
    return {
        "policy": trainer.smoothing_policy.state_dict(),
        "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    }
