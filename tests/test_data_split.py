"""The train/eval split of every trainer's data (``train.common``): copies of a row stay on
one side of a seeded holdout, held-out copies of training rows are said, and the data the
runs read through their own loading functions (``sft``, ``dpo``, ``reward``,
``rank-calibrate``), with no model loaded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from data_helpers import make_byte_tokenizer
from smoothalign.train.common import holdout, train_eval_split


@pytest.fixture(scope="module")
def tok():
    return make_byte_tokenizer()


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _sft_rows(n: int) -> list[dict]:
    return [{"prompt": f"Review {i}:", "completion": f" fine {i}"} for i in range(n)]


def _pair_rows(n: int, **extra) -> list[dict]:
    return [
        {"prompt": f"Q{i}:", "chosen": f" good {i}", "rejected": f" bad {i}", **extra}
        for i in range(n)
    ]


# ---------------------------------------------------------------------------- holdout
def test_a_holdout_without_copies_is_the_split_it_always_was():
    """The same seed draws the same rows whether or not the rows carry keys: data without
    copies splits as before copies were looked for (values from the earlier code)."""
    rows = list(range(20))
    assert holdout(rows, 0.1, 0) == ([r for r in rows if r not in (10, 18)], [10, 18])
    assert holdout(rows, 0.1, 0, key_of=str) == holdout(rows, 0.1, 0)
    assert holdout(list(range(40)), 0.25, 7)[1] == [5, 8, 10, 11, 12, 15, 19, 21, 30, 35]
    assert holdout(list(range(40)), 0.25, 7, key_of=lambda r: None) == holdout(
        list(range(40)), 0.25, 7
    )


@pytest.mark.parametrize("seed", range(8))
def test_a_holdout_keeps_every_copy_of_a_row_on_one_side(seed):
    """10 rows given 4 times: the 10% holdout draws one of the 10 rows, with its 4 copies;
    no held-out row is a training row's copy (they were 3 in 4 before)."""
    rows = [(i, copy) for copy in range(4) for i in range(10)]
    train, evals = holdout(rows, 0.1, seed, key_of=lambda r: r[0])
    assert len(evals) == 4 and len({r[0] for r in evals}) == 1
    assert not {r[0] for r in evals} & {r[0] for r in train}
    assert sorted(train + evals) == sorted(rows) and len(train) == 36


def test_held_out_copies_of_training_rows_from_a_split_column_are_said():
    rows = [{"text": "a", "split": "train"}, {"text": "a", "split": "eval"}]
    rows += [{"text": "b", "split": "eval"}]
    with pytest.warns(UserWarning, match=r"1 of the 2 held-out rows repeat training rows \(1\)"):
        train, evals, notes = train_eval_split(
            rows, None, lambda r: r, lambda r: rows.index(r), 0.1, 0, what="rows",
            key_of=lambda r: r["text"],
        )  # fmt: skip
    assert len(train) == 1 and len(evals) == 2
    assert any("held-out metrics are partly on rows trained on" in n for n in notes)


# ---------------------------------------------------------------------------- the runs' data
def test_sft_rows_given_four_times_are_counted_and_held_out_together(tmp_path, tok):
    """The review's case: 10 SFT rows repeated 4 times read as 40 rows, 40 kept, and a seeded
    holdout drawn from copies of training rows. The copies are kept (and trained on), but
    counted in validation.json and report.md, warned about, and held out together."""
    from smoothalign.sft.config import SFTConfig
    from smoothalign.sft.run import load_sft_data

    data = _write(tmp_path / "sft.jsonl", _sft_rows(10) * 4)
    config = SFTConfig(model="tiny", data=str(data), output_dir=str(tmp_path / "run"))
    with pytest.warns(UserWarning, match="30 of 40 kept rows repeat the text fields") as seen:
        train, evals, info, md, notes = load_sft_data(config, tok)
    message = str(next(w.message for w in seen if "repeat" in str(w.message)))
    assert f"{data} row 10 (= row 0), {data} row 11 (= row 1), {data} row 12 (= row 2)" in message
    assert "and 27 more" in message
    assert len(train) + len(evals) == 40 and len(evals) == 4
    assert not {e.row % 10 for e in evals} & {e.row % 10 for e in train}
    assert info["train"]["n_duplicate_rows"] == 30 and info["train"]["n_kept"] == 40
    first = info["train"]["duplicate_rows"][0]
    assert (first["row"], first["first_row"], first["file"]) == (10, 0, str(data))
    assert "**warning**: 30 of 40 kept rows repeat the text fields of an earlier row" in md
    assert not any("held-out" in n and "repeat" in n for n in notes)


