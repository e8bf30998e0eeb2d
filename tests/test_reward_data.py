"""Soft-label pair rows: validation with row/field errors, labels joined on pair_id, collation,
and the oracle world's simulated annotators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smoothalign.models.loading import build_tiny_tokenizer
from smoothalign.reward.data import (
    RewardCollator,
    oracle_reward,
    oracle_text_rows,
    simulate_votes,
    validate_reward_rows,
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _row(i: int, **label) -> dict:
    base = {"pair_id": f"p{i}", "prompt": f"q{i}:", "chosen": "good", "rejected": "bad"}
    if not label:
        label = {"p_chosen": 0.75}
    return {**base, **label}


def _validate(rows, tok, **kw):
    return validate_reward_rows(rows, tok, 32, **kw)


# ------------------------------------------------------------- good rows
def test_every_label_form_gives_the_probability_that_chosen_wins(tok):
    rows = [
        _row(0, p_chosen=0.25),
        _row(1, votes_chosen=3, votes_total=4),
        _row(2, votes=[1, 0, 1, 1, 1]),
        _row(3, votes=[True, False]),
        _row(4, p_chosen=0.6, votes_chosen=3, votes_total=5),  # two forms that agree
        _row(5, votes_chosen=2.0, votes_total=2.0),  # whole floats (Parquet/CSV) are counts
    ]
    report = _validate(rows, tok)
    assert [e.p_chosen for e in report.examples] == [0.25, 0.75, 0.8, 0.5, 0.6, 1.0]
    assert [e.votes_total for e in report.examples] == [None, 4, 5, 2, 5, 2]
    assert [e.index for e in report.examples] == list(range(6))
    assert report.n_from_votes == 5
    assert "rows: 6 read, 6 kept, 0 skipped" in report.to_markdown()


# ------------------------------------------------------------- bad rows
def test_message_lists_written_out_as_text_in_a_csv_are_refused(tok, tmp_path):
    """A chat data set saved with pandas' to_csv holds the lists' Python repr: a reward model
    would train on that text. Refused, naming file, row and field, with the way out."""
    import csv

    path = tmp_path / "chat_votes.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected", "votes_chosen", "votes_total"])
        for i in range(3):
            w.writerow([
                str([{"role": "user", "content": f"q{i}"}]),
                str([{"role": "assistant", "content": "good"}]),
                str([{"role": "assistant", "content": "bad"}]),
                2,
                3,
            ])  # fmt: skip
    with pytest.raises(ValueError) as err:
        validate_reward_rows(path, tok, 64)
    message = str(err.value)
    assert f"{path} row 0, field 'prompt': a message list written out as text" in message
    assert "a CSV cannot hold message lists" in message and "JSONL or Parquet" in message
    assert "3 of 3" in message


@pytest.mark.parametrize(
    "label, field, words",
    [
        ({"p_chosen": 1.3}, "p_chosen", "1.3 is outside [0, 1]"),
        ({"p_chosen": -0.1}, "p_chosen", "outside [0, 1]"),
        ({"p_chosen": float("nan")}, "p_chosen", "NaN"),
        ({"p_chosen": "0.5"}, "p_chosen", "expected a number"),
        ({"p_chosen": True}, "p_chosen", "expected a number"),
        ({"votes_chosen": 0, "votes_total": 0}, "votes_total", "zero annotators"),
        ({"votes": []}, "votes", "zero annotators"),
        ({"votes_chosen": 5, "votes_total": 3}, "votes_chosen", "5 votes for chosen out of only 3"),
        ({"votes_chosen": 2}, "votes_total", "missing while 'votes_chosen' is given"),
        ({"votes_chosen": 1.5, "votes_total": 3}, "votes_chosen", "whole number"),
        ({"votes_chosen": float("nan"), "votes_total": 3}, "votes_chosen", "NaN"),
        ({"votes_chosen": -1, "votes_total": 3}, "votes_chosen", "whole number >= 0"),
        ({"votes": [1, 2, 0]}, "votes", "vote 1 is 2"),
        ({"votes": "101"}, "votes", "list of 0/1 votes"),
        ({"votes": np.array([[1, 0], [1, 1]])}, "votes", "each vote must be 0 or 1"),
        ({"p_chosen": 0.5, "votes_chosen": 3, "votes_total": 4}, "votes_chosen", "0.75"),
        ({"votes": [1, 1], "votes_chosen": 1, "votes_total": 2}, "votes", "2 of 2 votes"),
        (
            {"p_chosen": None},
            "p_chosen",
            "hard-labelled pairs, whose chosen always wins: p_chosen = 1",
        ),
    ],
)
def test_bad_labels_raise_a_value_error_naming_row_and_field(tok, label, field, words):
    rows = [_row(0), _row(1, **label) if label != {"p_chosen": None} else _row(1, votes=None)]
    if label == {"p_chosen": None}:
        rows[1].pop("votes")
    with pytest.raises(ValueError) as err:
        _validate(rows, tok)
    message = str(err.value)
    assert f"row 1, field '{field}'" in message, message
    assert words in message, message
    assert "1 of 2 preference rows are invalid" in message


def test_text_problems_and_label_problems_are_listed_together_in_row_order(tok):
    rows = [
        _row(0),
        _row(1, p_chosen=2.0),
        {**_row(2), "chosen": "   "},
        _row(3, votes_chosen=0, votes_total=0),
        _row(4),
    ]
    with pytest.raises(ValueError) as err:
        _validate(rows, tok)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 of 5 preference rows are invalid:"
    assert lines[1].startswith("  row 1, field 'p_chosen'")
    assert lines[2].startswith("  row 2, field 'chosen': empty response")
    assert lines[3].startswith("  row 3, field 'votes_total': zero annotators")

    report = _validate(rows, tok, on_bad_rows="skip")
    assert [e.index for e in report.examples] == [0, 4]
    assert [(b.index, b.field, b.code) for b in report.bad_rows] == [
        (1, "p_chosen", "bad_p_chosen"),
        (2, "chosen", "empty_response"),
        (3, "votes_total", "zero_annotators"),
    ]
    assert "Skipped rows by reason" in report.to_markdown()


def test_a_repeated_pair_id_is_a_bad_row(tok):
    rows = [_row(0), _row(1), {**_row(2), "pair_id": "p0"}]
    with pytest.raises(ValueError, match=r"row 2, field 'pair_id': 'p0' already names row 0"):
        _validate(rows, tok)


def test_all_rows_bad_in_skip_mode_still_raises(tok):
    with pytest.raises(ValueError, match="no valid soft-label preference row is left") as err:
        _validate([_row(0, p_chosen=3.0)], tok, on_bad_rows="skip")
    assert "on_bad_rows='skip'" not in str(err.value)  # skipping is what left nothing


# ------------------------------------------------------------- labels joined on pair_id
def _texts(n: int) -> list[dict]:
    rows = [_row(i) for i in range(n)]
    for r in rows:
        r.pop("p_chosen")
    return rows


def test_labels_file_per_pair_and_per_vote(tok, tmp_path):
    labels = [
        {"pair_id": "p0", "p_chosen": 0.9},
        {"pair_id": "p1", "vote": 1},
        {"pair_id": "p1", "vote": 0},
        {"pair_id": "p1", "vote": 1},
        {"pair_id": "p2", "votes_chosen": 1, "votes_total": 4},
    ]
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    import datasets

    # a list, a path, and the other containers load_preference_rows reads (a tuple, a
    # datasets.Dataset: the Python API's, named "labels" in errors as a list is)
    keys = sorted({k for r in labels for k in r})  # (from_list keeps the first row's keys)
    table = datasets.Dataset.from_dict({k: [r.get(k) for r in labels] for k in keys})
    for source in (labels, str(path), tuple(labels), table):
        report = _validate(_texts(3), tok, labels=source)
        assert [e.p_chosen for e in report.examples] == [0.9, pytest.approx(2 / 3), 0.25]
        assert report.examples[1].votes_total == 3


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            [{"pair_id": "p9", "p_chosen": 0.5}],
            "votes.jsonl row 0, field 'pair_id': no pair with id 'p9'",
        ),
        ([{"p_chosen": 0.5}], "votes.jsonl row 0, field 'pair_id': missing"),
        (
            [{"pair_id": "p0", "p_chosen": 0.5}, {"pair_id": "p0", "p_chosen": 0.7}],
            "{votes} row 1, field 'pair_id': pair 'p0' already labelled at {votes} row 0",
        ),
        (
            [{"pair_id": "p0", "vote": 1}, {"pair_id": "p0", "p_chosen": 0.7}],
            "votes.jsonl row 1, field 'pair_id': pair 'p0' already labelled",
        ),
        ([{"pair_id": "p0", "vote": 2}], "votes.jsonl row 0, field 'vote': expected 0 or 1, got 2"),
        ([{"pair_id": "p0"}], "votes.jsonl row 0, field 'p_chosen': no label"),
        # a bad label value is the labels file's, named there
        (
            [{"pair_id": "p1", "p_chosen": 1.3}],
            "votes.jsonl row 0, field 'p_chosen': 1.3 is outside",
        ),
        (
            [{"pair_id": "p0", "votes_chosen": 4, "votes_total": 3}],
            "votes.jsonl row 0, field 'votes_chosen'",
        ),
        # a refused row does not count as the pair's label
        (
            [
                {"pair_id": "p0", "p_chosen": 2},
                {"pair_id": "p0", "vote": 1},
                {"pair_id": "p0", "p_chosen": 0.3},
            ],
            "{votes} row 2, field 'pair_id': pair 'p0' already labelled at {votes} row 1 (vote)",
        ),
    ],
)
def test_mismatched_pair_ids_raise_naming_the_labels_row_and_field(tok, tmp_path, labels, message):
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    with pytest.raises(ValueError) as err:
        _validate(_texts(2), tok, labels=str(path))
    message = message.replace("{votes}", str(path))  # the labels file as given, not its name
    assert message in str(err.value), str(err.value)


def test_data_rows_must_carry_unique_ids_and_no_label_of_their_own_to_join(tok):
    rows = _texts(3)
    rows[1]["pair_id"] = "p0"
    rows[2].pop("pair_id")
    rows[0]["p_chosen"] = 0.4
    with pytest.raises(ValueError) as err:
        _validate(rows, tok, labels=[{"pair_id": "p0", "p_chosen": 0.5}])
    message = str(err.value)
    assert "data row 1, field 'pair_id': 'p0' repeats data row 0" in message
    assert "data row 2, field 'pair_id': missing" in message
    assert "data row 0, field 'p_chosen': the row already has a label" in message


def test_a_pair_left_without_a_label_is_a_bad_row(tok):
    with pytest.raises(ValueError, match=r"row 1, field 'p_chosen': no soft label"):
        _validate(_texts(2), tok, labels=[{"pair_id": "p0", "p_chosen": 0.5}])


def test_csv_with_vote_counts(tok, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "pair_id,prompt,chosen,rejected,votes_chosen,votes_total\n"
        "1,q:,good,bad,2,3\n"
        "2,q:,fine,poor,1,1\n"
    )
    report = _validate(str(path), tok)
    assert [e.p_chosen for e in report.examples] == [pytest.approx(2 / 3), 1.0]
    # numeric CSV ids join string ids of a labels list
    rows = _texts(1)
    rows[0]["pair_id"] = 7
    assert (
        _validate(rows, tok, labels=[{"pair_id": "7", "p_chosen": 0.3}]).examples[0].p_chosen == 0.3
    )


def test_one_bad_number_in_a_csv_column_is_that_rows_error_alone(tok, tmp_path):
    """A label column is parsed cell by cell: one bad cell does not turn it all to text."""
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,p_chosen\nq:,good,bad,0.7\nq:,fine,poor,0.7x\nq:,ok,meh,\n"
    )
    with pytest.raises(ValueError) as err:
        _validate(str(path), tok)
    assert "2 of 3 preference rows are invalid" in str(err.value)
    assert "row 1, field 'p_chosen': expected a number, got str '0.7x'" in str(err.value)
    report = _validate(str(path), tok, on_bad_rows="skip")
    assert [e.p_chosen for e in report.examples] == [0.7]


# ------------------------------------------------------------- collation
def test_collator_batches_chosen_then_rejected_with_the_labels(tok):
    rows = [
        _row(0, p_chosen=0.25),
        {**_row(1, votes_chosen=3, votes_total=4), "rejected": "much worse", "confidence": 0.7},
    ]
    examples = _validate(rows, tok).examples
    batch = RewardCollator(tok.pad_token_id)(examples)
    assert batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["p_chosen"].tolist() == [0.25, 0.75]
    assert math.isnan(batch["votes_total"][0]) and batch["votes_total"][1] == 4
    assert math.isnan(batch["confidence"][0]) and batch["confidence"][1] == pytest.approx(0.7)
    assert batch["index"].tolist() == [0, 1]
    lengths = batch["attention_mask"].sum(1).tolist()
    pair0 = examples[0].pair
    assert lengths[0] == len(pair0.prompt_ids) + len(pair0.chosen_ids)
    assert lengths[2] == len(pair0.prompt_ids) + len(pair0.rejected_ids)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()


def test_a_response_with_user_turns_is_scored_as_its_whole_text(tok):
    """A reward model reads the whole conversation and scores it at its last token: a user
    turn inside a response stays in the text (DPO masks it out of log π instead). The rows
    are checked as DPO's are: a response whose assistant turns are blank is a bad row."""
    prompt = [{"role": "user", "content": "q"}]
    chosen = [
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "QUESTION"},
        {"role": "assistant", "content": "ab"},
    ]
    blank = [{"role": "assistant", "content": " "}, {"role": "user", "content": "more?"},
             {"role": "assistant", "content": ""}]  # fmt: skip
    rejected = [{"role": "assistant", "content": "no"}]
    rows = [
        {"pair_id": 0, "prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": 0.7},
        {"pair_id": 1, "prompt": prompt, "chosen": blank, "rejected": rejected, "p_chosen": 0.7},
    ]
    report = validate_reward_rows(rows, tok, 256, on_bad_rows="skip")
    (bad,) = report.bad_rows
    assert (bad.row, bad.field, bad.code) == (1, "chosen", "empty_response")
    (ex,) = report.examples
    batch = RewardCollator(tok.pad_token_id)([ex])
    n = int(batch["attention_mask"][0].sum())
    ids = batch["input_ids"][0, :n].tolist()
    assert ids == ex.pair.prompt_ids + ex.pair.chosen_ids
    text = tok.apply_chat_template(prompt + chosen, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert "QUESTION" in tok.decode(ids)


def test_identical_after_truncation_compares_the_whole_text_a_reward_model_reads(tok):
    """Cut by max_length inside a user turn after the first reply: the replies left are the
    same, so DPO (which scores them alone) counts the pair as identical, but a reward model
    reads the user turn too, which still tells the two apart where it differs."""
    from smoothalign.data import validate_preference_rows

    def conv(i: int, user_turns: tuple[str, str]) -> dict:
        prompt = [{"role": "user", "content": "q"}]
        reply = [{"role": "assistant", "content": "ok"}]
        return {
            "pair_id": i,
            "prompt": prompt,
            **{
                name: [*reply, {"role": "user", "content": u}, {"role": "assistant", "content": a}]
                for name, u, a in (("chosen", user_turns[0], "a"), ("rejected", user_turns[1], "b"))
            },
            "p_chosen": 0.7,
        }

    differ, same = conv(0, ("one two three", "four five six")), conv(1, ("same", "same"))
    text = tok.apply_chat_template(differ["prompt"] + differ["chosen"][:1], tokenize=False)
    text += "<|user|>\nsam"  # the cut: 3 characters into the user turn
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    dpo = validate_preference_rows([differ, same], tok, n)
    assert dpo.n_identical_after_truncation == 2
    reward = validate_reward_rows([differ, same], tok, n)
    assert reward.text.n_identical_after_truncation == 1  # the pair whose user turns agree
    cut = [tok.decode(e.pair.chosen_ids + e.pair.rejected_ids[-3:]) for e in reward.examples]
    assert [c[-6:] for c in cut] == ["onefou", "samsam"]


# ------------------------------------------------------------- the oracle world
def test_simulated_annotators_are_binomial():
    rng = np.random.default_rng(0)
    q = np.full(20000, 0.3)
    votes = simulate_votes(q, 7, rng)
    assert votes.mean() == pytest.approx(7 * 0.3, abs=0.03)
    assert votes.var() == pytest.approx(7 * 0.3 * 0.7, rel=0.05)
    with pytest.raises(ValueError, match="annotators"):
        simulate_votes(q, 0, rng)


def test_oracle_rows_are_majority_first_with_the_true_confidence(tok):
    rows = oracle_text_rows(300, annotators=5, temperature=2.0, seed=3)
    for r in rows:
        assert r["p_chosen"] == r["votes_chosen"] / 5 >= 0.5
        dr = oracle_reward(r["chosen"]) - oracle_reward(r["rejected"])
        assert r["confidence"] == pytest.approx(1 / (1 + math.exp(-dr / 2.0)))
    q = np.array([r["confidence"] for r in rows])
    assert 0.5 < q.mean() < 1.0  # the majority is usually, not always, right
    assert oracle_text_rows(5, seed=3) == oracle_text_rows(5, seed=3)
    assert len(_validate(rows, tok).examples) == 300


def test_a_file_row_that_is_not_an_object_is_a_bad_row_and_skip_drops_it(tok, tmp_path):
    data = tmp_path / "votes.jsonl"
    data.write_text(json.dumps(_row(0)) + "\n[1]\n" + json.dumps(_row(2)) + "\n")
    with pytest.raises(ValueError, match=r"votes\.jsonl row 1: expected an object/dict, got list"):
        _validate(str(data), tok)
    report = _validate(str(data), tok, on_bad_rows="skip")
    assert [(b.row, b.code) for b in report.bad_rows] == [(1, "not_a_mapping")]
    assert len(report.examples) == 2
    # with the labels in a file of their own, joined on pair_id
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"pair_id": "p0", "p_chosen": 0.8}\n"p2"\n')
    unlabelled = tmp_path / "pairs.jsonl"
    unlabelled.write_text(
        "".join(json.dumps({k: v for k, v in _row(i).items() if k != "p_chosen"}) + "\n"
                for i in (0, 2))
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"labels\.jsonl row 1: expected an object/dict, got str"):
        _validate(str(unlabelled), tok, labels=str(labels))


