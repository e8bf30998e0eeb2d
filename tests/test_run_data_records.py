"""What the dpo, sft and reward runs record of their data in the run folder, checked against
the data itself: which rows the held-out set holds (``split.json``, each row's file and row
in the order scored), whether those are the rows the held-out metrics scored, and the
console summary's counts of rows withheld from training and rows scored."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tests.dpo_helpers import write_jsonl

from smoothalign.cli import main

BOS, EOS = 256, 257  # the tiny tokenizer's: byte b is id b (models.loading.build_tiny_tokenizer)


def _pairs(n: int, seed: int = 0, **extra) -> list[dict]:
    """Pairs whose prompts ``P<i>:`` name their row; better responses of a/b, worse of c/d."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"P{i}:",
            "chosen": "".join(rng.choice("ab") for _ in range(5)),
            "rejected": "".join(rng.choice("cd") for _ in range(5)),
            **extra,
        }
        for i in range(n)
    ]


def _prompt(ids: list[int]) -> str:
    """The text of a prompt's tiny-tokenizer ids (BOS, then one id per byte)."""
    assert ids[0] == BOS
    return bytes(ids[1:]).decode()


def _split(out: Path) -> dict:
    return json.loads((out / "split.json").read_text())


# ---------------------------------------------------------------------------- dpo
def test_dpo_lists_its_held_out_pairs_and_they_are_the_ones_scored(tmp_path):
    """A seeded 30% holdout of 20 pairs, 4 of its 6 scored (--max-eval-pairs): split.json
    lists the 6 rows, and `eval preferences` of the trained run on the first 4 of them, read
    from the data file, gives the run's own held-out metrics; the console line says 6 were
    withheld from training and 4 scored."""
    from smoothalign.train import DPOConfig, run_dpo

    rows = _pairs(20)
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    config = DPOConfig(model="tiny", data=str(data), output_dir=str(out), eval_fraction=0.3,
                       max_eval_pairs=4, lora=False, smoothing="none", max_steps=2,
                       batch_size=4, learning_rate=5e-3, lr_warmup_steps=0, logging_steps=1,
                       eval_samples=0, max_length=32, report=False)  # fmt: skip
    result = run_dpo(config)

    split = _split(out)
    assert split["split"] == "seeded holdout" and split["held_out_from"] == "--data"
    assert (split["eval_fraction"], split["seed"]) == (0.3, 0)
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 4)
    assert split["scored_limit"] == "--max-eval-pairs"
    held = [(r["file"], r["row"]) for r in split["held_out"]]
    assert len(held) == 6 and {f for f, _ in held} == {str(data)}
    listed = [r for _, r in held]
    assert listed == sorted(listed)  # in row order, as scored
    # the prompts trained on are the others (each prompt names its row)
    trained = {_prompt(ex.prompt_ids) for ex in result.trainer.train_dataset.examples}
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}

    # the rows listed first are those scored: evaluating the run on them alone, read from
    # the data file, gives the run's held-out metrics after training
    scored = write_jsonl([rows[i] for i in listed[:4]], tmp_path / "scored.jsonl")
    assert main(["eval", "preferences", "--no-progress", "--model", str(out), "--data",
                 str(scored), "--output-dir", str(tmp_path / "again")]) == 0  # fmt: skip
    after = json.loads((out / "eval_results.json").read_text())["after"]
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]
    assert after["n_pairs"] == again["n_pairs"] == 4
    assert again["accuracy"] == after["accuracy"]
    assert again["margin_mean"] == pytest.approx(after["margin_mean"], abs=1e-5)
    assert after["margin_mean"] != 0.0  # trained: the margins tell the rows apart
    # the console: withheld from training and scored
    headline = result.summary().splitlines()[0]
    assert "14 train / 6 held-out pairs (4 scored: --max-eval-pairs)" in headline


def test_dpo_records_a_split_column_and_a_held_out_set(tmp_path):
    """The data's own split column, and --eval-data: split.json says which, and lists the
    rows the data marks 'eval' / every row of the held-out file; all scored."""
    from smoothalign.train import DPOConfig, run_dpo

    rows = _pairs(10)
    marks = ["train", "eval", "train", "train", "eval", "train", "train", "train", "eval", "train"]
    data = write_jsonl([dict(r, split=s) for r, s in zip(rows, marks, strict=True)],
                       tmp_path / "marked.jsonl")  # fmt: skip
    held_out = write_jsonl(_pairs(3, seed=1), tmp_path / "held_out.jsonl")
    kw = dict(model="tiny", lora=False, smoothing="none", max_steps=1, batch_size=4,
              lr_warmup_steps=0, eval_samples=0, max_length=32, report=False)  # fmt: skip
    result = run_dpo(DPOConfig(data=str(data), output_dir=str(tmp_path / "a"), **kw))
    split = _split(tmp_path / "a")
    assert split["split"] == "split column" and split["held_out_from"] == "--data"
    assert [r["row"] for r in split["held_out"]] == [i for i, s in enumerate(marks) if s == "eval"]
    assert split["n_scored"] == split["n_held_out"] == 3 and split["scored_limit"] is None
    assert "7 train / 3 held-out pairs (all scored)" in result.summary()

    run_dpo(DPOConfig(data=str(data), eval_data=str(held_out), output_dir=str(tmp_path / "b"),
                      **kw))  # fmt: skip
    split = _split(tmp_path / "b")
    assert split["split"] == "held-out set" and split["held_out_from"] == "--eval-data"
    assert [(r["file"], r["row"]) for r in split["held_out"]] == [(str(held_out), i)
                                                                   for i in range(3)]  # fmt: skip
    assert split["n_train"] == 7  # the rows marked 'eval' are not trained on