def test_rows_without_copies_say_nothing_of_copies(tmp_path, tok):
    from smoothalign.sft.config import SFTConfig
    from smoothalign.sft.run import load_sft_data

    data = _write(tmp_path / "sft.jsonl", _sft_rows(20))
    config = SFTConfig(model="tiny", data=str(data), output_dir=str(tmp_path / "run"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, evals, info, md, _ = load_sft_data(config, tok)
    assert [e.row for e in evals] == [10, 18]  # the holdout it always drew (seed 0)
    assert info["train"]["n_duplicate_rows"] == 0 and "repeat" not in md


def test_dpo_pairs_are_copies_by_their_texts_whatever_their_other_columns(tmp_path, tok):
    from smoothalign.train.config import DPOConfig
    from smoothalign.train.run import _load_data, _read_data

    rows = _pair_rows(10) + [dict(r, confidence=0.9) for r in _pair_rows(10)]
    rows.append({"prompt": "Q0:", "chosen": " good 0", "rejected": " other"})  # not a copy
    data = _write(tmp_path / "pairs.jsonl", rows)
    config = DPOConfig(model="tiny", data=str(data), output_dir=str(tmp_path / "run"))
    rows, eval_rows, _, _ = _read_data(config)
    with pytest.warns(UserWarning, match="10 of 21 kept rows repeat the text fields"):
        train, evals, md, _, _, info = _load_data(config, tok, rows, eval_rows)
    assert info["train"]["n_duplicate_rows"] == 10
    assert [d["first_row"] for d in info["train"]["duplicate_rows"]] == list(range(10))
    keys = {e.row % 10 for e in evals if e.row < 20}
    assert len(evals) == 2 and not keys & {e.row % 10 for e in train if e.row < 20}
    assert "kept rows repeat the text fields" in md


def test_reward_copies_are_counted_in_the_reward_report(tmp_path, tok):
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import load_reward_data

    data = _write(tmp_path / "votes.jsonl", _pair_rows(10, p_chosen=0.8) * 2)
    config = RewardConfig(model="tiny", data=str(data), output_dir=str(tmp_path / "run"))
    with pytest.warns(UserWarning, match="10 of 20 kept rows repeat"):
        train, evals, info, md, _ = load_reward_data(config, tok)
    assert info["train"]["n_duplicate_rows"] == 10
    assert info["train"]["duplicate_rows"][0]["index"] == 10
    assert info["train"]["text"]["duplicate_rows"][0]["index"] == 10
    assert "**warning**: 10 of 20 kept rows repeat" in md
    assert len(evals) == 4 and len({e.pair.row % 10 for e in evals}) == 2  # 20% of 10, twice
    assert not {e.pair.row % 10 for e in evals} & {e.pair.row % 10 for e in train}


def test_rank_prompts_are_copies_by_their_prompt_and_held_out_together(tmp_path):
    """rank-calibrate's 8 held-out prompts were all training prompts too: prompts are now
    held out with their copies (the reference may differ: the prompt is what is ranked)."""
    from smoothalign.models.loading import build_tiny_tokenizer
    from smoothalign.rank.config import RankConfig
    from smoothalign.rank.run import load_rank_prompts

    rows = [{"prompt": f"q{i}:", "reference": f"a{k}"} for k in range(4) for i in range(20)]
    data = _write(tmp_path / "prompts.jsonl", rows)
    config = RankConfig(
        reward_model=str(tmp_path / "rm"),  # not read here
        prompts=str(data),
        output_dir=str(tmp_path / "run"),
        eval_fraction=0.1,
        max_eval_prompts=0,
    )
    with pytest.warns(UserWarning, match="60 of 80 kept rows repeat the prompt of an earlier"):
        train, evals, info, md, _ = load_rank_prompts(config, build_tiny_tokenizer())
    assert len(evals) == 8 and len({e.prompt for e in evals}) == 2
    assert not {e.prompt for e in evals} & {e.prompt for e in train}
    assert info["train"]["n_duplicate_rows"] == 60 and "repeat the prompt" in md


# ---------------------------------------------------------------------------- a folder's eval files
def test_a_folder_s_eval_files_beside_its_train_files_are_its_held_out_files(tmp_path):
    from smoothalign.data.loading import held_out_files, load_preference_rows

    rows = _pair_rows(3)
    folder = tmp_path / "d"
    _write(folder / "train.jsonl", rows)
    _write(folder / "eval.jsonl", rows[:1])
    _write(folder / "test.jsonl", rows[1:])
    assert held_out_files(folder) == [folder / "eval.jsonl"]
    assert len(load_preference_rows(folder)) == 3  # train.jsonl alone, as before
    (got,) = load_preference_rows(folder, split="eval")
    assert got["_file"] == str(folder / "eval.jsonl") and got["_row"] == 0
    shards = tmp_path / "shards"
    _write(shards / "train-00000-of-00001.jsonl", rows)
    _write(shards / "validation-00000-of-00002.jsonl", rows[:1])
    _write(shards / "validation-00001-of-00002.jsonl", rows[1:2])
    assert [p.name for p in held_out_files(shards)] == [
        "validation-00000-of-00002.jsonl",
        "validation-00001-of-00002.jsonl",
    ]
    assert len(load_preference_rows(shards, split="eval")) == 2
    only_data = tmp_path / "flat"  # no train file: every file is data, none held out
    _write(only_data / "a.jsonl", rows)
    _write(only_data / "eval.jsonl", rows)
    assert held_out_files(only_data) == [] and len(load_preference_rows(only_data)) == 6
    assert held_out_files(folder / "train.jsonl") == [] and held_out_files(rows) == []
    with pytest.raises(ValueError, match="is not a folder with eval files"):
        load_preference_rows(only_data, split="eval")


def test_a_folder_with_eval_and_validation_files_is_ambiguous(tmp_path):
    from smoothalign.data.loading import held_out_files

    for name in ("train.jsonl", "eval.jsonl", "validation.jsonl"):
        _write(tmp_path / name, _pair_rows(2))
    with pytest.raises(ValueError, match="both eval and validation files .*--eval-data"):
        held_out_files(tmp_path)


def _sft_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sft"
    _write(folder / "train.jsonl", _sft_rows(10))
    _write(folder / "eval.jsonl", [{"prompt": "Held out:", "completion": " yes"}] * 1)
    return folder


def test_sft_reads_a_data_folder_s_eval_file_as_its_held_out_rows(tmp_path, tok):
    """``--data folder`` with train.jsonl and eval.jsonl: eval.jsonl was silently ignored and
    a seeded holdout drawn from train.jsonl; now eval.jsonl is the held-out set, as
    ``--eval-data folder/eval.jsonl`` would be, and the notes say so."""
    from smoothalign.sft.config import SFTConfig
    from smoothalign.sft.run import load_sft_data

    folder = _sft_folder(tmp_path)
    config = SFTConfig(model="tiny", data=str(folder), output_dir=str(tmp_path / "run"))
    train, evals, info, md, notes = load_sft_data(config, tok)
    assert len(train) == 10 and [(e.file, e.row) for e in evals] == [
        (str(folder / "eval.jsonl"), 0)
    ]
    assert info["eval"]["n_kept"] == 1 and "Eval data:" in md
    assert any(f"held-out set: eval.jsonl of the data folder {folder}" in n for n in notes)
    assert not any("holdout" in n for n in notes)

    other = _write(tmp_path / "other.jsonl", [{"prompt": "Other:", "completion": " x"}] * 1)
    config.eval_data = str(other)
    train, evals, _, _, notes = load_sft_data(config, tok)
    assert len(train) == 10 and {e.file for e in evals} == {str(other)}
    assert f"data: the folder {folder} holds eval.jsonl, not read: --eval-data given" in notes


def test_dpo_and_reward_read_a_data_folder_s_eval_file(tmp_path, tok):
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import load_reward_data
    from smoothalign.train.config import DPOConfig
    from smoothalign.train.run import _load_data, _read_data

    folder = tmp_path / "pairs"
    _write(folder / "train.jsonl", _pair_rows(10, p_chosen=0.8))
    _write(folder / "eval.jsonl", [dict(r, prompt="E" + r["prompt"]) for r in _pair_rows(2)])
    config = DPOConfig(model="tiny", data=str(folder), output_dir=str(tmp_path / "dpo"))
    rows, eval_rows, notes, option = _read_data(config)
    assert len(eval_rows) == 2 and option == "the data folder's eval.jsonl"
    train, evals, _, _, _, info = _load_data(config, tok, rows, eval_rows, option)
    assert len(train) == 10 and {e.file for e in evals} == {str(folder / "eval.jsonl")}
    assert any("held-out set: eval.jsonl" in n for n in notes)

    config = RewardConfig(model="tiny", data=str(folder), output_dir=str(tmp_path / "rm"))
    with pytest.raises(ValueError, match=r"eval.jsonl row 0, field 'p_chosen': no soft label"):
        load_reward_data(config, tok)  # held-out pairs need their labels as --eval-data's do
    _write(
        folder / "eval.jsonl",
        [dict(r, prompt="E" + r["prompt"]) for r in _pair_rows(2, p_chosen=1)],
    )
    train, evals, info, _, notes = load_reward_data(config, tok)
    assert len(train) == 10 and [e.pair.file for e in evals] == [str(folder / "eval.jsonl")] * 2
    assert any("held-out set: eval.jsonl" in n for n in notes)


def test_rank_reads_a_prompts_folder_s_eval_file(tmp_path):
    from smoothalign.models.loading import build_tiny_tokenizer
    from smoothalign.rank.config import RankConfig
    from smoothalign.rank.run import load_rank_prompts

    folder = tmp_path / "prompts"
    _write(folder / "train.jsonl", [{"prompt": f"q{i}:", "reference": "a"} for i in range(10)])
    _write(folder / "eval.jsonl", [{"prompt": "held out:"}])
    config = RankConfig(
        reward_model=str(tmp_path / "rm"), prompts=str(folder), output_dir=str(tmp_path / "run")
    )
    train, evals, info, md, notes = load_rank_prompts(config, build_tiny_tokenizer())
    assert len(train) == 10 and [e.prompt for e in evals] == ["held out:"]
    assert info["eval"]["n_kept"] == 1 and "the data folder's eval.jsonl" in md
    assert any("(--eval-prompts names another)" in n for n in notes)


def test_an_ambiguous_folder_s_advice_works_eval_data_reads_none_of_its_eval_files(tmp_path):
    """eval.* beside validation.* (or eval.jsonl beside eval.parquet) was refused even with
    --eval-data, the way out its own message gave. With it the folder's eval files are not
    read (a note says so), whatever they are; without it the refusal names the option."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smoothalign.data.loading import folder_held_out
    from smoothalign.train.config import DPOConfig
    from smoothalign.train.run import _read_data

    both = tmp_path / "both"
    for name in ("train.jsonl", "eval.jsonl", "validation.jsonl"):
        _write(both / name, _pair_rows(4))
    formats = tmp_path / "formats"
    _write(formats / "train.jsonl", _pair_rows(4))
    _write(formats / "eval.jsonl", _pair_rows(2))
    pq.write_table(pa.Table.from_pylist(_pair_rows(2)), formats / "eval.parquet")
    other = _write(tmp_path / "other.jsonl", _pair_rows(1))
    for folder, names in ((both, "eval.jsonl, validation.jsonl"),
                          (formats, "eval.jsonl, eval.parquet")):  # fmt: skip
        config = DPOConfig(model="tiny", data=str(folder), output_dir=str(tmp_path / "run"))
        with pytest.raises(ValueError, match="which is the held-out set") as err:
            _read_data(config)
        advice = f"--eval-data {folder / 'eval.jsonl'}"
        assert f"({names})" in str(err.value) and advice in str(err.value)
        for eval_data in (str(other), str(folder / "eval.jsonl")):  # the advice, taken
            config.eval_data = eval_data
            rows, eval_rows, notes, option = _read_data(config)
            assert len(rows) == 4 and option == "--eval-data"
            assert f"data: the folder {folder} holds {names}, not read: --eval-data given" in (
                notes
            )
    with pytest.raises(ValueError, match=f"--eval-prompts {both / 'eval.jsonl'}"):
        folder_held_out(both, None, eval_option="--eval-prompts", what="prompts")


def test_only_files_named_as_shards_are_a_folder_s_eval_shards(tmp_path):
    """eval-*.<ext> was read as held-out data whatever followed the dash: a stray
    eval-notes.json beside train.jsonl was held out. Only shards named as Hugging Face
    names them (eval-00000-of-00002.jsonl, or eval-0.jsonl) are."""
    from smoothalign.data.loading import held_out_files

    folder = tmp_path / "d"
    _write(folder / "train.jsonl", _pair_rows(3))
    (folder / "eval-notes.json").write_text('[{"note": "to do"}]', encoding="utf-8")
    assert held_out_files(folder) == []
    _write(folder / "validation-summary.jsonl", _pair_rows(1))
    assert held_out_files(folder) == []  # nor both eval and validation files
    _write(folder / "eval-00000-of-00002.jsonl", _pair_rows(1))
    _write(folder / "eval-00001-of-00002.jsonl", _pair_rows(1))
    _write(folder / "eval-1.jsonl", _pair_rows(1))
    assert [p.name for p in held_out_files(folder)] == [
        "eval-00000-of-00002.jsonl",
        "eval-00001-of-00002.jsonl",
        "eval-1.jsonl",
    ]


def test_reward_labels_a_data_folder_s_eval_pairs_with_eval_labels(tmp_path, tok):
    """reward --data FOLDER --labels FILE failed once the folder had eval.*: its pairs were
    the held-out set, validated without labels, --eval-labels needed --eval-data and --labels
    refuses ids not in the train data. --eval-labels now labels the folder's eval pairs, and
    the error for unlabelled ones says where they come from and how to label them."""
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import load_reward_data

    folder = tmp_path / "pairs"
    _write(folder / "train.jsonl", [dict(r, pair_id=f"t{i}") for i, r in enumerate(_pair_rows(8))])
    held = [dict(r, prompt="E" + r["prompt"], pair_id=f"e{i}") for i, r in enumerate(_pair_rows(2))]
    _write(folder / "eval.jsonl", held)
    labels = _write(
        tmp_path / "labels.jsonl", [{"pair_id": f"t{i}", "p_chosen": 0.8} for i in range(8)]
    )
    eval_labels = _write(tmp_path / "eval_labels.jsonl", [{"pair_id": "e0", "p_chosen": 0.7},
                                                          {"pair_id": "e1", "p_chosen": 0.6}])  # fmt: skip
    config = RewardConfig(
        model="tiny", data=str(folder), labels=str(labels), output_dir=str(tmp_path / "rm")
    )
    with pytest.raises(
        ValueError, match="eval.jsonl row 0, field 'p_chosen': no soft label"
    ) as err:
        load_reward_data(config, tok)
    said = str(err.value)
    assert "the data folder's eval.jsonl (read as the held-out set" in said
    assert "--eval-labels FILE" in said and "--eval-data" in said

    config = RewardConfig(
        model="tiny", data=str(folder), labels=str(labels), eval_labels=str(eval_labels),
        output_dir=str(tmp_path / "rm"),
    )  # fmt: skip
    train, evals, info, _, notes = load_reward_data(config, tok)
    assert len(train) == 8 and [e.p_chosen for e in evals] == [0.7, 0.6]
    assert [e.pair.file for e in evals] == [str(folder / "eval.jsonl")] * 2
    assert any("held-out set: eval.jsonl" in n for n in notes)

    with pytest.raises(ValueError, match="eval_labels: .*needs eval_data, or a data folder"):
        RewardConfig(model="tiny", data=str(folder / "train.jsonl"), labels=str(labels),
                     eval_labels=str(eval_labels))  # fmt: skip


def test_one_labels_file_labels_the_training_and_the_held_out_pairs(tmp_path, tok):
    """reward --data FOLDER --labels FILE, the file labelling the folder's eval pairs too,
    failed: its eval ids were 'no pair with id ... in the data', and the labels had to be
    split into --labels and --eval-labels. Without --eval-labels, --labels now serves both
    sides, each labels row joined to the pair of its id, whichever side holds it."""
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import load_reward_data

    folder = tmp_path / "pairs"
    _write(folder / "train.jsonl", [dict(r, pair_id=f"t{i}") for i, r in enumerate(_pair_rows(8))])
    held = [dict(r, prompt="E" + r["prompt"], pair_id=f"e{i}") for i, r in enumerate(_pair_rows(3))]
    _write(folder / "eval.jsonl", held)
    label_rows = [{"pair_id": f"t{i}", "p_chosen": 0.1 * i} for i in range(8)]
    label_rows += [{"pair_id": "e0", "p_chosen": 0.7}, {"pair_id": "e2", "p_chosen": 0.25}]
    label_rows += [{"pair_id": "e1", "vote": v} for v in (1, 1, 0)]  # long format
    labels = _write(tmp_path / "labels.jsonl", label_rows)

    def load(data=folder, labels=labels, **kw):
        config = RewardConfig(model="tiny", data=str(data), labels=str(labels),
                              output_dir=str(tmp_path / "rm"), **kw)  # fmt: skip
        return load_reward_data(config, tok)

    train, evals, info, md, notes = load()
    assert sorted((e.pair_id, e.p_chosen) for e in train) == sorted(
        (r["pair_id"], r["p_chosen"]) for r in label_rows[:8]
    )
    assert [(e.pair_id, e.p_chosen, e.votes_chosen, e.votes_total) for e in evals] == [
        ("e0", 0.7, None, None), ("e1", 2 / 3, 2, 3), ("e2", 0.25, None, None)
    ]  # fmt: skip
    assert [e.pair.file for e in evals] == [str(folder / "eval.jsonl")] * 3
    assert any(f"{labels} labels 3 held-out pairs" in n for n in notes)
    assert info["eval"]["labels_source"] == info["train"]["labels_source"] == str(labels)

    # a held-out pair labelled in its row keeps that label; the file labels the others
    held[1]["p_chosen"] = 0.4
    _write(folder / "eval.jsonl", held)
    _write(labels, [r for r in label_rows if r["pair_id"] != "e1"])
    _, evals, *_ = load()
    assert [e.p_chosen for e in evals] == [0.7, 0.4, 0.25]

    # ids in the file on neither side are refused as before, naming the labels row
    _write(labels, [*label_rows[:8], {"pair_id": "e0", "p_chosen": 0.7},
                    {"pair_id": "e2", "p_chosen": 0.2}, {"pair_id": "x9", "p_chosen": 0.5}])  # fmt: skip
    with pytest.raises(ValueError, match=r"labels\.jsonl row 10, field 'pair_id': no pair with "
                       r"id 'x9' in the data or in the held-out pairs \(the data folder's eval"):  # fmt: skip
        load()
    # a label for a pair whose row has one already: both, refused
    _write(labels, [*label_rows[:8], {"pair_id": "e0", "p_chosen": 0.7},
                    {"pair_id": "e1", "p_chosen": 0.4}, {"pair_id": "e2", "p_chosen": 0.2}])  # fmt: skip
    with pytest.raises(ValueError, match=r"labels\.jsonl row 9, field 'pair_id': labels the "
                       r"held-out pair at .*eval\.jsonl row 1, whose row has a label already"):  # fmt: skip
        load()
    # the held-out pairs the file does not name are unlabelled bad rows, as before
    _write(labels, [*label_rows[:8], {"pair_id": "e0", "p_chosen": 0.7}])
    with pytest.raises(
        ValueError, match=r"eval\.jsonl row 2, field 'p_chosen': no soft label"
    ) as e:
        load()
    assert "label them in their rows, in the --labels file, or in a file" in str(e.value)

    # the same with --eval-data: a file of held-out pairs beside a train file
    _write(labels, label_rows)
    del held[1]["p_chosen"]
    eval_file = _write(tmp_path / "held.jsonl", held)
    train, evals, *_ = load(data=folder / "train.jsonl", eval_data=str(eval_file))
    assert len(train) == 8 and [e.p_chosen for e in evals] == [0.7, 2 / 3, 0.25]

    # training and held-out pairs sharing ids: which one a label is for cannot be told
    _write(folder / "eval.jsonl", [dict(r, pair_id=f"t{i}") for i, r in enumerate(held)])
    with pytest.raises(ValueError, match=r"row 0, field 'pair_id': 't0' names a training "
                       r"pair .* and a held-out one .*--eval-labels"):  # fmt: skip
        load()
    # ... unless the held-out pairs carry their labels in their rows, as they could before
    _write(folder / "eval.jsonl",
           [dict(r, pair_id=f"t{i}", p_chosen=0.5) for i, r in enumerate(held)])  # fmt: skip
    _write(labels, label_rows[:8])
    train, evals, *_ = load()
    assert [e.p_chosen for e in train][:3] == [0.0, 0.1, 0.2]
    assert [e.p_chosen for e in evals] == [0.5, 0.5, 0.5]


def test_a_holdout_note_gives_its_counts_and_a_share_moved_by_copies_is_warned_of():
    """9 distinct rows and one row given 91 times: the 10% holdout of the 10 distinct rows
    may draw the repeated one, holding out 91 of 100 rows while the note said 'a seeded 10%
    holdout'. The note gives the counts, and a share past twice the fraction is warned of;
    so is one under half of it (1 of the 100 rows held out, the copies all trained on),
    which was said by no warning."""
    rows = [f"r{i}" for i in range(9)] + ["copied"] * 91
    seed = next(s for s in range(50) if "copied" in holdout(rows, 0.1, s, key_of=str)[1])
    with pytest.warns(
        UserWarning,
        match=r"holds 91 of the 100 rows \(91%, over twice the 10% asked for\).*1 of the 10",
    ):
        train, evals, notes = train_eval_split(
            rows, None, lambda r: {}, lambda r: 0, 0.1, seed, what="rows", key_of=str
        )
    assert (len(train), len(evals)) == (9, 91)
    assert (
        "train/eval split: a seeded 10% holdout of the distinct rows: 1 of 10 (91 of 100 "
        "rows with their copies)"
    ) in notes
    seed = next(s for s in range(50) if "copied" not in holdout(rows, 0.1, s, key_of=str)[1])
    with pytest.warns(UserWarning) as said:  # 1 of 100 rows held out: too few
        _, evals, notes = train_eval_split(
            rows, None, lambda r: {}, lambda r: 0, 0.1, seed, what="rows", key_of=str
        )
    assert len(evals) == 1 and "1 of 10 (1 of 100 rows with their copies)" in notes[0]
    assert (
        [str(w.message) for w in said]
        == [
            "the seeded 10% holdout holds 1 of the 100 rows (1%, under half the 10% asked for): "
            "it draws 1 of the 10 distinct rows with all their copies, and copies moved its "
            "share; drop the copies, or give the held-out rows with eval_data"  # from Python: the keyword
        ]
    )
    # rounding, not copies, sets a share near the fraction: no warning either way (2 of 16
    # distinct rows is 12.5%; with 4 copies of one training row, 2 of 19 rows is 10.5%)
    few = [f"r{i}" for i in range(15)] + ["copied"] * 4
    seed = next(s for s in range(50) if "copied" not in holdout(few, 0.1, s, key_of=str)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, evals, _ = train_eval_split(
            few, None, lambda r: {}, lambda r: 0, 0.1, seed, what="rows", key_of=str
        )
    assert len(evals) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # without copies: the rows it always drew, counted
        _, evals, notes = train_eval_split(
            list(range(20)), None, lambda r: {}, lambda r: 0, 0.1, 0, what="rows", key_of=str
        )
    assert evals == [10, 18] and notes == ["train/eval split: a seeded 10% holdout: 2 of 20 rows"]


def test_hub_shards_with_a_content_hash_are_held_out_and_stray_files_are_said(tmp_path):
    """Older `datasets` versions name hub shards train-00000-of-00001-<hash>.parquet: the
    train shard was read and the validation shard beside it silently ignored (a seeded
    holdout drawn instead). Both are read now; a file only named like a split is said to
    be unread, not dropped in silence."""
    from smoothalign.data.loading import folder_held_out, held_out_files

    folder = tmp_path / "hub"
    _write(folder / "train-00000-of-00001-1e0bc8b8e3e9e0d2.jsonl", _pair_rows(6))
    _write(folder / "validation-00000-of-00001-7a1b2c3d4e5f6a7b.jsonl", _pair_rows(2))
    assert [p.name for p in held_out_files(folder)] == [
        "validation-00000-of-00001-7a1b2c3d4e5f6a7b.jsonl"
    ]
    held = folder_held_out(folder, None)
    assert len(held.rows) == 2 and not any("not read" in n for n in held.notes)
    (folder / "eval-notes.json").write_text('[{"note": "to do"}]', encoding="utf-8")
    notes = folder_held_out(folder, None).notes
    assert any("eval-notes.json, not read" in n for n in notes), notes
