"""``smoothalign._warn``: a fallback's warning once per process; what every rank of a
data-parallel run would say alike, said by the main process only."""

from __future__ import annotations

import warnings

from smoothalign._warn import warn_main, warn_once


def _said(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_each_key_warns_once_and_points_at_the_caller():
    def fallback(name):  # a library function that warns where it falls back
        warn_once(f"falling back for {name}", key=f"test-fallback {name}")

    first = _said(lambda: [fallback("A") for _ in range(3)])
    assert first == ["falling back for A"]
    assert _said(lambda: fallback("A")) == []  # the process remembers
    assert _said(lambda: fallback("B")) == ["falling back for B"]  # another key
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_once("a message of its own", stacklevel=1)  # stacklevel 1: this line
    assert caught[0].filename == __file__


def test_the_main_process_alone_warns(monkeypatch):
    """Under torchrun (``RANK`` set) only rank 0 says it; without a launch, the process
    does. The caller's caller is pointed at, as by ``warnings.warn(stacklevel=2)``."""

    def check():  # a library check that every rank runs alike
        warn_main("the data hold something odd")

    monkeypatch.delenv("RANK", raising=False)
    assert _said(check) == ["the data hold something odd"]
    monkeypatch.setenv("RANK", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check()  # stacklevel 2: this line
    assert [w.filename for w in caught] == [__file__]
    monkeypatch.setenv("RANK", "1")
    assert _said(check) == []
    assert _said(lambda: warn_once("a fallback", key="test-fallback rank 1")) == []
    monkeypatch.setenv("RANK", "0")  # the key was seen: not said later either
    assert _said(lambda: warn_once("a fallback", key="test-fallback rank 1")) == []


def test_wrapping_a_model_in_lora_says_nothing_of_peft_s_deprecated_alias():
    """PEFT's ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing``, which
    transformers deprecated: its FutureWarning was printed by every training command with
    LoRA (dpo, sft, reward). Filtered while PEFT wraps the model, and then only: reading
    the alias ourselves is still said."""
    from types import SimpleNamespace

    from smoothalign.models.loading import build_tiny_model
    from smoothalign.reward.run import _add_lora as add_reward_lora
    from smoothalign.reward.run import build_reward_model
    from smoothalign.train.common import add_lora

    config = SimpleNamespace(lora_r=2, lora_alpha=4)
    policy = build_tiny_model()
    reward, _ = build_reward_model("tiny")
    said = _said(lambda: (add_lora(policy, config), add_reward_lora(reward, config)))
    assert not [m for m in said if "is_gradient_checkpointing" in m], said
    assert any(
        "is_gradient_checkpointing" in m for m in _said(lambda: reward.is_gradient_checkpointing)
    )


def _shown_as_python_shows_them(monkeypatch) -> None:
    """Warnings written to stderr as Python's default ``showwarning`` writes them (pytest
    records them instead): through ``warnings.formatwarning``."""
    import sys

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


def test_the_command_line_says_its_own_warnings_in_one_line(tmp_path, monkeypatch, capsys):
    """A command's data warning reads ``smoothalign dpo: warning: ...``, without Python's
    ``path/to/run.py:305: UserWarning:`` and the source line under it; a third party's
    warning keeps Python's format, and the Python API's are left as they were."""
    import json

    from smoothalign._warn import SmoothalignWarning, command_line_warnings
    from smoothalign.cli import main

    rows = [{"prompt": f"Q{i}:", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(8)]
    rows += [{"prompt": "Q:", "chosen": "a" * 20 + "b", "rejected": "a" * 20 + "c"}] * 1
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _shown_as_python_shows_them(monkeypatch)
    argv = ["dpo", "--model", "tiny", "--data", data, "--output-dir", tmp_path / "run",
            "--max-steps", 1, "--batch-size", 2, "--max-length", 12, "--no-report",
            "--no-lora", "--eval-data", data]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("always", SmoothalignWarning)
        assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "cut to fit max_length 12" in line]
    assert said, err  # the training and the held-out pairs: one line each
    assert all(line.startswith("smoothalign dpo: warning: ") for line in said), said
    assert "UserWarning" not in err and "SmoothalignWarning" not in err
    assert "validate_preference_rows(" not in err  # no source line under it

    # another's warning: Python's format, and ours too outside the command line
    with command_line_warnings("smoothalign dpo"):
        other = warnings.formatwarning("old", DeprecationWarning, "/x/lib.py", 3, "call()")
    assert other.startswith("/x/lib.py:3: DeprecationWarning: old")
    ours = warnings.formatwarning("odd data", SmoothalignWarning, "/x/run.py", 5, "check()")
    assert ours.startswith("/x/run.py:5: SmoothalignWarning: odd data")


def test_a_metrics_file_with_a_broken_record_is_read_on_and_warned_of_as_ours(tmp_path):
    """A record a crash cut short is skipped, named by its line, with smoothalign's own
    warning category (the command line prints those as one line)."""
    import json

    import pytest

    from smoothalign._warn import SmoothalignWarning
    from smoothalign.train.report import read_metrics

    path = tmp_path / "metrics.jsonl"
    good = {"step": 2, "split": "train", "loss": 0.5}
    path.write_text(json.dumps(good) + "\n" + '{"step": 4, "spl' + "\n")
    with pytest.warns(
        SmoothalignWarning, match=r"skipped 1 unreadable record\(s\) at line\(s\) \[2\]"
    ):
        assert read_metrics(path) == [good]