# ---------------------------------------------------------------------------- sft
@torch.no_grad()
def _completion_nll(rows: list[dict]) -> tuple[float, int]:
    """The mean NLL of ``rows``' completion tokens (and EOS) under the 'tiny' model, in
    float64 from its full logits, with the tiny tokenizer's ids written by hand; the count."""
    from smoothalign.models.loading import build_tiny_model

    model = build_tiny_model().double().eval()
    total, n = 0.0, 0
    for row in rows:
        prompt = [BOS, *row["prompt"].encode()]
        target = [*row["completion"].encode(), EOS]
        logp = model(input_ids=torch.tensor([prompt + target])).logits[0].log_softmax(-1)
        total -= sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))
        n += len(target)
    return total / n, n


def test_sft_lists_its_held_out_rows_and_they_are_the_ones_scored(tmp_path):
    """SFT's seeded holdout: split.json lists the held-out rows; the held-out NLL before
    training is that of the first --max-eval-rows of them, computed by hand from the data
    file's rows; the console line says withheld vs scored."""
    from smoothalign.sft import SFTConfig, run_sft

    rng = random.Random(2)
    rows = [{"prompt": f"P{i}:", "completion": "".join(rng.choice("ab") for _ in range(i % 5 + 2))}
            for i in range(20)]  # fmt: skip
    data = write_jsonl(rows, tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    result = run_sft(SFTConfig(model="tiny", data=str(data), output_dir=str(out),
                               eval_fraction=0.3, max_eval_rows=4, lora=False, max_steps=1,
                               batch_size=4, lr_warmup_steps=0, max_length=32,
                               report=False))  # fmt: skip
    split = _split(out)
    assert split["split"] == "seeded holdout"
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 4)
    assert split["scored_limit"] == "--max-eval-rows"
    assert {r["file"] for r in split["held_out"]} == {str(data)}
    listed = [r["row"] for r in split["held_out"]]
    trained = {  # the prompt: the tokens the loss does not read
        _prompt([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label == -100])
        for ex in result.trainer.train_dataset.examples
    }
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}
    before = json.loads((out / "eval_results.json").read_text())["before"]
    nll, n_tokens = _completion_nll([rows[i] for i in listed[:4]])
    assert before["n_rows"] == 4 and before["n_tokens"] == n_tokens
    assert before["nll"] == pytest.approx(nll, rel=1e-5)
    assert "14 train / 6 held-out rows (4 scored: --max-eval-rows)" in result.summary()


# ---------------------------------------------------------------------------- reward
def test_reward_lists_its_held_out_pairs_and_they_are_the_ones_scored(tmp_path):
    """The reward run's seeded holdout: split.json lists the held-out pairs; the held-out
    metrics count the pairs listed (all of them: reward scores every held-out pair) and,
    of those, the ones whose row in the data file carries a confidence (*_true)."""
    from smoothalign.reward import RewardConfig, run_reward

    rows = _pairs(20, p_chosen=0.8)
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["confidence"] = 0.7
    data = write_jsonl(rows, tmp_path / "votes.jsonl")
    out = tmp_path / "run"
    result = run_reward(RewardConfig(model="tiny", data=str(data), output_dir=str(out),
                                     eval_fraction=0.3, max_steps=1, batch_size=4,
                                     lr_warmup_steps=0, max_length=32,
                                     report=False))  # fmt: skip
    split = _split(out)
    assert split["split"] == "seeded holdout"
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 6)
    assert {r["file"] for r in split["held_out"]} == {str(data)}
    listed = [r["row"] for r in split["held_out"]]
    scored = [_prompt(ex.pair.prompt_ids) for ex in result.trainer.eval_dataset.examples]
    assert scored == [rows[i]["prompt"] for i in listed]
    trained = {_prompt(ex.pair.prompt_ids) for ex in result.trainer.train_dataset.examples}
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}
    after = json.loads((out / "eval_results.json").read_text())["after"]
    assert after["n_pairs"] == 6
    assert after.get("n_pairs_true", 0) == sum("confidence" in rows[i] for i in listed)
    assert "14 train / 6 held-out pairs (all scored)" in result.summary()
