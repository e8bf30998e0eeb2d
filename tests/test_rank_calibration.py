"""Calibration by ranking end to end on the tiny Llama: prompts, candidates, the preference
model scorer, ranking, the CLI and its errors. The preference model is the tiny trunk with
a fresh scalar head, saved as ``smoothalign reward`` saves one (safetensors + tokenizer)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothalign.data.tokenization import WORD_JOINER, escape_special_text
from smoothalign.models import load_model_and_tokenizer
from smoothalign.rank import RankConfig
from smoothalign.rank import cli as rank_cli
from smoothalign.rank.candidates import (
    cut_at_eos,
    diverse_beam_search,
    generate_candidates,
    load_prompts,
    score_and_rank,
)
from smoothalign.reward.scoring import (
    PreferenceModelScorer,
    check_preference_model,
    load_preference_model,
)


@pytest.fixture(scope="module")
def reward_dir(tiny_preference_model) -> Path:
    return tiny_preference_model


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


def _write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _plain_rows(n: int = 10) -> list[dict]:
    return [
        {"prompt": f"q{i}:", "chosen": "abc", "split": "eval" if i % 5 == 0 else "train"}
        for i in range(n)
    ]


# ------------------------------------------------------------------------ prompts
def test_prompts_take_the_reference_column_in_order_and_name_bad_rows(tmp_path, tiny):
    _, tok = tiny
    rows = [
        {"prompt": "a:", "reference": "R", "completion": "C", "chosen": "X"},
        {"prompt": "b:", "completion": "C", "chosen": "X"},
        {"prompt": "c:", "chosen": "X"},
        {"prompt": "d:"},
    ]
    report = load_prompts(rows, tok, max_length=32)
    refs = [(e.reference_field, e.reference) for e in report.examples]
    assert refs == [("reference", "R"), ("completion", "C"), ("chosen", "X"), (None, None)]
    ex = report.examples[0]
    assert ex.prompt_ids == [256, *b"a:"] and ex.reference_ids == [*b"R", 257]
    with pytest.raises(ValueError, match="row 3, field 'reference': no reference response"):
        load_prompts(rows, tok, max_length=32, require_reference=True)

    bad = _write_prompts(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": "  "}])
    where = re.escape(str(bad))  # the file as given, not its base name
    with pytest.raises(ValueError, match=rf"\n  {where} row 1, field 'prompt': empty prompt"):
        load_prompts(str(bad), tok, max_length=32)
    kept = load_prompts(str(bad), tok, max_length=32, on_bad_rows="skip")
    assert len(kept.examples) == 1 and kept.bad_rows[0].code == "empty_prompt"
    bad.write_text(bad.read_text() + "[1]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl row 2: expected an object/dict, got list"):
        load_prompts(str(bad), tok, max_length=32)
    kept = load_prompts(str(bad), tok, max_length=32, on_bad_rows="skip")
    assert [b.code for b in kept.bad_rows] == ["empty_prompt", "not_a_mapping"]
    with pytest.raises(ValueError, match="row 0, field 'prompt': 9 tokens leave no room"):
        load_prompts([{"prompt": "x" * 8}], tok, max_length=9)
    rows = [{"promt": "a:", "reference": "R"}, {"prompt": None}, {"prompt": "b:"}]
    report = load_prompts(rows, tok, max_length=32, on_bad_rows="skip")
    assert [b.reason for b in report.bad_rows] == [
        "missing (did you mean 'prompt'? the row has 'promt')",
        "null",
    ]


def test_conversational_prompts_use_the_chat_template(tiny):
    _, tok = tiny
    rows = [
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "yo"}],
        }
    ]
    ex = load_prompts(rows, tok, max_length=64).examples[0]
    text = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert ex.prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ex.reference_ids) == "yo<eos>\n"
    with pytest.raises(ValueError, match="row 0, field 'prompt'"):
        load_prompts([{"prompt": [{"role": "user", "content": " "}]}], tok, max_length=64)


def test_a_reference_in_the_other_form_than_its_prompt_is_mixed_formats(tiny):
    """A plain-string reference beside a message-list prompt (or the reverse) mixes the two
    forms, as a prompt of the other form does: ``mixed_formats``, not a malformed message
    list; a reference of neither form stays ``wrong_type``."""
    _, tok = tiny
    user = [{"role": "user", "content": "hi"}]
    rows = [
        {"prompt": user, "reference": "yo"},
        {"prompt": user, "reference": [{"role": "assistant", "content": "yo"}]},
    ]
    report = load_prompts(rows, tok, max_length=64, on_bad_rows="skip")
    (bad,) = report.bad_rows
    assert (bad.row, bad.field, bad.code) == (0, "reference", "mixed_formats")
    assert "a plain string beside a message-list prompt" in bad.reason
    rows = [
        {"prompt": "a:", "reference": [{"role": "assistant", "content": "yo"}]},
        {"prompt": "b:", "reference": 4},
        {"prompt": "c:", "reference": "R"},
    ]
    report = load_prompts(rows, tok, max_length=64, on_bad_rows="skip")
    assert [(b.row, b.code) for b in report.bad_rows] == [(0, "mixed_formats"), (1, "wrong_type")]
    assert "a message list beside a plain-text prompt" in report.bad_rows[0].reason


def test_a_reference_of_several_replies_trains_the_nll_on_its_replies_only(tiny):
    """A reference of two replies in a row: the NLL term's labels hold the replies' tokens,
    not the generation prompt the template puts before the second (as DPO and SFT mask
    it); a blank reply among them is a bad row."""
    from smoothalign.rank.candidates import Candidate, RankedPrompt
    from smoothalign.rank.trainer import collate_ranked

    _, tok = tiny
    replies = [{"role": "assistant", "content": "yo"}, {"role": "assistant", "content": "ab"}]
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": replies}
    ex = load_prompts([row], tok, max_length=64).examples[0]
    assert ex.reference_spans is not None and len(ex.reference_spans) == 2
    batch = collate_ranked(
        [RankedPrompt(ex, [Candidate(ids=[97, 257], text="a", score=0.0)])],
        int(tok.pad_token_id),
        64,
        with_reference=True,
    )
    n = len(ex.prompt_ids)
    labels = batch["labels"][1, n : n + len(ex.reference_ids)].tolist()
    trained = tok.decode([t for t in labels if t != -100])
    between = tok.decode(ex.reference_ids[ex.reference_spans[0][1] : ex.reference_spans[1][0]])
    assert "assistant" in between and trained == "yo<eos>\nab<eos>\n"
    blank = {**row, "chosen": [replies[0], {"role": "assistant", "content": " "}]}
    with pytest.raises(ValueError, match="message 1 \\(assistant\\) is empty"):
        load_prompts([blank], tok, max_length=64)


# ------------------------------------------------------------------------ generation
def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 7, 2], [2]) == [5, 6, 2]
    assert cut_at_eos([5, 6], [2, 3]) == [5, 6]


@pytest.mark.parametrize("decoding", ["sample", "beam", "diverse-beam"])
def test_generate_candidates_gives_k_per_prompt(tiny, decoding):
    model, tok = tiny
    examples = load_prompts([{"prompt": "ab:"}, {"prompt": "a longer one:"}], tok, max_length=64)
    torch.manual_seed(0)
    ids = generate_candidates(
        model, tok, examples.examples, num_candidates=4, decoding=decoding, max_new_tokens=6,
        num_beam_groups=2, diversity_penalty=2.0,
    )  # fmt: skip
    assert len(ids) == 2 and all(len(per) == 4 for per in ids)
    for per in ids:
        for cand in per:
            assert 1 <= len(cand) <= 6
            assert 257 not in cand[:-1]  # cut after the first EOS
        if decoding != "sample":
            assert len({tuple(c) for c in per}) == 4  # beams are distinct sequences
    assert not model.training


def test_diverse_beam_search_penalises_tokens_of_earlier_groups(tiny):
    model, _ = tiny
    prompt = [256, *b"xy:"]
    plain = diverse_beam_search(
        model, prompt, num_beams=4, num_groups=4, diversity_penalty=0.0, max_new_tokens=3,
        eos_ids=[257],
    )  # fmt: skip
    # without a penalty, one beam per group: every group decodes the same greedy sequence
    assert all(c == plain[0] for c in plain)
    diverse = diverse_beam_search(
        model, prompt, num_beams=4, num_groups=4, diversity_penalty=1e3, max_new_tokens=3,
        eos_ids=[257],
    )  # fmt: skip
    assert len({c[0] for c in diverse}) == 4  # a huge penalty: four different first tokens
    assert diverse[0] == plain[0]  # the first group is never penalised
    # the cached decoding gives the greedy continuation of an uncached forward loop
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(3):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert plain[0] == seq[len(prompt) :]
    with pytest.raises(ValueError, match="divide"):
        diverse_beam_search(
            model, prompt, num_beams=4, num_groups=3, diversity_penalty=1.0, max_new_tokens=2,
            eos_ids=[257],
        )  # fmt: skip


# ------------------------------------------------------------------------ scoring
def test_candidates_are_scored_once_and_sorted_best_first(tiny):
    _, tok = tiny
    examples = load_prompts([{"prompt": "p0"}, {"prompt": "p1"}], tok, max_length=32).examples
    candidate_ids = [[[97], [97, 97, 97], [98], [97, 97]], [[99, 99], [99], [100], [101]]]
    calls = []

    def scorer(prompts, texts):
        calls.append((list(prompts), list(texts)))
        # longer is better; 'b'/'d'/'e' tie at length 1 within their prompt
        return [float(len(t)) for t in texts]

    ranked = score_and_rank(examples, candidate_ids, lambda ids: bytes(ids).decode(), scorer)
    assert len(calls) == 1
    assert calls[0][0] == ["p0"] * 4 + ["p1"] * 4
    assert calls[0][1] == ["a", "aaa", "b", "aa", "cc", "c", "d", "e"]
    assert [c.text for c in ranked[0].candidates] == ["aaa", "aa", "a", "b"]  # ties: stable
    assert ranked[0].scores == [3.0, 2.0, 1.0, 1.0]
    assert [c.text for c in ranked[1].candidates] == ["cc", "c", "d", "e"]
    assert ranked[1].candidates[0].ids == [99, 99]
    with pytest.raises(ValueError, match="NaN"):
        score_and_rank(examples, candidate_ids, lambda ids: "x", lambda p, t: [np.nan] * len(t))


def test_generated_text_spelling_a_special_token_is_scored_as_text(reward_dir):
    """A policy can spell ``<eos>`` out of ordinary tokens (decoding gives the string back).
    For data that is a bad row; a generated candidate is scored as text instead, its special
    strings broken by a zero-width joiner, and keeps its own text."""
    model, tok, _ = load_preference_model(reward_dir.parent)
    scorer = PreferenceModelScorer(model, tok, max_length=64, batch_size=2)
    examples = load_prompts([{"prompt": "p0"}], tok, max_length=32).examples
    special = tok.eos_token
    text = f"ok {special} bye"
    ranked = score_and_rank(examples, [[list(text.encode()), [97]]], lambda ids: bytes(ids).decode(),
                            scorer)  # fmt: skip
    assert text in [c.text for c in ranked[0].candidates]
    escaped = escape_special_text(text, tok)
    assert special not in escaped and escaped.replace(WORD_JOINER, "") == text
    assert tok.eos_token_id not in scorer.tokens("p0", escaped)[:-1]  # only the closing EOS


def test_csv_references_that_look_like_numbers_stay_text(tiny, tmp_path):
    _, tok = tiny
    path = tmp_path / "math.csv"
    path.write_text("prompt,reference\nWhat is 2+2?,4\nWhat is 3+3?,6\n")
    report = load_prompts(path, tok, max_length=32)
    assert not report.bad_rows and len(report.examples) == 2


def test_message_lists_written_out_as_text_in_a_csv_are_refused(tiny, tmp_path):
    """pandas' to_csv writes a message list as its Python repr, which would be generated
    from as a plain prompt (or trained on as a plain reference): a bad row naming the
    field, with the way out."""
    _, tok = tiny
    path = tmp_path / "chat.csv"
    prompt = str([{"role": "user", "content": "hi"}]).replace('"', '""')
    reference = str([{"role": "assistant", "content": "yo"}]).replace('"', '""')
    path.write_text(f'prompt,reference\n"{prompt}",\nSay hi,"{reference}"\nSay yo,yo\n')
    with pytest.raises(ValueError, match="1 bad row|2 bad row") as err:
        load_prompts(path, tok, max_length=64)
    assert f"{path} row 0, field 'prompt': a message list written out as text" in str(err.value)
    report = load_prompts(path, tok, max_length=64, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (0, "prompt", "messages_as_text"),
        (1, "reference", "messages_as_text"),
    ]
    assert "JSONL or Parquet" in str(report.bad_rows[1])
    assert [e.row for e in report.examples] == [2]


def test_an_empty_csv_reference_cell_is_an_absent_reference(tiny, tmp_path):
    _, tok = tiny
    path = tmp_path / "p.csv"
    path.write_text("prompt,reference\nWhat is 2+2?,4\nSay hi,\n")
    report = load_prompts(path, tok, max_length=32)
    assert not report.bad_rows and len(report.examples) == 2
    assert report.examples[1].reference is None


def test_preference_model_scorer_matches_single_sequence_forwards(reward_dir):
    model, tok, folder = load_preference_model(reward_dir.parent)  # the run folder: final/
    assert folder == reward_dir and not any(p.requires_grad for p in model.parameters())
    scorer = PreferenceModelScorer(model, tok, max_length=64, batch_size=2)
    prompts, texts = ["q:", "q:", "longer prompt:"], ["a", "abcdefgh", "zz"]
    got = scorer(prompts, texts)
    for p, t, s in zip(prompts, texts, got, strict=True):
        ids = torch.tensor([[256, *p.encode(), *t.encode(), 257]])
        with torch.no_grad():
            assert float(model(ids).logits[0, 0]) == pytest.approx(s, abs=1e-5)


def test_preference_model_loading_is_safe_and_says_what_is_wrong(tmp_path, reward_dir, tiny):
    with pytest.raises(FileNotFoundError, match="^reward_model: not found: "):
        load_preference_model(tmp_path / "nope")
    lm, tok = tiny
    lm.save_pretrained(tmp_path / "lm", safe_serialization=True)
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="LlamaForCausalLM, not a preference model"):
        load_preference_model(tmp_path / "lm")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((reward_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \.safetensors weights \(found pytorch_model\.bin\)"):
        load_preference_model(pickled)
    adapter = tmp_path / "lora"
    (adapter / "final").mkdir(parents=True)
    (adapter / "final" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter"):
        load_preference_model(adapter)
    # the same checks without loading weights, for a command to refuse before other loads
    with pytest.raises(ValueError, match="LlamaForCausalLM, not a preference model"):
        check_preference_model(tmp_path / "lm")
    assert check_preference_model(reward_dir.parent) == reward_dir


# ------------------------------------------------------------------------ end to end
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rank_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_calibrates_the_tiny_policy_and_writes_its_report(tmp_path, reward_dir, capsys):
    prompts = _write_prompts(tmp_path / "prompts.jsonl", _plain_rows(10))
    out = tmp_path / "run"
    argv = [
        "--policy", "tiny", "--reward-model", str(reward_dir), "--prompts", str(prompts),
        "--output-dir", str(out), "--num-candidates", "3", "--max-new-tokens", "6",
        "--epochs", "2", "--batch-size", "4", "--learning-rate", "1e-3", "--logging-steps", "1",
        "--max-length", "48",
    ]  # fmt: skip
    assert rank_cli.run(_parse(argv)) == 0
    assert "spearman_within" in capsys.readouterr().out
    for name in (
        "report.md", "training_curves.png", "calibration.png", "metrics.jsonl", "config.json",
        "prompts.json", "validation.json", "eval_results.json", "candidates-epoch-1.jsonl",
        "candidates-epoch-2.jsonl", "eval_candidates_before.jsonl", "final/config.json",
        "final/model.safetensors",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("spearman_within", "spearman_pooled", "score_mean", "pair_accuracy"):
        assert key in results["before"] and key in results["after"], key
    assert results["after"]["n_prompts"] == 2  # the split column: rows 0 and 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # 8 prompts / 4 per step, 2 epochs
    assert all(r["loss"] >= r["rank/loss"] >= 0 for r in train)
    assert sum(r["split"] == "candidates" for r in records) == 2  # regenerated each epoch
    report = (out / "report.md").read_text()
    assert "Spearman(s̄, score) within a prompt" in report
    assert "![training curves](training_curves.png)" in report
    # the held-out prompts: the split column's rows 0 and 5, both scored
    assert json.loads((out / "split.json").read_text()) == {
        "split": "split column", "held_out_from": "--prompts", "n_train": 8, "n_held_out": 2,
        "n_scored": 2, "scored_limit": None,
        "held_out": [{"file": str(prompts), "row": 0}, {"file": str(prompts), "row": 5}],
    }  # fmt: skip
    # the held-out metrics recompute from the candidates files: their scores and the
    # policy's s̄ (policy_mean_logp), by an independent Spearman and pair count
    tol = json.loads((out / "config.json").read_text())["tie_tolerance"]
    for tag in ("before", "after"):
        lines = (out / f"eval_candidates_{tag}.jsonl").read_text().splitlines()
        prompts_ = [json.loads(line) for line in lines]
        assert [p["row"] for p in prompts_] == [0, 5]
        logps = [[c["policy_mean_logp"] for c in p["candidates"]] for p in prompts_]
        scores = [[c["score"] for c in p["candidates"]] for p in prompts_]
        want = _ranking_metrics_by_hand(logps, scores, tol)
        got = results[tag]
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (tag, key)
    first = json.loads((out / "candidates-epoch-1.jsonl").read_text().splitlines()[0])
    scores = [c["score"] for c in first["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    # the saved policy reloads as a causal LM
    reloaded, _ = load_model_and_tokenizer(str(out / "final"))
    assert reloaded.config.vocab_size == 259


def _ranks_by_hand(x: list[float], tol: float) -> list[float]:
    """1-based ranks, values within ``tol`` of each other sharing their average rank."""
    return [
        1 + sum(y < v - tol for y in x) + 0.5 * sum(abs(y - v) <= tol for y in x if y is not v)
        for v in x
    ]


def _spearman_by_hand(x: list[float], y: list[float], y_tol: float) -> float:
    rx, ry = np.array(_ranks_by_hand(x, 0.0)), np.array(_ranks_by_hand(y, y_tol))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranking_metrics_by_hand(logps, scores, tol: float) -> dict[str, float]:
    """spearman_within, spearman_pooled, pair_accuracy, score_mean, logp_mean and
    policy_top_score of [P][K] lists, written out from their definitions (not
    rank.metrics)."""
    import itertools
    import math

    within = [_spearman_by_hand(lp, sc, tol) for lp, sc in zip(logps, scores, strict=True)]
    within = [r for r in within if not math.isnan(r)]
    pairs = agree = 0
    for lp, sc in zip(logps, scores, strict=True):
        for i, j in itertools.combinations(range(len(sc)), 2):
            if abs(sc[i] - sc[j]) > tol:
                pairs += 1
                agree += (sc[i] > sc[j]) == (lp[i] > lp[j]) and lp[i] != lp[j]
    flat_l = [v for row in logps for v in row]
    flat_s = [v for row in scores for v in row]
    return {
        "n_prompts": len(scores),
        "spearman_within": sum(within) / len(within) if within else float("nan"),
        "spearman_pooled": _spearman_by_hand(flat_l, flat_s, tol),
        "pair_accuracy": agree / pairs if pairs else float("nan"),
        "score_mean": sum(flat_s) / len(flat_s),
        "logp_mean": sum(flat_l) / len(flat_l),
        "policy_top_score": sum(sc[lp.index(max(lp))] for lp, sc in zip(logps, scores, strict=True))
        / len(scores),
    }


def test_cli_errors_name_the_problem(tmp_path, reward_dir, capsys):
    from smoothalign.cli import main

    def _main(argv):
        return main(["rank-calibrate", *argv])

    prompts = _write_prompts(tmp_path / "p.jsonl", _plain_rows(4))
    base = ["--policy", "tiny", "--prompts", str(prompts), "--output-dir", str(tmp_path / "o")]
    assert _main([*base, "--reward-model", str(reward_dir), "--num-candidates", "1"]) == 2
    assert not (tmp_path / "o").exists()  # a refused run leaves no output folder
    err = capsys.readouterr().err
    assert "--num-candidates: must be >= 2 (ranking needs at least 2 candidates), got 1" in err
    with pytest.raises(SystemExit) as stop:  # argparse's: the usage marks it required
        _main(base)
    assert stop.value.code == 2
    assert "the following arguments are required: --reward-model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reward_model: required"):  # the Python API's
        RankConfig()
    assert _main([*base, "--reward-model", str(tmp_path / "missing")]) == 2
    assert f"--reward-model: not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    rows = _plain_rows(4)
    rows[2]["prompt"] = ""
    bad = _write_prompts(tmp_path / "bad.jsonl", rows)
    argv = [*base, "--reward-model", str(reward_dir), "--prompts", str(bad)]
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "row 2, field 'prompt': empty prompt" in err
    assert not (tmp_path / "o").exists()  # nor one that refuses its input
    with pytest.raises(ValueError, match="num_beam_groups: 3 does not divide"):
        RankConfig(reward_model="x", decoding="diverse-beam", num_beam_groups=3)
    # an earlier run's model would be left beside a --no-save-model run's results
    (tmp_path / "o" / "final").mkdir(parents=True)
    argv = [*base, "--reward-model", str(reward_dir), "--no-save-model"]
    assert _main(argv) == 2  # a final/ in a folder of no run: refused as such
    assert "holds final/ but is no smoothalign run's folder" in capsys.readouterr().err
    (tmp_path / "o" / "config.json").write_text('{"output_dir": "o"}')  # a run's folder
    assert _main(argv) == 2
    assert "final holds an earlier run's model" in capsys.readouterr().err
    assert (tmp_path / "o" / "final").is_dir()
    # ... unless that model is the policy being calibrated
    from smoothalign.rank.run import _refuse_an_earlier_final_left_beside

    for policy in (tmp_path / "o", tmp_path / "o" / "final"):
        config = RankConfig(reward_model="x", policy=str(policy), save_model=False)
        _refuse_an_earlier_final_left_beside(config, tmp_path / "o")


def test_the_command_is_registered():
    from smoothalign.cli import COMMANDS

    assert [(p, m) for p, m, _ in COMMANDS if p == ("rank-calibrate",)] == [
        (("rank-calibrate",), "smoothalign.rank.cli")
    ]
    args = _parse(["--reward-model", "rm"])
    assert args.policy == "smollm2-135m" and args.num_candidates == 4 and args.prompts is None


def test_prompts_the_preference_model_cannot_score_are_found_before_training(reward_dir, tiny):
    """A prompt that fits the policy but not the preference model (a longer chat template,
    another tokenizer) is a bad row up front, not an abort after the first evaluation."""
    from smoothalign.rank.run import _fit_the_preference_model

    model, tok = tiny
    rm, rm_tok, _ = load_preference_model(reward_dir)
    scorer = PreferenceModelScorer(rm, rm_tok, max_length=12)
    report = load_prompts(
        [{"prompt": "ab"}, {"prompt": "x" * 20}, {"prompt": "cd"}], tok, max_length=32
    )
    with pytest.raises(ValueError, match=r"1 train prompts do not fit .*\n  row 1, field 'prompt'"):
        _fit_the_preference_model(report.examples, scorer, "error", {}, "train")
    info: dict = {"train": {}}
    notes: list[str] = []
    kept = _fit_the_preference_model(report.examples, scorer, "skip", info, "train", notes)
    assert [ex.row for ex in kept] == [0, 2]
    assert notes == [  # the report lists them, as it does skipped bad rows
        "1 train prompt(s) skipped, too long for the preference model: "
        + info["train"]["too_long_for_the_preference_model"][0]
    ]
    assert info["train"]["too_long_for_the_preference_model"][0].startswith("row 1, field 'prompt'")


def _preference_model_with_a_longer_template(reward_dir: Path, dest: Path) -> Path:
    """A copy of the preference model whose chat template writes ``PREAMBLE: `` first: a
    conversational prompt takes 10 more of its tokens than of the tiny policy's."""
    shutil.copytree(reward_dir, dest)
    template = dest / "chat_template.jinja"
    template.write_text("{{ 'PREAMBLE: ' }}" + template.read_text())
    return dest


