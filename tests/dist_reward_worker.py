"""One rank of data-parallel reward-model runs (launched by test_reward_training via torchrun).

In one launch, under gloo: an uninterrupted run of the tiny model with CALS and a
centering term (two loss terms pooled apart) (``straight``, with evaluations during training
and the report), the same run crashed after step 5 (its last certified checkpoint at step 3,
saved between two logging steps, so that the loss sums it holds were gathered across the
ranks) and that run resumed from its checkpoint (``crashed``). Then ``loss_sums`` of loss
terms that rank 0 alone has buffered. Dumps this rank's calibrator state and weights after
the runs to ``<out>/rank<R>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tests.dist_worker_common import CrashAfterStep5, trainer_state  # noqa: E402

from smoothalign.reward import RewardConfig, run_reward  # noqa: E402


def config(data: str, out: Path, **overrides) -> RewardConfig:
    """The runs' configuration (the test's single-process run takes it too)."""
    base = dict(
        model="tiny",
        data=data,
        output_dir=str(out),
        smoothing="cals-l2",
        init_confidence=0.9,
        center_weight=0.01,
        max_steps=6,
        save_steps=3,
        batch_size=4,
        learning_rate=1e-3,
        logging_steps=2,
        eval_steps=0,
        max_length=32,
        report=False,
        lr_warmup_steps=0,
    )
    return RewardConfig(**{**base, **overrides})


def main(data: str, out: str) -> None:
    root = Path(out)
    rank = int(os.environ["RANK"])
    trainer = run_reward(config(data, root / "straight", report=True, eval_steps=2)).trainer
    state = {
        "world_size": torch.distributed.get_world_size(),
        "trainer_world_size": trainer.args.world_size,  # 2: data parallel, not 2 copies
        "find_unused": trainer.args.ddp_find_unused_parameters,
        "first_batch": [int(i) for i in next(iter(trainer.get_train_dataloader()))["index"]],
        "straight": trainer_state(trainer),
    }
    try:
        run_reward(config(data, root / "crashed"), callbacks=[CrashAfterStep5()])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the crash did not happen")
    resumed = run_reward(config(data, root / "crashed", resume="latest"))
    state["resumed"] = trainer_state(resumed.trainer)
    state["notes"] = resumed.notes
    # loss terms buffered on rank 0 only: every rank gathers their sums all the same (else
    # rank 0 waits there, and fails once rank 1 exits)
    trainer._stored["train"].clear()
    trainer._run_loss = {}
    if rank == 0:
        trainer.record_loss(pairs=(torch.tensor(3.0), torch.tensor(4.0)))
        trainer.record_loss(pairs=(torch.tensor(1.5), torch.tensor(2.0)))
    try:
        state["probe_sums"] = trainer.loss_sums()
    except RuntimeError as err:
        state["probe_sums"] = str(err)
    # buffers that differ between the ranks: an error on every rank, not a wait for good
    # (nor one rank's values paired with another's): values of one name, as many on each
    # rank but recorded in another order, gather; other lengths, or a rank that buffered
    # nothing, do not
    for case, values in (
        ("order", {"a": torch.ones(2), "b": torch.zeros(2)}),
        ("lengths", {"a": torch.ones(2 + rank)}),
        ("one rank", {"a": torch.ones(2)} if rank == 0 else {}),
    ):
        trainer._stored["train"].clear()
        for name, value in sorted(values.items(), reverse=rank == 1):
            trainer.record("train", {name: value})
        logs: dict = {}
        try:
            trainer._summarised("train", logs)
            state[f"gathered {case}"] = {k: v for k, v in logs.items() if k in values}
        except RuntimeError as err:
            state[f"gathered {case}"] = str(err)
    torch.save(state, root / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