def test_csv_votes_are_read_per_cell_and_ids_stay_text(tok, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("pair_id,prompt,chosen,rejected\n007,q0:,good,bad\n008,q1:,good,bad\n")
    votes = tmp_path / "votes.csv"
    votes.write_text("pair_id,vote\n007,1\n007,yes\n008,0\n")
    with pytest.raises(ValueError) as err:
        _validate(str(data), tok, labels=str(votes))
    msg = str(err.value)  # the one bad cell is named; the good votes are numbers
    assert (
        "1 problem(s)" in msg and "votes.csv row 1, field 'vote': expected 0 or 1, got 'yes'" in msg
    )
    votes.write_text("pair_id,vote\n007,1\n007,1\n008,0\n")
    report = _validate(str(data), tok, labels=str(votes))
    assert [(ex.pair_id, ex.p_chosen) for ex in report.examples] == [("007", 1.0), ("008", 0.0)]


def test_a_held_out_sets_split_column_is_not_checked(tok):
    rows = [{**_row(i), "split": "test"} for i in range(2)]
    with pytest.raises(ValueError, match="field 'split': 'test'"):
        _validate(rows, tok)
    assert len(_validate(rows, tok, held_out=True).examples) == 2  # --eval-data


def test_rows_dropped_for_a_missing_confidence_leave_the_text_report_too(tok, tmp_path):
    """The oracle-* policies drop training rows without a confidence once the split is known
    (--on-bad-rows skip). The reward report's top-level counts said so, but its nested
    'text' section (the prompt/chosen/rejected checks) still counted those rows kept, their
    truncated responses truncated and their copies copies. It now agrees with the top."""
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import load_reward_data

    long = "a" * 40  # past max_length 32 with any prompt: truncated
    texts = [("q0:", "good", "bad"), ("q1:", long, "bad"), ("q2:", long, "bad"),
             ("q3:", "fine", "poor"), ("q3:", "fine", "poor"), ("q0:", "good", "bad"),
             ("q3:", "fine", "poor")]  # fmt: skip
    confidence = [0.8, None, 0.7, None, 0.6, 0.9, 0.5]
    rows = [
        {"pair_id": f"t{i}", "prompt": p, "chosen": c, "rejected": r, "p_chosen": 0.75}
        | ({} if q is None else {"confidence": q})
        for i, ((p, c, r), q) in enumerate(zip(texts, confidence, strict=True))
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps(_row(9, p_chosen=0.5) | {"confidence": 0.5}) + "\n")
    config = RewardConfig(model="tiny", data=str(data), eval_data=str(held), max_length=32,
                          smoothing="oracle-l0", on_bad_rows="skip")  # fmt: skip
    with pytest.warns(UserWarning, match="repeat"):  # the copies, said by validation
        train, _, info, md, _ = load_reward_data(config, tok)

    kept = [i for i, q in enumerate(confidence) if q is not None]
    assert [e.pair_id for e in train] == [f"t{i}" for i in kept]
    top, text = info["train"], info["train"]["text"]
    assert (top["n_kept"], top["n_skipped"]) == (len(kept), 2)
    assert (text["n_kept"], text["n_skipped"]) == (len(kept), 2)
    assert [(b["row"], b["code"]) for b in text["bad_rows"]] == [
        (1, "missing_confidence"), (3, "missing_confidence")
    ]  # fmt: skip
    assert text["bad_row_counts"] == {"missing_confidence": 2}
    assert text["n_with_confidence"] == len(kept)
    # BOS + prompt bytes + response bytes + EOS past 32 tokens: cut (chosen only)
    cut = [i for i in kept if 1 + len(texts[i][0]) + len(texts[i][1]) + 1 > 32]
    assert text["n_truncated"] == text["n_truncated_chosen"] == len(cut) == 1
    # copies of a kept row, among the kept rows: t5 of t0; t3 dropped, t4 is now the first
    # of its copies and t6 its copy
    copies = [(d["row"], d["first_row"]) for d in text["duplicate_rows"]]
    assert copies == [(5, 0), (6, 4)] == [(d["row"], d["first_row"]) for d in top["duplicate_rows"]]
    assert text["n_duplicate_rows"] == top["n_duplicate_rows"] == 2
    assert "rows with a true confidence: 5" in md and "responses truncated: 1" in md