def _chat_rows_two_too_long_for_the_preference_model() -> list[dict]:
    """Ten conversational prompts (rows 0 and 5 held out) that fit the tiny policy within
    48 tokens; rows 3 (train) and 5 (eval) take 50 of the preference model's above."""
    return [
        {
            "prompt": [{"role": "user", "content": f"q{i}:" + (" " + "x" * 10) * (i in (3, 5))}],
            "chosen": [{"role": "assistant", "content": "abc"}],
            "split": "eval" if i % 5 == 0 else "train",
        }
        for i in range(10)
    ]


def test_prompts_too_long_for_the_preference_model_are_refused_before_any_weights_load(
    tmp_path, reward_dir, monkeypatch, capsys
):
    """The preference model's tokens of each prompt need its tokenizer alone (and
    max_length): a prompt that fits the policy but not it is refused before the policy's
    weights or the preference model's load, as the other bad rows are; no output folder."""
    from smoothalign.cli import main
    from smoothalign.rank.run import run_rank_calibration

    rm = _preference_model_with_a_longer_template(reward_dir, tmp_path / "rm")
    prompts = _write_prompts(
        tmp_path / "p.jsonl", _chat_rows_two_too_long_for_the_preference_model()
    )
    out = tmp_path / "out"

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr("smoothalign.models.load_model_and_tokenizer", no_load)
    monkeypatch.setattr("smoothalign.rank.run.load_preference_model", no_load)
    config = RankConfig(policy="tiny", reward_model=str(rm), prompts=str(prompts),
                        output_dir=str(out), max_length=48)  # fmt: skip
    with pytest.raises(ValueError, match="1 train prompts do not fit the preference model") as err:
        run_rank_calibration(config)
    assert str(err.value).splitlines()[1] == (
        f"  {prompts} row 3, field 'prompt': reward_model: a prompt of 50 tokens leaves no "
        "room for a response within max_length 48 (prompt 'q3: xxxxxxxxxx'); raise max_length"
    )
    argv = ["rank-calibrate", "--policy", "tiny", "--reward-model", str(rm), "--prompts",
            str(prompts), "--output-dir", str(out), "--max-length", "48"]  # fmt: skip
    assert main(argv) == 2
    assert "1 train prompts do not fit the preference model" in capsys.readouterr().err
    assert not out.exists()


