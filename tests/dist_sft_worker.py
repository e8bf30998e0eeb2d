"""One rank of data-parallel SFT runs (launched by test_sft_training via torchrun).

In one launch, under gloo: an uninterrupted run of the tiny model (``straight``, with
evaluations during training and the report), the same run crashed after step 5 (its last
certified checkpoint at step 3, saved between two logging steps, so that the loss sums it
holds were gathered across the ranks) and that run resumed from its checkpoint
(``crashed``). Then ``_buffered_sum`` of a value that rank 0 alone has buffered. Dumps to
``<out>/rank<R>.pt`` this rank's weights after the runs and, for each training micro-batch
of the straight run, its step, rows and (smoothed loss sum, completion tokens).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tests.dist_worker_common import CrashAfterStep5  # noqa: E402

from smoothalign.sft import SFTConfig, run_sft  # noqa: E402
from smoothalign.sft.trainer import SFTTrainer  # noqa: E402


def config(data: str, out: Path, **overrides) -> SFTConfig:
    """The runs' configuration (the test's single-process run takes it too)."""
    base = dict(
        model="tiny",
        data=data,
        output_dir=str(out),
        max_steps=6,
        save_steps=3,
        batch_size=4,
        learning_rate=2e-3,
        lora=False,
        logging_steps=2,
        max_length=32,
        max_eval_rows=16,
        report=False,
        lr_warmup_steps=0,
    )
    return SFTConfig(**{**base, **overrides})


def record_micro_batches(seen: list[dict]):
    """A ``SFTTrainer.compute_loss`` that also appends to ``seen``, for each training
    micro-batch, its step, rows and what it buffered (smoothed loss sum, tokens)."""
    compute_loss = SFTTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        out = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            stored = self._stored["train"]
            seen.append(
                {
                    "step": self.state.global_step + 1,
                    "index": [int(i) for i in inputs["index"]],
                    "loss_sum": float(stored["_sum/loss"][-1]),
                    "tokens": float(stored["_sum/tokens"][-1]),
                }
            )
        return out

    return recording


def main(data: str, out: str) -> None:
    root = Path(out)
    rank = int(os.environ["RANK"])
    seen: list[dict] = []
    SFTTrainer.compute_loss = record_micro_batches(seen)
    result = run_sft(config(data, root / "straight", report=True, eval_steps=2))
    trainer = result.trainer
    state = {
        "world_size": torch.distributed.get_world_size(),
        "trainer_world_size": trainer.args.world_size,  # 2: data parallel, not 2 copies
        "find_unused": trainer.args.ddp_find_unused_parameters,
        "seen": list(seen),
        "straight": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    }
    try:
        run_sft(config(data, root / "crashed"), callbacks=[CrashAfterStep5()])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the crash did not happen")
    resumed = run_sft(config(data, root / "crashed", resume="latest"))
    state["resumed"] = {
        k: v.detach().clone() for k, v in resumed.trainer.model.state_dict().items()
    }
    state["notes"] = resumed.notes
    # a value buffered on rank 0 only: every rank joins the gather all the same (else rank
    # 0 waits there, and fails once rank 1 exits)
    trainer._stored["train"].clear()
    if rank == 0:
        trainer.record("train", {"_probe": torch.tensor([1.5, 2.0])})
    try:
        state["probe_sum"] = trainer._buffered_sum("_probe")
    except RuntimeError as err:
        state["probe_sum"] = str(err)
    torch.save(state, root / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
