"""The shared loader and scorer of saved preference models (``smoothalign.reward.scoring``),
the judge built on them, and ``smoothalign reward --lora`` saving a usable merged model.
Everything on the tiny Llama (byte tokenizer: BOS 256, EOS 257, pad 258)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothalign.models import load_model_and_tokenizer
from smoothalign.reward import (
    PreferenceModelScorer,
    RewardConfig,
    load_preference_model,
    resolve_reward_model_path,
    run_reward,
)
from smoothalign.reward.data import oracle_text_rows, validate_reward_rows
from smoothalign.reward.run import build_reward_model
from smoothalign.reward.scoring import ModelFolderError

BOS, EOS = 256, 257


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as ``smoothalign reward`` leaves it: the model in ``final/``."""
    torch.manual_seed(0)
    model, tok = build_reward_model("tiny")
    run = tmp_path_factory.mktemp("rm") / "run"
    model.save_pretrained(run / "final", safe_serialization=True)
    tok.save_pretrained(run / "final")
    (run / "config.json").write_text(json.dumps({"model": "tiny", "loss": "soft-bce"}))
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_preference_model(run_dir)


def _forward(model, ids: list[int]) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


# ------------------------------------------------------------------------ resolution
def test_a_run_folder_resolves_to_its_final_and_a_model_folder_to_itself(run_dir, tmp_path):
    final = run_dir / "final"
    assert resolve_reward_model_path(run_dir) == final
    assert resolve_reward_model_path(final) == final
    assert resolve_reward_model_path(str(final)) == final
    _, _, folder = load_preference_model(final)
    assert folder == final
    # a folder that is itself a model wins over a final/ inside it
    both = tmp_path / "both"
    (both / "final").mkdir(parents=True)
    for name in ("config.json",):
        (both / name).write_text((final / name).read_text())
        (both / "final" / name).write_text((final / name).read_text())
    assert resolve_reward_model_path(both) == both
    # a run folder without final/ (unfinished): its config.json is not a model's
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(ModelFolderError, match="not a model's") as e:
        resolve_reward_model_path(unfinished)
    assert str(unfinished) in str(e.value)
    # an old LoRA run: only an adapter in final/
    old = tmp_path / "old-lora"
    (old / "final").mkdir(parents=True)
    (old / "final" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter") as e:
        resolve_reward_model_path(old)
    assert str(old) in str(e.value)


# ------------------------------------------------------------------------ refusals
def test_the_loader_refuses_what_is_not_a_safe_scalar_classifier(tmp_path, run_dir):
    from transformers import AutoModelForSequenceClassification

    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="^reward_model: not found: ") as e:
        load_preference_model(missing)
    assert str(missing) in str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="no config.json") as e:
        load_preference_model(empty)
    assert str(empty) in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)

    lm, tok = load_model_and_tokenizer("tiny")
    causal = tmp_path / "lm"
    lm.save_pretrained(causal, safe_serialization=True)
    tok.save_pretrained(causal)
    with pytest.raises(ValueError, match="LlamaForCausalLM, not a preference model") as e:
        load_preference_model(causal)
    assert str(causal) in str(e.value)

    config = copy.deepcopy(lm.config)
    config.num_labels = 2
    two = tmp_path / "two-labels"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(
        two, safe_serialization=True
    )
    tok.save_pretrained(two)
    with pytest.raises(ValueError, match="2 labels") as e:
        load_preference_model(two)
    assert str(two) in str(e.value)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((run_dir / "final" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \.safetensors weights \(found pytorch_model\.bin\)"):
        load_preference_model(pickled)
    with pytest.raises(ValueError, match="pickled") as e:
        load_preference_model(pickled)
    assert str(pickled) in str(e.value)


# ------------------------------------------------------------------------ scoring
def test_scores_equal_a_direct_forward_on_hand_built_ids(loaded):
    model, tok, _ = loaded
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    scorer = PreferenceModelScorer(model, tok, max_length=64, batch_size=2)
    prompts, texts = ["q:", "q:", "a longer prompt:", "x"], ["a", "abcdefgh", "zz", ""]
    got = scorer(prompts, texts)
    assert got.dtype == np.float64 and got.shape == (4,)
    for p, t, s in zip(prompts, texts, got, strict=True):
        assert s == pytest.approx(_forward(model, [BOS, *p.encode(), *t.encode(), EOS]), abs=1e-5)
    assert scorer.n_scored == 4 and scorer.n_truncated == 0
    # the batch does not change a score
    assert scorer(prompts[1:2], texts[1:2])[0] == pytest.approx(got[1], abs=1e-5)
    assert scorer([], []).shape == (0,)


def test_long_responses_are_cut_as_in_training_and_long_prompts_refused(loaded):
    model, tok, _ = loaded
    scorer = PreferenceModelScorer(model, tok, max_length=8)
    got = scorer(["ab"], ["cdefghijk"])  # BOS a b + 5 of the response; its EOS cut too
    assert got[0] == pytest.approx(_forward(model, [BOS, *b"ab", *b"cdefg"]), abs=1e-5)
    assert scorer.n_truncated == 1
    with pytest.raises(ValueError, match="8 tokens leaves no room .* max_length 8"):
        scorer(["abcdefg"], ["x"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer(["a", "b"], ["c"])


def test_conversational_prompts_are_scored_as_the_rendered_chat(loaded):
    model, tok, _ = loaded
    scorer = PreferenceModelScorer(model, tok, max_length=256)
    prompt = [{"role": "user", "content": "hi?"}]
    reply = "hello"
    text = tok.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reply}], tokenize=False
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    expected = _forward(model, ids)
    assert scorer([prompt], [reply])[0] == pytest.approx(expected, abs=1e-5)
    as_messages = [{"role": "assistant", "content": reply}]
    assert scorer([prompt], [as_messages])[0] == pytest.approx(expected, abs=1e-5)


def test_the_scorer_sees_the_tokens_the_reward_trainer_saw(loaded):
    _, tok, _ = loaded
    rows = oracle_text_rows(12, seed=3)
    rows[0]["chosen"] = rows[0]["chosen"] * 6  # one response cut to fit
    examples = validate_reward_rows(rows, tok, 32).examples
    scorer = PreferenceModelScorer(None, tok, max_length=32)
    assert any(ex.pair.chosen_truncated for ex in examples)
    for ex in examples:
        row = rows[ex.pair.index]
        assert (
            scorer.tokens(row["prompt"], row["chosen"]) == ex.pair.prompt_ids + ex.pair.chosen_ids
        )
        assert (
            scorer.tokens(row["prompt"], row["rejected"])
            == ex.pair.prompt_ids + ex.pair.rejected_ids
        )


# ------------------------------------------------------------------------ the judge
def test_the_judge_is_the_shared_scorer_with_an_explicit_max_length(run_dir, loaded):
    from smoothalign.experiments.judge import RewardModelJudge, load_judge

    model, tok, _ = loaded
    judge = RewardModelJudge(run_dir, batch_size=3)
    assert judge.path == run_dir / "final"
    assert judge.max_length == 512  # the tiny Llama's max_position_embeddings
    assert judge.describe().startswith("reward model") and "512 tokens" in judge.describe()
    prompts, texts = ["C:ab", "A:", "B:x", "D:"], ["cdef", "ab", "", "q"]
    got = judge.score_texts(prompts, texts)
    assert got.dtype == torch.float64 and got.shape == (4,)
    direct = PreferenceModelScorer(model, tok, max_length=512)(prompts, texts)
    assert np.allclose(got.numpy(), direct, atol=1e-6)
    assert judge.score_texts([], []).shape == (0,)
    short = RewardModelJudge(run_dir / "final", max_length=6)
    assert "6 tokens" in short.describe()
    short.score_texts(["C:"], ["abcdef"])
    assert short.n_truncated == 1
    with pytest.raises(ValueError, match="trust_remote_code"):
        RewardModelJudge(run_dir, trust_remote_code=True)
    assert load_judge(None) is None


# ------------------------------------------------------------------------ --lora runs
def test_a_lora_run_saves_a_merged_model_that_scores_like_the_trained_adapter(tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    result = run_reward(
        RewardConfig(
            model="tiny", output_dir=str(out), oracle_pairs=24, max_steps=2, batch_size=8,
            logging_steps=1, eval_steps=0, lr_warmup_steps=0, max_length=32, lora=True,
            lora_r=4, lora_alpha=8, report=False,
        )
    )  # fmt: skip
    final = out / "final"
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert (final / "smoothing_state.pt").is_file()
    assert not (final / "adapter_config.json").exists()
    trained = result.trainer.model.eval()
    assert isinstance(trained, PeftModel)  # the trainer's model is left unmerged
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(
        float(p.detach().abs().max()) > 0 for p in lora_b
    )  # training moved the adapter

    model, tok, folder = load_preference_model(out)
    assert folder == final
    assert not any("lora" in n for n, _ in model.named_parameters())
    prompts, texts = ["pos:", "neg: the", "x"], ["good day", "bad", "aaaa dddd"]
    got = PreferenceModelScorer(model, tok, max_length=32, batch_size=2)(prompts, texts)
    scorer = PreferenceModelScorer(trained, tok, max_length=32, batch_size=2)
    np.testing.assert_allclose(got, scorer(prompts, texts), atol=1e-5, rtol=0)
    base, _ = build_reward_model("tiny")  # the merge really carries the training
    base_scores = PreferenceModelScorer(base.eval(), tok, max_length=32)(prompts, texts)
    assert np.abs(got - base_scores).max() > 1e-4


def test_generated_text_that_merges_with_its_prompt_is_scored_not_refused():
    """Data with such a merge is a bad row (under a space-prepending tokenizer); a
    generated candidate must still be scored, as it was, or rank-calibrate would stop."""
    from tests.data_helpers import sentencepiece_like_tokenizer

    tok = sentencepiece_like_tokenizer("llama2")
    scorer = PreferenceModelScorer(model=None, tokenizer=tok, max_length=64)
    ids = scorer.tokens("Answer: ", "Yes")
    assert ids[-1] == tok.eos_token_id and len(ids) > 4