def test_prompts_too_long_for_the_preference_model_are_dropped_before_any_weights_load(
    tmp_path, reward_dir, monkeypatch
):
    """With on_bad_rows='skip' they are dropped before the weights load, and the run
    records them as it did when it dropped them after: listed in validation.json (and
    prompts.json), said in its notes after the split's and the cut's, the held-out one left
    out of split.json."""
    import smoothalign.models
    import smoothalign.rank.run as rank_run

    rm = _preference_model_with_a_longer_template(reward_dir, tmp_path / "rm")
    prompts = _write_prompts(
        tmp_path / "p.jsonl", _chat_rows_two_too_long_for_the_preference_model()
    )
    out = tmp_path / "out"
    events: list[str] = []

    def recorded(name: str, function):
        def call(*args, **kwargs):
            events.append(name if name != "fit" else f"fit {args[4]}")
            return function(*args, **kwargs)

        return call

    load_policy = smoothalign.models.load_model_and_tokenizer
    monkeypatch.setattr(
        smoothalign.models, "load_model_and_tokenizer", recorded("policy", load_policy)
    )
    monkeypatch.setattr(
        rank_run, "load_preference_model", recorded("rm", rank_run.load_preference_model)
    )
    monkeypatch.setattr(
        rank_run, "_fit_the_preference_model", recorded("fit", rank_run._fit_the_preference_model)
    )
    result = rank_run.run_rank_calibration(
        RankConfig(policy="tiny", reward_model=str(rm), prompts=str(prompts), output_dir=str(out),
                   num_candidates=2, max_new_tokens=4, epochs=1, batch_size=4, max_length=48,
                   max_prompts=7, report=False, save_model=False, on_bad_rows="skip")
    )  # fmt: skip
    assert events == ["fit train", "fit eval", "policy", "rm"]
    too_long = (
        "reward_model: a prompt of 50 tokens leaves no room for a response within "
        "max_length 48 (prompt '{}: xxxxxxxxxx'); raise max_length"
    )
    row3 = f"{prompts} row 3, field 'prompt': " + too_long.format("q3")
    row5 = f"{prompts} row 5, field 'prompt': " + too_long.format("q5")
    validation = json.loads((out / "validation.json").read_text())
    assert validation == json.loads((out / "prompts.json").read_text())
    assert validation["train"]["n_kept"] == 10  # the policy's check kept them all
    assert validation["train"]["too_long_for_the_preference_model"] == [row3]
    assert validation["eval"] == {"too_long_for_the_preference_model": [row5]}
    split_note = result.notes.index("held-out prompts: each one's file and row in split.json")
    assert result.notes[:split_note] == [
        f"preference model: {rm} (LlamaForSequenceClassification)",
        "train/eval split: the data's 'split' column",
        "training prompts: the first 7 of 8",
        f"1 train prompt(s) skipped, too long for the preference model: {row3}",
        f"1 eval prompt(s) skipped, too long for the preference model: {row5}",
    ]
    assert (result.n_train, result.n_eval) == (6, 1)
    assert json.loads((out / "split.json").read_text()) == {
        "split": "split column", "held_out_from": "--prompts", "n_train": 6, "n_held_out": 1,
        "n_scored": 1, "scored_limit": None, "held_out": [{"file": str(prompts), "row": 0}],
    }  # fmt: skip
    rounds = [
        json.loads(line) for line in (out / "candidates-epoch-1.jsonl").read_text().splitlines()
    ]
    assert [r["row"] for r in rounds] == [1, 2, 4, 6, 7, 8]


