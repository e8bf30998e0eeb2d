"""One rank of a data-parallel DPO run (launched by test_dpo_training via torchrun).

Trains the tiny model with CALS under gloo and dumps this rank's calibrator state and
weights to ``<out>/rank<R>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothalign.train import DPOConfig, run_dpo  # noqa: E402


def main(data: str, out: str) -> None:
    config = DPOConfig(
        model="tiny",
        data=data,
        eval_data=data,
        output_dir=out,
        smoothing="cals-l2",
        max_steps=4,
        batch_size=4,
        learning_rate=1e-3,
        lora=False,
        logging_steps=2,
        eval_samples=0,
        max_length=32,
        report=False,
        lr_warmup_steps=0,
    )
    result = run_dpo(config)
    trainer = result.trainer
    rank = int(os.environ["RANK"])
    state = {
        "world_size": torch.distributed.get_world_size(),
        "trainer_world_size": trainer.args.world_size,  # 2: data parallel, not 2 copies
        "first_batch": [int(i) for i in next(iter(trainer.get_train_dataloader()))["index"]],
        "policy": trainer.smoothing_policy.state_dict(),
        "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    }
    torch.save(state, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
