"""One rank of data-parallel DPO runs (launched by test_dpo_training via torchrun).

In one launch, under gloo: an uninterrupted run of the tiny model with CALS (``straight``),
the same run crashed after step 5 (its last certified checkpoint at step 3, saved between two
logging steps, so that the loss sums it holds were gathered across the ranks), and that run
resumed from its checkpoint (``crashed``). The first also samples from the oracle and writes
the report, so that all that a run prints and writes happens under two ranks. Dumps this
rank's calibrator state and weights after the runs to ``<out>/rank<R>.pt`` for the test to
compare, and of the first run: its results, every pair's precomputed reference log-probs,
and the work this rank did for them (the pairs whose reference log-probs it computed, its
``generate`` and oracle-scoring calls). Last, a short LoRA run (``lora``), its reference the
adapter-disabled policy. The runs' files are in ``<out>/straight``, ``<out>/crashed`` and
``<out>/lora``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tests.dist_worker_common import CrashAfterStep5, trainer_state  # noqa: E402

import smoothalign.eval.oracle  # noqa: E402
import smoothalign.train.run  # noqa: E402
from smoothalign.train import DPOConfig, run_dpo  # noqa: E402

WORK = {"reference_pairs": 0, "generate": 0, "oracle_scored": 0}  # this rank's


def _count_work() -> None:
    """Count, on this rank, the pairs whose reference log-probs it computes before training
    (``run``'s calls of ``model_sequence_logps``: the trainer's steps call their own
    module's), its ``generate`` calls and the texts it scores with the oracle."""
    from transformers.generation.utils import GenerationMixin

    run_module, oracle = smoothalign.train.run, smoothalign.eval.oracle
    logps, generate, score = (
        run_module.model_sequence_logps,
        GenerationMixin.generate,
        oracle.sentiment_reward,
    )

    def counted_logps(model, input_ids, *args, **kwargs):
        WORK["reference_pairs"] += input_ids.shape[0] // 2
        return logps(model, input_ids, *args, **kwargs)

    def counted_generate(self, *args, **kwargs):
        WORK["generate"] += 1
        return generate(self, *args, **kwargs)

    def counted_score(texts, *args, **kwargs):
        WORK["oracle_scored"] += len(texts)
        return score(texts, *args, **kwargs)

    run_module.model_sequence_logps = counted_logps
    GenerationMixin.generate = counted_generate
    oracle.sentiment_reward = counted_score


def reference_logps(trainer) -> dict[str, dict[int, tuple[float, float]]]:
    """Per split, each pair's precomputed reference log-probs, by its row index."""
    return {
        split: {ex.index: (ex.ref_chosen_logp, ex.ref_rejected_logp) for ex in ds.examples}
        for split, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset))
    }


def straight_config(data: str, out: Path, **overrides) -> DPOConfig:
    """The uninterrupted run's configuration (the test's single-process run takes it too)."""
    return _config(
        data,
        out,
        **{"report": True, "oracle": "sentiment", "eval_samples": 2, "max_new_tokens": 4,
           **overrides},
    )  # fmt: skip


def _config(data: str, out: Path, **overrides) -> DPOConfig:
    base = dict(
        model="tiny",
        data=data,
        eval_data=data,
        output_dir=str(out),
        smoothing="cals-l2",
        max_steps=6,
        save_steps=3,
        batch_size=4,
        learning_rate=1e-3,
        lora=False,
        logging_steps=2,
        eval_samples=0,
        max_length=32,
        report=False,
        lr_warmup_steps=0,
    )
    return DPOConfig(**{**base, **overrides})


def main(data: str, out: str) -> None:
    root = Path(out)
    rank = int(os.environ["RANK"])
    _count_work()
    result = run_dpo(straight_config(data, root / "straight"))
    trainer = result.trainer
    state = {
        "world_size": torch.distributed.get_world_size(),
        "trainer_world_size": trainer.args.world_size,  # 2: data parallel, not 2 copies
        "find_unused": trainer.args.ddp_find_unused_parameters,
        "first_batch": [int(i) for i in next(iter(trainer.get_train_dataloader()))["index"]],
        "straight": trainer_state(trainer),
        "straight_results": {"before": result.before, "after": result.after},
        "reference_logps": reference_logps(trainer),
        "work": dict(WORK),
    }
    try:
        run_dpo(_config(data, root / "crashed"), callbacks=[CrashAfterStep5()])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the crash did not happen")
    resumed = run_dpo(_config(data, root / "crashed", resume="latest"))
    state["resumed"] = trainer_state(resumed.trainer)
    state["notes"] = resumed.notes
    # LoRA, its reference the adapter-disabled policy: a second forward through the DDP
    # module each step (without grad), which DDP must not count as a use of the adapter
    lora = run_dpo(
        _config(data, root / "lora", lora=True, lora_r=4, max_steps=2, save_steps=0)
    ).trainer
    state["lora"] = {"find_unused": lora.args.ddp_find_unused_parameters, **trainer_state(lora)}
    torch.save(state, root / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