def test_the_training_loss_pairs_each_candidate_with_its_own_prompt(tmp_path):
    """RankTrainer.loss_on on a collated batch of 2 prompts × 3 candidates equals the
    calibration terms of s̄ computed candidate by candidate, one forward each, by hand (a
    mix-up of prompts and candidates in the [B·K] → [B, K] view would not)."""
    from smoothalign.models.loading import build_tiny_model
    from smoothalign.rank.candidates import Candidate, PromptExample, RankedPrompt
    from smoothalign.rank.objective import calibration_terms
    from smoothalign.rank.trainer import RankTrainer, collate_ranked

    model = build_tiny_model().double()
    cfg = RankConfig(reward_model="unused", output_dir=str(tmp_path), nll_weight=0.0, margin=0.3)
    prompts = [[256, 104, 105, 58], [256, 120, 121, 122, 58]]  # distinct lengths: padding
    cands = [[[97, 98, 257], [99, 257], [100, 101, 102, 257]],
             [[103, 257], [104, 105, 257], [106, 257]]]  # fmt: skip
    scores = [[2.0, 1.0, -0.5], [3.0, 0.5, 0.1]]
    ranked = [
        RankedPrompt(
            PromptExample(prompt=f"p{i}", prompt_ids=prompts[i], index=i, row=i),
            [Candidate(ids=c, text="", score=s) for c, s in zip(cands[i], scores[i], strict=True)],
        )
        for i in range(2)
    ]
    trainer = RankTrainer(model, cfg, pad_id=0, steps_per_epoch=1)
    terms = trainer.loss_on(collate_ranked(ranked, 0, 64, with_reference=False))

    def mean_logp(prompt, response):  # one sequence, no padding
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        n = len(prompt)
        return float(sum(logp[n - 1 + j, t] for j, t in enumerate(response)) / len(response))

    s = torch.tensor([[mean_logp(prompts[i], c) for c in cands[i]] for i in range(2)])
    expected = calibration_terms(s, torch.tensor(scores, dtype=torch.float64), margin=0.3)
    got = terms.losses.detach().double()
    torch.testing.assert_close(got, expected.losses.double(), rtol=1e-5, atol=1e-6)

    # a float32 policy: the tie mask still reads the float64 scores (10 and 10 − 1.2e-6
    # differ by more than the 1e-6 tolerance; in float32 they would not)
    model = model.float()
    near = [[10.0, 10.0 - 1.2e-6, 0.0], [3.0, 0.5, 0.1]]
    for i in range(2):
        for c, v in zip(ranked[i].candidates, near[i], strict=True):
            c.score = v
    cfg = RankConfig(reward_model="unused", output_dir=str(tmp_path), nll_weight=0.0,
                     margin=0.3, tie_tolerance=1e-6)  # fmt: skip
    trainer = RankTrainer(model, cfg, pad_id=0, steps_per_epoch=1)
    terms = trainer.loss_on(collate_ranked(ranked, 0, 64, with_reference=False))
    s = torch.tensor([[mean_logp(prompts[i], c) for c in cands[i]] for i in range(2)])
    scores64 = torch.tensor(near, dtype=torch.float64)
    expected = calibration_terms(s, scores64, margin=0.3, tie_tolerance=1e-6)
    tied = calibration_terms(s, scores64.float(), margin=0.3, tie_tolerance=1e-6)
    assert not torch.allclose(expected.losses, tied.losses)  # the case is real
    torch.testing.assert_close(
        terms.losses.detach().double(), expected.losses.double(), rtol=1e-5, atol=1e-6
    )


def test_a_split_value_other_than_train_or_eval_is_a_bad_row_of_the_prompts(tiny, tmp_path):
    _, tok = tiny
    rows = [{"prompt": "a:", "split": "train"}, {"prompt": "b:", "split": "test"},
            {"prompt": "c:"}, {"prompt": "d:", "split": "eval"}]  # fmt: skip
    path = _write_prompts(tmp_path / "p.jsonl", rows)
    with pytest.raises(ValueError, match=r"p\.jsonl row 1, field 'split': 'test'"):
        load_prompts(str(path), tok, max_length=32)
    kept = load_prompts(str(path), tok, max_length=32, on_bad_rows="skip")
    assert [(b.row, b.code) for b in kept.bad_rows] == [(1, "bad_split"), (2, "bad_split")]
    assert len(kept.examples) == 2 and kept.n_with_reference == 0
    held_out = load_prompts(str(path), tok, max_length=32, held_out=True)  # --eval-prompts
    assert not held_out.bad_rows and len(held_out.examples) == 4


def test_the_split_notes_and_errors_name_the_commands_own_option():
    from types import SimpleNamespace

    from smoothalign.train.common import train_eval_split

    rows = [SimpleNamespace(metadata={"split": s}, row=i) for i, s in enumerate(["train", "eval"])]
    args = (lambda ex: ex.metadata, lambda ex: ex.row, 0.2, 0)
    from smoothalign._options import command_flags

    only_train = [SimpleNamespace(metadata={"split": "train"}, row=i) for i in range(3)]
    # on the command line its flag; from Python its keyword
    for flags, name in (
        ({"eval_prompts": "--eval-prompts"}, "--eval-prompts"),
        ({}, "eval_prompts"),
    ):
        with command_flags(flags):
            _, _, notes = train_eval_split(
                rows, [rows[0]], *args, what="prompts", eval_option="--eval-prompts"
            )
            assert notes == [f"{name} given: the data's 1 'eval' rows were not trained on"]
            with pytest.raises(
                ValueError, match=f"split column marks no row 'eval' .* pass {name}$"
            ):
                train_eval_split(
                    only_train, None, *args, what="prompts", eval_option="--eval-prompts"
                )


def test_training_prompts_without_a_reference_are_listed_as_bad_rows(tiny, tmp_path):
    from smoothalign.rank.run import load_rank_prompts

    _, tok = tiny
    rows = [{"prompt": f"p{i}:", "split": "eval" if i == 0 else "train"} for i in range(13)]
    rows[1]["reference"] = "R"
    path = _write_prompts(tmp_path / "noref.jsonl", rows)
    cfg = RankConfig(reward_model="x", prompts=str(path), nll_weight=0.5, max_length=32)
    with pytest.raises(ValueError, match="11 training row") as err:
        load_rank_prompts(cfg, tok)
    lines = str(err.value).splitlines()
    assert lines[1] == (
        f"  {path} row 2, field 'reference': no reference response (reference, "
        "completion or chosen) for the NLL term"
    )
    assert len(lines) == 1 + 10 + 1 and lines[-1] == "  ... and 1 more"


def test_an_interrupted_new_run_leaves_no_earlier_runs_final(tmp_path, reward_dir, monkeypatch):
    """A finished run, then a new one with other options into its folder, interrupted while
    it calibrates: its config.json is the new run's, so the earlier run's final/ must not be
    left beside it as the model it saved. A run that would calibrate that final/ and save
    its own is refused first (it would remove the model it starts from)."""
    from smoothalign.rank.run import run_rank_calibration
    from smoothalign.rank.trainer import RankTrainer

    prompts = _write_prompts(tmp_path / "p.jsonl", _plain_rows(10))
    out = tmp_path / "run"
    kw = dict(reward_model=str(reward_dir), prompts=str(prompts), output_dir=str(out),
              num_candidates=2, max_new_tokens=4, batch_size=4, max_length=48, report=False)  # fmt: skip
    run_rank_calibration(RankConfig(policy="tiny", max_eval_prompts=1, **kw))
    assert (out / "final" / "model.safetensors").is_file()
    split = json.loads((out / "split.json").read_text())  # both held out, one scored
    assert (split["n_held_out"], split["n_scored"]) == (2, 1)
    assert split["scored_limit"] == "--max-eval-prompts"
    assert [h["row"] for h in split["held_out"]] == [0, 5]
    for policy in (out, out / "final"):
        with pytest.raises(ValueError, match="is what this run loads as --policy"):
            run_rank_calibration(RankConfig(policy=str(policy), **kw))
    assert (out / "final" / "model.safetensors").is_file()

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated Ctrl-C while calibrating")

    monkeypatch.setattr(RankTrainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_rank_calibration(RankConfig(policy="tiny", **{**kw, "learning_rate": 1e-4}))
    assert json.loads((out / "config.json").read_text())["learning_rate"] == 1e-4
    assert not (out / "final").exists()


def test_a_chat_prompt_renders_the_fixed_template_date(monkeypatch):
    """rank-calibrate's chat prompts read the date the data path renders (one fixed date,
    data.tokenization.TEMPLATE_DATE), not the day the command runs."""

    from tests.data_helpers import dated_tiny_tokenizer

    from smoothalign.data.tokenization import TEMPLATE_DATE
    from smoothalign.rank.candidates import prompt_token_ids

    tok = dated_tiny_tokenizer(monkeypatch)
    ids = prompt_token_ids([{"role": "user", "content": "hi"}], tok)
    assert bytes(i for i in ids if i < 256) == TEMPLATE_DATE.strftime("%d %b %Y|hi").encode()


def test_config_json_records_the_models_loaded_and_keeps_the_typed_ones(
    tmp_path, reward_dir, tiny, monkeypatch
):
    """As dpo, sft and reward record --model: a run folder given as --policy or
    --reward-model stands for its final/, which config.json records as the model the run
    loaded, with the value typed as policy_as_given / reward_model_as_given, and the folder
    the run was launched from (working_dir), against which relative paths are read."""
    from smoothalign.rank.run import run_rank_calibration

    policy_run = tmp_path / "sft-run"  # a finished run's folder: its options and final/
    model, tok = tiny
    model.save_pretrained(policy_run / "final", safe_serialization=True)
    tok.save_pretrained(policy_run / "final")
    (policy_run / "config.json").write_text(json.dumps({"output_dir": str(policy_run)}))
    prompts = _write_prompts(tmp_path / "p.jsonl", _plain_rows(10))
    monkeypatch.chdir(tmp_path)
    kw = dict(prompts=str(prompts), num_candidates=2, max_new_tokens=4, batch_size=4,
              max_length=48, epochs=1, report=False, save_model=False)  # fmt: skip
    run_rank_calibration(
        RankConfig(policy="sft-run", reward_model=str(reward_dir.parent), output_dir="a", **kw)
    )
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["policy"] == str(Path("sft-run") / "final")
    assert saved["policy_as_given"] == "sft-run"
    assert saved["reward_model"] == str(reward_dir)
    assert saved["reward_model_as_given"] == str(reward_dir.parent)
    assert saved["working_dir"] == str(tmp_path)
    # the models as they load: nothing else to keep
    run_rank_calibration(
        RankConfig(policy="tiny", reward_model=str(reward_dir), output_dir="b", **kw)
    )
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (saved["policy"], saved["reward_model"]) == ("tiny", str(reward_dir))
    assert not [key for key in saved if key.endswith("_as_given")]


def test_bad_row_advice_names_the_python_keywords_outside_the_command_line(
    tmp_path, reward_dir, tiny, capsys
):
    """Called from Python, the advice of a refusal names ``on_bad_rows='skip'`` (what the
    caller can type), not the command's flag; from the command line, the flag."""
    from smoothalign._options import command_flags
    from smoothalign.cli import main
    from smoothalign.rank.run import _fit_the_preference_model, load_rank_prompts

    _, tok = tiny
    rows = _plain_rows(4)
    rows[2]["prompt"] = ""
    bad = _write_prompts(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="bad row") as err:
        load_prompts(str(bad), tok, max_length=32)
    assert "on_bad_rows='skip'" in str(err.value) and "--on-bad-rows" not in str(err.value)
    with command_flags({"on_bad_rows": "--on-bad-rows"}), pytest.raises(ValueError) as err:
        load_prompts(str(bad), tok, max_length=32)
    assert "--on-bad-rows skip" in str(err.value)
    argv = ["rank-calibrate", "--policy", "tiny", "--prompts", str(bad),
            "--reward-model", str(reward_dir), "--output-dir", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "--on-bad-rows skip" in capsys.readouterr().err
    # the NLL term's missing references
    noref = _write_prompts(
        tmp_path / "noref.jsonl",
        [{"prompt": f"p{i}:", "split": "eval" if i == 0 else "train"} for i in range(4)],
    )
    cfg = RankConfig(reward_model="x", prompts=str(noref), nll_weight=0.5, max_length=32)
    with pytest.raises(ValueError, match="without a reference") as err:
        load_rank_prompts(cfg, tok)
    assert "nll_weight=0, or on_bad_rows='skip'" in str(err.value)
    assert "--" not in str(err.value).splitlines()[0]
    # prompts too long for the preference model
    rm, rm_tok, _ = load_preference_model(reward_dir)
    scorer = PreferenceModelScorer(rm, rm_tok, max_length=12)
    report = load_prompts([{"prompt": "ab"}, {"prompt": "x" * 20}], tok, max_length=32)
    with pytest.raises(ValueError, match="do not fit") as err:
        _fit_the_preference_model(report.examples, scorer, "error", {}, "train")
    assert "Raise max_length, or pass on_bad_rows='skip'" in str(err.value)
