"""``smoothalign eval preferences``: a policy's preference forecasts on a data file, without
training.

A pair's forecast that its labelled winner wins is ``σ(h)``, with DPO's implicit reward margin
``h = β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]`` (SPEC §1).
``smoothalign dpo`` measures these forecasts on its own eval split, before and after training;
this measures them for any policy (trained here, with TRL, or elsewhere) on any preference
file, by the same pieces: the DPO data path (load → validate with row/field errors →
tokenise → collate: ``smoothalign.data``), the same log-probs
(``trainer.model_sequence_logps``: ``objective.sequence_logps``, or the fused LM-head path on
CUDA), the same forecast loop (``trainer.pair_forecasts``), metrics
(``calibration.preference_metrics``) and reliability diagram (``report.plot_pairwise_reliability``).
It lives in ``train/`` for those: the ``eval/`` layer sits below ``train/``.

The reference and β: a smoothalign DPO run's folder (or its ``final/``) as the model brings
its own, read from the run's ``config.json`` (``model``: what the run loaded and trained from,
the base model of a LoRA run, whose ``final/`` is merged; ``beta``). Otherwise
``reference`` (``--reference``) is required, unless every pair carries precomputed reference
log-probs (``ref_chosen_logps`` / ``ref_rejected_logps`` columns), and β defaults to 0.1.
An explicit ``reference`` always wins (one source of reference log-probs for every pair). A
run's reference is as the run had it: the data's columns where the run read them (full
fine-tuning with ``reference`` auto, or ``precomputed``, and every row it trained on or held
out had them, as its data fingerprint records) and every pair scored has them, else its
model; a LoRA run with ``auto`` never reads the columns.

The rows scored (:func:`select_rows`, ``--split``): by default a data folder's held-out
files (or the rows a ``split`` column marks ``eval``), as ``dpo`` holds them out, else every
row; ``train`` and ``all`` read the others. With a run folder as the model and the data
it read, ``eval`` and ``auto`` score the rows its ``split.json`` held out, and rows it
trained on are counted where they are scored. The summary, the notes and ``metrics.json``
say which. From Python the data may be the rows themselves (a list of dicts, as ``run_dpo``
takes them): read as a file is, named by their index in the list (``file`` null); a run
given a list is matched to a list given here by index where it is that list
(:func:`select_rows`).

Files written into ``output_dir`` (each atomically): ``metrics.json`` (the metrics, the
counts, what was skipped, the model, reference and β used and where each came from),
``forecasts.jsonl`` (one line per pair: ``row`` (0-based, in its file, or in the list of
rows handed over from Python) and ``file`` (its name; null for a list's row), ``margin`` h, ``forecast`` σ(h), ``label`` (1: the data's label, the chosen
response won), ``confidence`` where the data gives one), ``reliability.png``, ``report.md``
and ``validation.json`` (every bad or skipped row).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothalign._checks import ON_BAD_ROWS, PRECISIONS, check_finite_fields, check_ranges, words
from smoothalign.io import config_to_dict

DEFAULT_OUTPUT_DIR = "outputs/eval_preferences"
DEFAULT_BETA = 0.1
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # the data's reference log-probs
SPLITS = ("auto", "eval", "train", "all")
SUMMARY_KEYS = ("accuracy", "accuracy_true", "ece", "rms", "ece_true", "kl_true", "margin_mean")


@dataclass
class PreferenceEvalConfig:
    """What ``smoothalign eval preferences`` evaluates, and how (the CLI's options).

    ``reference``, ``beta`` and ``max_length`` left as None are the run's where ``model`` is
    a smoothalign DPO run folder (or its ``final/``), else: the data's reference log-probs
    (every pair must carry them; otherwise ``reference`` is required), β = 0.1, and
    ``dpo``'s default max length.

    ``data``: a file or folder, or the rows themselves (a list or tuple of dicts, as a file
    holds them), as ``run_dpo`` takes them; ``split`` reads such a list as it reads a file
    (its ``split`` column), and messages, ``validation.json`` and ``forecasts.jsonl`` name
    its rows by their 0-based index in it, ``file`` null (:func:`select_rows` says how a
    run's held-out rows are found in it)."""

    model: str
    # a file or folder, or the rows themselves (a list or tuple of dicts, as a file holds
    # them: run_dpo's data=rows), named by their 0-based index in it (file null)
    data: str | os.PathLike | list[dict[str, Any]] | tuple[dict[str, Any], ...]
    reference: str | None = None
    beta: float | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    batch_size: int = 8
    max_length: int | None = None
    max_pairs: int = 0  # 0: every pair
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32 | bf16
    on_bad_rows: str = "error"
    trust_remote_code: bool = False
    # which rows of the data are scored (:func:`select_rows`): auto is the held-out rows
    # where the data marks some (a folder's eval files, a split column), else every row
    split: str = "auto"

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if not isinstance(self.model, str | os.PathLike) or not os.fspath(self.model).strip():
            raise ValueError(f"model: expected a model name or path, got {self.model!r}")
        if isinstance(self.data, list | tuple):
            if not self.data:
                raise ValueError("data: the list of rows is empty")
        elif not isinstance(self.data, str | os.PathLike) or not os.fspath(self.data).strip():
            raise ValueError(
                "data: expected a file or folder, or the rows as a list of dicts, got "
                f"{_short(self.data)}"
            )
        if self.beta is not None and (
            isinstance(self.beta, bool)
            or not isinstance(self.beta, int | float)
            or not math.isfinite(self.beta)
        ):
            raise ValueError(f"beta: must be a finite number > 0, got {self.beta!r}")
        checks = {
            "beta": (self.beta is None or self.beta > 0, "> 0"),
            "batch_size": (self.batch_size > 0, "> 0"),
            "max_length": (self.max_length is None or self.max_length > 1, "> 1"),
            "max_pairs": (self.max_pairs >= 0, ">= 0 (0: every pair)"),
        }
        check_ranges(self, checks)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r}; choose {words(PRECISIONS)}")
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows: {self.on_bad_rows!r}; choose {words(ON_BAD_ROWS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split: {self.split!r}; choose one of {', '.join(SPLITS)}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


@dataclass
class PreferenceEvalResult:
    """What :func:`evaluate_preferences` found: the metrics (``preference_metrics``), the
    forecasts (``margins``, ``confidence``, ``index`` ``[N]``, in data order), the pairs
    scored, the reference and β used, and the notes of the report."""

    output_dir: Path
    metrics: dict[str, float]
    forecasts: dict[str, np.ndarray] = field(repr=False)
    n_pairs: int
    n_skipped: int
    reference: str
    beta: float
    notes: list[str]
    split: str = "all"  # the rows scored (SelectedRows.split) and what they were
    split_note: str = ""

    def summary(self) -> str:
        rows = [
            f"smoothalign eval preferences: {self.n_pairs} pairs ({self.n_skipped} skipped), "
            f"β {self.beta:g}, reference {self.reference}"
        ]
        if self.split_note:
            rows.append(f"  {self.split_note}")
        rows += [
            f"  {key:<14} {self.metrics[key]:8.4f}" for key in SUMMARY_KEYS if key in self.metrics
        ]
        rows.append(
            f"wrote {self.output_dir}/metrics.json, forecasts.jsonl, reliability.png, "
            "report.md, validation.json"
        )
        return "\n".join(rows)


@dataclass
class _Choice:
    """A resolved setting (the reference, β or max length): its value and where it came from."""

    value: Any
    source: str  # "option", "run", "data" or "default"
    note: str
    # the reference of a run that read the data's columns where every pair had them: the
    # columns where every pair scored has them, else the run's model (settled after the rows
    # are validated: _settle_reference)
    data_first: bool = False


def evaluate_preferences(config: PreferenceEvalConfig) -> PreferenceEvalResult:
    """Score ``config.model``'s forecasts on ``config.data`` and write the outputs.

    Checks come before work, as in the other commands: the options, the output folder and
    the model names first, then the data file, where the reference is settled (a missing
    ``reference`` is refused before any model loads), then the rows, before the weights
    where the tokenizer can be read on its own."""
    from smoothalign.experiments.study_dir import check_not_a_study_folder
    from smoothalign.io import check_not_a_run_or_model, check_output_dir
    from smoothalign.models.loading import check_model_name, run_of_model

    t_start = time.perf_counter()
    out = check_output_dir(config.output_dir)
    files = "validation.json, report.md, reliability.png, ..."
    check_not_a_run_or_model(out, files)
    check_not_a_study_folder(out, files)  # its table.md and figures mixed with ours
    check_model_name(config.model)
    if config.reference is not None:
        try:
            check_model_name(config.reference)
        except ValueError as e:  # its message says "model": name the option
            raise ValueError(f"--reference: {e}") from None
    found = run_of_model(config.model)
    run = _dpo_run(config.model, found)
    beta = _beta(config, run)
    max_length = _max_length(config, run)

    selected = select_rows(config.data, config.split, run=found)
    reference = _reference(config, run, selected.rows)
    return _evaluate(config, out, selected, run, reference, beta, max_length, t_start)


@dataclass(frozen=True)
class SelectedRows:
    """The rows of the data that :func:`select_rows` picked to score.

    ``split``: ``"eval"``, ``"train"`` or ``"all"``, as read; ``note``: what they are and
    why (``--split auto`` saying what it chose); ``check_split``: the rows come from a
    ``split`` column, whose every row must say train or eval (validation's ``bad_split``);
    ``notes``: what else the report says of the data's files (a file not read)."""

    rows: list[dict[str, Any]]
    split: str
    note: str
    check_split: bool = False
    notes: tuple[str, ...] = ()


def select_rows(
    data: Any, split: str = "auto", run: tuple[Path, dict[str, Any]] | None = None
) -> SelectedRows:
    """The rows of ``data`` that ``eval preferences --split`` scores, loaded, not validated.

    ``run``: ``(folder, options)`` where the model is a smoothalign run's
    (``models.loading.run_of_model``). Its ``split.json`` lists the rows it held out
    (``train.common.split_record``): where every one of them is a row of ``data`` (the same
    files, paths resolved, the run's against its ``working_dir``), ``eval`` and ``auto``
    score exactly those, whatever the data marks; else (no ``split.json``, other files)
    the data decides, as below. Rows scored that the run trained on (its ``--data``'s, not
    held out) are counted in a note and a warning (``--split train`` or ``all``, or data
    that marks no held-out rows).

    ``data`` may be the rows themselves (a list or tuple of dicts, as ``run_dpo`` takes
    them): read as one file is, its rows named by their 0-based index in it. A run given
    such a list (``run_dpo(data=rows)``) names its held-out rows by that index, ``file``
    null; they are found in a list given here where that is the same list: the run held out
    rows of its ``data`` (``held_out_from``: ``--data``, not an ``eval_data`` list) and
    the list has as many rows as the run's (its ``config.json``: ``<builtins.list of N
    rows>``): rows are matched by index, so it must be the same rows in the same order,
    which only their count checks. Where the run's rows and the data given cannot be
    matched so (the run read a file and a list is given, or the other way round; a list of
    another length; held-out rows of an ``eval_data`` list), the data decides, as for
    other files, and a note (and a warning) says why.

    * ``eval``: the held-out rows: a data folder's ``eval.*`` / ``validation.*`` files
      beside its train files (as ``dpo`` reads them), else the rows whose ``split`` column
      says ``eval``; data that marks none is refused;
    * ``train``: the rows ``dpo`` trains on: a file, or a folder's train files (all its
      files where it has none), less the rows a ``split`` column marks ``eval``;
    * ``all``: every row: a folder's train files and its held-out files, any ``split``
      column not read;
    * ``auto`` (the default): ``eval`` where the data marks held-out rows, else ``all``
      (a file of pairs to score, say).

    Raises:
        ValueError: no held-out rows for ``eval``, no row of the split asked for, an
            ambiguous folder (:func:`smoothalign.data.loading.held_out_files`), or no rows.
    """

    if split not in SPLITS:
        raise ValueError(f"split: {split!r}; choose one of {', '.join(SPLITS)}")
    how = f"--split {split}" if split != "auto" else "--split auto, the default"
    run_split = _run_split(run)
    unmatched = None if run_split is None else _unmatched(data, run_split)
    if run_split is not None and split in ("auto", "eval") and run_split.held_out:
        chosen = None if unmatched else _run_held_out(data, run_split, how)
        if chosen is not None:
            return chosen
    else:
        unmatched = None  # the run's held-out rows are not looked for: nothing to say
    try:
        selected = _select_rows(data, split, how)
    except ValueError as e:
        if unmatched:
            raise ValueError(f"{e} ({unmatched})") from None
        raise
    if unmatched:
        from smoothalign._warn import warn_main

        warn_main(unmatched, stacklevel=3)
        selected = dataclasses.replace(selected, notes=(*selected.notes, unmatched))
    return _note_trained(selected, run, run_split, same_list=_same_list(data, run_split))


def _select_rows(data: Any, split: str, how: str) -> SelectedRows:
    """:func:`select_rows` by what the data marks."""
    from smoothalign.data import load_preference_rows
    from smoothalign.data.loading import folder_held_out, has_held_out_files
    from smoothalign.data.validation import has_split_column

    folder = has_held_out_files(data)
    if folder and split in ("auto", "eval"):
        held = folder_held_out(data, None, eval_option="--data")
        assert held.rows is not None  # a folder with held-out files: they are read
        return SelectedRows(
            held.rows,
            "eval",
            f"split: eval ({how}): {held.option}, the held-out rows beside the data "
            "folder's train files (--split train or all reads those)",
            notes=tuple(held.notes[1:]),  # [0] names the held-out set, as the note above
        )
    rows = load_preference_rows(data, option="data")  # a missing path names --data
    if folder and split == "all":  # (an ambiguous folder's message names --data)
        rows += folder_held_out(data, None, eval_option="--data").rows or []
    name = _data_name(data)
    if not rows:
        raise ValueError(f"data: {name} holds no rows")
    column = has_split_column(rows) and split != "all"
    if split == "eval" and not column:
        raise ValueError(
            f"split: eval, but {name} marks no held-out rows (no eval.* or validation.* files "
            "beside train files in a folder, no 'split' column): give the held-out pairs as "
            "--data, or pass --split all to score every row"
        )
    if split == "auto":
        split = "eval" if column else "all"
    if split == "all":
        what = "the folder's train and held-out files" if folder else "the data"
        marked = " (its 'split' column not read)" if has_split_column(rows) else ""
        unmarked = "" if folder or has_split_column(rows) else ", which marks no held-out rows"
        return SelectedRows(rows, "all", f"split: all ({how}): every row of {what}"
                            f"{marked}{unmarked}")  # fmt: skip
    if not column:  # train, without a split column: every row dpo would read
        what = "the data folder's train files" if folder else "the data"
        return SelectedRows(rows, "train", f"split: train ({how}): every row of {what}")
    # a split column: its rows of the split asked for, and any with a bad value (validation
    # names those as bad_split rows)
    other = "train" if split == "eval" else "eval"
    chosen = [r for r in rows if not isinstance(r, Mapping) or r.get("split") != other]
    n_split = sum(isinstance(r, Mapping) and r.get("split") == split for r in rows)
    if not n_split:
        raise ValueError(
            f"split: {split}, but no row of {name} has split {split!r} in its 'split' column; "
            "pass --split all to score every row"
        )
    return SelectedRows(
        chosen,
        split,
        f"split: {split} ({how}): the {n_split} rows of {len(rows)} whose 'split' column "
        f"says {split!r}",
        check_split=True,
    )


@dataclass(frozen=True)
class _RunSplit:
    """A run's ``split.json``, its rows keyed by ``(resolved file, row)`` (file ``None``:
    rows handed over as a list, by their index there): ``held_out``, ``skipped``, the bad
    rows its ``validation.json`` lists (the run skipped them), and ``data``, the run's
    ``--data`` resolved (the rows it trained on are its rows that are neither held out nor
    skipped), ``None`` where it read rows handed over, whose count ``data_rows`` is (from
    its ``config.json``: ``<builtins.list of N rows>``)."""

    folder: Path
    record: dict[str, Any]
    held_out: list[tuple[str | None, int]]
    data: str | None
    skipped: frozenset[tuple[str | None, int]] = frozenset()
    data_rows: int | None = None

    @property
    def by_index(self) -> bool:
        """Whether its held-out rows are a list's, by index (``file`` null): else files'."""
        return bool(self.held_out) and self.held_out[0][0] is None


def _resolved(file: Any, base: str | os.PathLike = ".") -> str:
    return str((Path(base) / Path(os.fspath(file)).expanduser()).resolve())


def _row_key(row: Any) -> tuple[str | None, int] | None:
    """A loaded row's key: ``(resolved file, row)``, ``(None, index)`` for a row of a list."""
    from smoothalign.data.loading import FILE_KEY, ROW_KEY

    if not isinstance(row, Mapping) or ROW_KEY not in row:
        return None
    file = row.get(FILE_KEY)
    return (_resolved(file) if file else None), row[ROW_KEY]


def _is_rows(data: Any) -> bool:
    """Whether ``data`` is the rows themselves (a list or tuple), not a path."""
    return isinstance(data, list | tuple)


def _data_name(data: Any) -> str:
    """How messages name the data: its path, or ``the list of 5 rows``."""
    if _is_rows(data):
        return f"the {type(data).__name__} of {len(data)} rows"
    return os.fspath(data)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_HANDED_OVER = re.compile(r"<[\w.]+ of (\d+) rows>")  # config_to_dict's description of rows


def _unmatched(data: Any, run_split: _RunSplit) -> str | None:
    """Why the run's held-out rows (its ``split.json``) cannot be looked for in ``data``,
    where they cannot: rows of a list named by index against a file, or the other way
    round, or a list that is not the run's (:func:`select_rows`); else None."""
    if not run_split.held_out:
        return None
    run = f"the run {run_split.folder}"
    decides = "the data decides which rows are scored"
    if run_split.by_index and not _is_rows(data):
        return (
            f"{run} held out rows of a list handed over from Python, which its split.json "
            f"names by index (file null): they are not looked for in {data}; {decides} "
            "(pass the same rows as a list from Python to score its held-out rows)"
        )
    if not run_split.by_index and _is_rows(data):
        files = sorted({Path(f).name for f, _ in run_split.held_out if f})
        return (
            f"{run}'s split.json names its held-out rows by file ({', '.join(files)}), and "
            f"rows given as a list come from no file: {decides} (pass that file as data to "
            "score its held-out rows)"
        )
    if not run_split.by_index:
        return None  # files: matched by path (_run_held_out)
    if run_split.record.get("held_out_from") != "--data":
        return (
            f"{run}'s split.json names its held-out rows by index in a list other than its "
            f"data (held out from {run_split.record.get('held_out_from') or 'an unnamed set'}"
            f"): which list {_data_name(data)} is, is not known; {decides}"
        )
    if run_split.data_rows != len(data):
        had = "a list" if run_split.data_rows is None else f"a list of {run_split.data_rows}"
        return (
            f"{run} trained on {had} rows, whose held-out rows its split.json names by index, "
            f"and {_data_name(data)} is not that list: {decides} (pass the same rows, in the "
            "same order, to score its held-out rows)"
        )
    return None


def _same_list(data: Any, run_split: _RunSplit | None) -> bool:
    """Whether ``data`` is taken for the list of rows the run trained on: a list, and the
    run's held-out rows were matched to it by index (:func:`_unmatched`)."""
    return (
        run_split is not None
        and _is_rows(data)
        and run_split.data is None
        and run_split.data_rows == len(data)
        and run_split.record.get("held_out_from") == "--data"
        and (not run_split.held_out or run_split.by_index)
    )


def _run_split(run: tuple[Path, dict[str, Any]] | None) -> _RunSplit | None:
    """The run's ``split.json``, or None: no run, no such file, or one that is unreadable
    (or names some rows by file and others by none: rows handed over as a list)."""
    from smoothalign.train.common import SPLIT_FILE

    if run is None:
        return None
    folder, options = run
    try:
        record = json.loads((folder / SPLIT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    held = record.get("held_out") if isinstance(record, dict) else None
    if not isinstance(held, list):
        return None
    base = options.get("working_dir") or "."
    keys = []
    for entry in held:
        file = entry.get("file", "") if isinstance(entry, dict) else ""
        row = entry.get("row") if isinstance(entry, dict) else None
        if not (file is None or isinstance(file, str) and file):
            return None
        if not isinstance(row, int) or isinstance(row, bool):
            return None
        keys.append((None if file is None else _resolved(file, base), row))
    if len({file is None for file, _ in keys}) > 1:
        return None
    data, data_rows = options.get("data"), None
    handed_over = _HANDED_OVER.fullmatch(data) if isinstance(data, str) else None
    if handed_over:  # rows handed over from Python (config.json describes them)
        data, data_rows = None, int(handed_over.group(1))
    data = _resolved(data, base) if isinstance(data, str) else None
    return _RunSplit(folder, record, keys, data, _run_skipped(folder, base), data_rows)


def _run_skipped(folder: Path, base: str | os.PathLike) -> frozenset[tuple[str | None, int]]:
    """The rows a run skipped as bad, keyed as :class:`_RunSplit`'s: every part's
    ``bad_rows`` in its ``validation.json`` (a run that kept a bad row refused instead),
    file ``None`` for rows of a list; none where the file is missing or unreadable."""
    try:
        validation = json.loads((folder / "validation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    parts = validation.values() if isinstance(validation, dict) else ()
    keys = set()
    for part in parts:
        bad = part.get("bad_rows") if isinstance(part, dict) else None
        for entry in bad if isinstance(bad, list) else ():
            file = entry.get("file") if isinstance(entry, dict) else None
            row = entry.get("row") if isinstance(entry, dict) else None
            if not isinstance(row, int) or isinstance(row, bool):
                continue
            if file is None:
                keys.add((None, row))
            elif isinstance(file, str) and file:
                keys.add((_resolved(file, base), row))
    return frozenset(keys)


def _every_row(data: Any) -> list[dict[str, Any]]:
    """Every row of ``data`` (``--split all``'s): a folder's train and held-out files."""
    from smoothalign.data import load_preference_rows
    from smoothalign.data.loading import folder_held_out, has_held_out_files

    rows = load_preference_rows(data, option="data")  # a missing path names --data
    if has_held_out_files(data):
        rows += folder_held_out(data, None, eval_option="--data").rows or []
    return rows


def _run_held_out(data: Any, run_split: _RunSplit, how: str) -> SelectedRows | None:
    """The rows of ``data`` that the run held out (its ``split.json``), in the data's
    order, where every one of them is there; else None."""
    held = set(run_split.held_out)
    if not held:
        return None
    try:
        rows = _every_row(data)
    except (OSError, ValueError):  # the data's own selection says what is wrong
        return None
    chosen = [r for r in rows if _row_key(r) in held]
    if len({_row_key(r) for r in chosen}) != len(held):  # other files, or rows missing
        return None
    record = run_split.record
    made = record.get("split")
    n_scored = record.get("n_scored")
    notes = ()
    if isinstance(n_scored, int) and n_scored < len(held):
        notes = (
            f"the run's own held-out metrics scored the first {n_scored} of these "
            f"({record.get('scored_limit') or 'a limit'}); all {len(held)} are scored here",
        )
    return SelectedRows(
        chosen,
        "eval",
        f"split: eval ({how}): the {len(chosen)} rows the run {run_split.folder} held out "
        f"({made or 'its split'}), as its split.json lists them, of the {len(rows)} rows of "
        f"{'the list' if _is_rows(data) else data} (--split all or train reads the others)",
        notes=notes,
    )


def _note_trained(
    selected: SelectedRows,
    run: tuple[Path, dict[str, Any]] | None,
    run_split: _RunSplit | None,
    same_list: bool = False,
) -> SelectedRows:
    """``selected`` with a note (and a warning) counting the rows among them that the run
    trained on: rows of its ``--data`` that its ``split.json`` does not list as held out and
    its ``validation.json`` does not list as skipped (``same_list``: the data is the list of
    rows the run trained on, by index: :func:`_same_list`)."""
    if run_split is None or (run_split.data is None and not same_list):
        return selected
    from smoothalign._warn import warn_main

    not_trained = set(run_split.held_out) | run_split.skipped
    data = None if run_split.data is None else Path(run_split.data)

    def trained(row: Any) -> bool:
        key = _row_key(row)
        if key is None or key in not_trained:
            return False
        if key[0] is None or data is None:
            return same_list and key[0] is None
        file = Path(key[0])
        return file == data or file.parent == data  # the run's file, or its folder's

    n = sum(trained(r) for r in selected.rows)
    if not n:
        return selected
    note = (
        f"{n} of the {len(selected.rows)} rows scored are rows the run {run_split.folder} "
        "trained on (its --data, neither held out in its split.json nor skipped in its "
        "validation.json): their metrics are not held-out metrics"
    )
    warn_main(note, stacklevel=4)
    return dataclasses.replace(selected, notes=(*selected.notes, note))


# ---------------------------------------------------------------------------- settings
def _dpo_run(model: str, found: tuple[Path, dict[str, Any]] | None) -> tuple[Path, dict] | None:
    """The run folder and options where ``model`` is a DPO run's (its options have a β and a
    reference); a run of another kind (``sft``, ``reward``) brings no reference: None."""
    if found is None:
        return None
    folder, record = found
    return (folder, record) if "beta" in record and "reference" in record else None


def _run_model(record: dict[str, Any]) -> str:
    """The model a run loaded (its ``config.json``'s ``model``), a relative path read against
    the folder it was launched from (``working_dir``) where it exists there."""
    name = record.get("model")
    if not isinstance(name, str) or not name:
        raise ValueError(f"reference: the run's config.json names no model ({name!r})")
    from smoothalign.models.loading import BUILTIN_MODELS

    if name in BUILTIN_MODELS:  # loaded by name, whatever folder of that name is about
        return name
    path = Path(name).expanduser()
    base = record.get("working_dir")
    if not path.is_absolute() and base and (Path(base) / path).exists():
        return str(Path(base) / path)
    return name


def _beta(config: PreferenceEvalConfig, run) -> _Choice:
    if config.beta is not None:
        return _Choice(float(config.beta), "option", f"β {config.beta:g} (--beta)")
    if run is not None:
        value = float(run[1]["beta"])
        return _Choice(value, "run", f"β {value:g}: the DPO run's ({run[0]}/config.json)")
    return _Choice(DEFAULT_BETA, "default", f"β {DEFAULT_BETA:g} (the default; --beta sets it)")


def _max_length(config: PreferenceEvalConfig, run) -> _Choice:
    if config.max_length is not None:
        return _Choice(
            config.max_length, "option", f"max length {config.max_length} (--max-length)"
        )
    if run is not None and isinstance(run[1].get("max_length"), int):
        value = run[1]["max_length"]
        return _Choice(value, "run", f"max length {value}: the DPO run's")
    from smoothalign.train.config import DPOConfig

    value = next(f.default for f in dataclasses.fields(DPOConfig) if f.name == "max_length")
    return _Choice(value, "default", f"max length {value} (dpo's default; --max-length sets it)")


def _any_row_has_ref_logps(rows: list[Any]) -> bool:
    return any(
        isinstance(r, Mapping) and any(r.get(k) is not None for k in REF_COLUMNS) for r in rows
    )


def _run_reads_columns(record: dict[str, Any]) -> bool:
    """Whether a DPO run read the data's reference columns (where every pair had them):
    ``--reference precomputed``, or ``auto`` without LoRA (``train.run``); with LoRA, ``auto``
    is the adapter-disabled model, and ``model`` a frozen copy: the columns unread."""
    return record.get("reference") == "precomputed" or (
        record.get("reference") == "auto" and not record.get("lora")
    )


def _run_read_data_reference(folder: Path) -> bool | None:
    """Whether a DPO run read its data's reference log-probs, as its data fingerprint
    records it (the fields it read of every held-out pair): ``dpo`` decides that over every
    training and held-out row it kept, so a subset scored here (``--split``,
    ``--max-pairs``) cannot decide it otherwise. None where the run records no such
    fingerprint (an earlier version's run)."""
    from smoothalign.train.data_fingerprint import DATA_FINGERPRINT, REFERENCE_LOGPS

    try:
        record = json.loads((folder / DATA_FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    held_out = record.get("held_out") if isinstance(record, dict) else None
    reads = held_out.get("reads") if isinstance(held_out, dict) else None
    return REFERENCE_LOGPS[0] in reads if isinstance(reads, list) else None


def _reference(config: PreferenceEvalConfig, run, rows: list[Any]) -> _Choice:
    """Where the reference log-probs come from: ``--reference`` (a model); else as the DPO run
    had them (its model, or the data's columns where the run read them, as its data
    fingerprint records, and every pair scored has them: :func:`_settle_reference`); else
    the data's columns, which every pair scored must then have (checked once the rows are
    validated; rows not scored need none: there is no run whose choice to follow); else
    refused."""
    from smoothalign.models.loading import check_model_name

    if config.reference is not None:
        return _Choice(config.reference, "option", f"reference: {config.reference} (--reference)")
    if run is not None:
        model = _run_model(run[1])
        try:
            check_model_name(model)
        except ValueError as e:
            raise ValueError(
                f"reference: the model the DPO run {run[0]} trained from, {model!r} (its "
                f"config.json), is not found ({e}); pass it as --reference"
            ) from None
        lora = "; a LoRA run: final/ is the adapter merged into it" if run[1].get("lora") else ""
        reads = _run_reads_columns(run[1])
        why = f"--reference {run[1].get('reference')}" + (", LoRA" if run[1].get("lora") else "")
        if reads and _run_read_data_reference(run[0]) is False:
            reads, why = False, "not every row it trained on or held out had them"
        columns = (
            ""
            if reads or not _any_row_has_ref_logps(rows)
            else "; the data's ref_chosen_logps / ref_rejected_logps are not read, as the run "
            f"did not read them ({why})"
        )
        return _Choice(
            model,
            "run",
            f"reference: {model}, the model the DPO run {run[0]} trained from (its "
            f"config.json{lora}){columns}",
            data_first=reads,
        )
    if _any_row_has_ref_logps(rows):
        return _Choice(
            None,
            "data",
            "reference log-probs: the data's ref_chosen_logps / ref_rejected_logps, which "
            "every pair scored must have (rows not scored need none)",
        )
    raise ValueError(
        f"reference: {config.model!r} is not a smoothalign DPO run folder, so its reference "
        "model is not known: pass the model the policy was trained from as --reference (or "
        "give every row of the data ref_chosen_logps / ref_rejected_logps)"
    )


def _settle_reference(reference: _Choice, examples: list) -> _Choice:
    """A run's reference that read the data's columns (``data_first``), once the pairs to
    score are known: the columns where every one of them has its own, as the run read them,
    else the run's model (the model those columns were computed with)."""
    if not reference.data_first:
        return reference
    if examples and all(ex.ref_chosen_logp is not None for ex in examples):
        return _Choice(
            None,
            "run",
            "reference log-probs: the data's ref_chosen_logps / ref_rejected_logps, as the DPO "
            f"run read them (it trained from {reference.value}, --reference "
            "precomputed or auto without LoRA)",
        )
    given = sum(ex.ref_chosen_logp is not None for ex in examples)
    extra = (
        f"; the data's reference log-probs ({given} of {len(examples)} pairs) are not read: "
        "not every pair has its own, and the run reads them only where every pair does"
        if given
        else ""
    )
    return dataclasses.replace(reference, note=reference.note + extra, data_first=False)


# ---------------------------------------------------------------------------- the work
def _evaluate(
    config: PreferenceEvalConfig,
    out: Path,
    selected: SelectedRows,
    run,
    reference: _Choice,
    beta: _Choice,
    max_length: _Choice,
    t_start: float,
) -> PreferenceEvalResult:
    from smoothalign.calibration import pairwise_reliability_curve, preference_metrics
    from smoothalign.data import PreferenceCollator, validate_preference_rows
    from smoothalign.io import atomic_write_json, atomic_write_text, save_figure
    from smoothalign.models import describe_model, load_model_and_tokenizer
    from smoothalign.models.loading import loaded_model_path
    from smoothalign.train.common import (
        check_identical_after_truncation,
        load_checked,
        resolve_bf16,
    )
    from smoothalign.train.report import plot_pairwise_reliability
    from smoothalign.train.trainer import fused_logps_enabled

    notes = [f"model: {config.model}" + _loads(config.model, loaded_model_path(config.model))]
    notes += [selected.note, *selected.notes]
    bf16 = resolve_bf16(config.precision)

    def check(tokenizer):  # before the weights load where the tokenizer loads on its own
        report = validate_preference_rows(
            selected.rows,
            tokenizer,
            max_length.value,
            config.on_bad_rows,
            held_out=selected.split == "eval",  # what the console's warnings call them
            check_split=selected.check_split,
        )
        check_identical_after_truncation([], {"data": report}, max_length.value)  # warns only
        nonlocal reference
        examples = list(report.examples)
        if config.max_pairs and len(examples) > config.max_pairs:
            examples = examples[: config.max_pairs]
        reference = _settle_reference(reference, examples)
        _check_data_reference(reference, examples, report)
        return report, examples

    t0 = time.perf_counter()
    policy, tokenizer, (report, examples) = load_checked(
        config.model,
        config.trust_remote_code,
        check,
        lambda tok: load_model_and_tokenizer(
            config.model, trust_remote_code=config.trust_remote_code, tokenizer=tok
        ),
    )
    n_kept = report.n_kept
    if len(examples) < n_kept:
        notes.append(f"the first {len(examples)} of {n_kept} pairs (--max-pairs)")
    notes += [reference.note, beta.note, max_length.note]  # the reference as settled
    ref_model = _reference_model(config, reference, examples, tokenizer, notes)
    load_s = time.perf_counter() - t0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fused = fused_logps_enabled("auto", device)
    notes.append(
        f"{device.type.upper()}, {'bf16 autocast' if bf16 else 'fp32'}, "
        f"{'fused LM-head' if fused else 'materialised-logits'} log-probs"
    )
    t0 = time.perf_counter()
    forecasts = score_pairs(
        policy,
        ref_model,
        examples,
        PreferenceCollator(pad_token_id=int(tokenizer.pad_token_id)),
        beta=beta.value,
        batch_size=config.batch_size,
        device=device,
        bf16=bf16,
        fused=fused,
    )
    score_s = time.perf_counter() - t0
    metrics = preference_metrics(forecasts["margins"], forecasts["confidence"])

    # ---- outputs
    out.mkdir(parents=True, exist_ok=True)
    validation = {"data": report.to_dict()}
    atomic_write_json(out / "validation.json", validation)
    by_index = {ex.index: ex for ex in examples}
    lines = [
        _forecast_line(by_index[int(i)], float(h))
        for i, h in zip(forecasts["index"], forecasts["margins"], strict=True)
    ]
    atomic_write_text(out / "forecasts.jsonl", "".join(lines))
    curve = pairwise_reliability_curve(forecasts["margins"], forecasts["confidence"])
    title = _data_name(config.data) if _is_rows(config.data) else Path(config.data).name
    figure = plot_pairwise_reliability({os.fspath(config.model): forecasts}, title)
    save_figure(figure, out / "reliability.png")
    result = {
        "command": "smoothalign eval preferences",
        "model": config.model,
        "model_loaded": loaded_model_path(config.model),
        "model_info": describe_model(policy),
        "reference": {
            "source": reference.source,
            "model": reference.value,
            "model_loaded": None if reference.value is None else loaded_model_path(reference.value),
        },
        "beta": beta.value,
        "beta_source": beta.source,
        "max_length": max_length.value,
        "max_length_source": max_length.source,
        "run": None if run is None else str(run[0]),
        "data": config.to_dict()["data"],  # rows handed over: described, not copied
        "split": selected.split,  # the rows scored; config.split: the option as given
        "split_note": selected.note,
        "n_pairs": len(examples),
        "n_rows": report.n_rows,
        "n_skipped": report.n_skipped,
        "skipped_by_reason": report.bad_row_counts(),
        "n_not_scored": n_kept - len(examples),  # past --max-pairs
        "metrics": metrics,
        "reliability": curve.to_dict(),
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "fused_logps": fused,
        "notes": notes,
        # the options as resolved: the reference, β and max length used
        "config": {
            **config.to_dict(),
            "reference": reference.value or "the data's ref_chosen_logps / ref_rejected_logps",
            "beta": beta.value,
            "max_length": max_length.value,
        },
        "timing": {
            "load_s": load_s,
            "score_s": score_s,
            "total_s": time.perf_counter() - t_start,
        },
    }
    atomic_write_json(out / "metrics.json", result)
    _write_report(out, result, report.to_markdown(), notes)
    return PreferenceEvalResult(
        out,
        metrics,
        forecasts,
        len(examples),
        report.n_skipped,
        "the data's ref_*_logps" if reference.value is None else str(reference.value),
        beta.value,
        notes,
        selected.split,
        selected.note,
    )


def _loads(given: str, loaded: str) -> str:
    return "" if loaded == given else f" (loads {loaded})"


def _check_data_reference(reference: _Choice, examples, report) -> None:
    """Where the data's reference log-probs serve, that every pair scored has its own
    (validation drops them where a response is truncated or holds other turns)."""
    if reference.value is not None:
        return
    missing = sum(ex.ref_chosen_logp is None for ex in examples)
    if missing:
        raise ValueError(
            f"reference: {missing} of {len(examples)} pairs have no reference log-probs of "
            "their own (a row without ref_chosen_logps / ref_rejected_logps; validation also "
            "drops them where a response is truncated or holds other turns than the "
            f"assistant's: {report.n_ref_logps_dropped} were): pass the reference model as "
            "--reference, or raise --max-length"
        )


def _reference_model(config, reference: _Choice, examples, tokenizer, notes):
    """The reference model to run, or None where the data's log-probs serve."""
    from smoothalign.models import load_model_and_tokenizer

    if reference.value is None:
        return None
    given = [ex for ex in examples if ex.ref_chosen_logp is not None]
    if given:  # one source of reference log-probs for every pair: the model asked for
        for ex in given:
            ex.ref_chosen_logp = ex.ref_rejected_logp = None
        notes.append(
            f"the data's reference log-probs ({len(given)} rows) were not used: the reference "
            f"is {reference.value}, as asked"
        )
    ref_model, ref_tokenizer = load_model_and_tokenizer(
        reference.value, trust_remote_code=config.trust_remote_code
    )
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"reference: {reference.value!r} has another tokenizer than the model "
            f"{config.model!r} (their vocabularies differ): the pairs are tokenised once, "
            "with the model's, so the reference must read the same token ids"
        )
    return ref_model


@torch.no_grad()
def score_pairs(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    examples: list,
    collator,
    *,
    beta: float,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    fused: bool = False,
) -> dict[str, np.ndarray]:
    """``trainer.pair_forecasts`` of ``policy`` against ``reference`` (None: the pairs'
    precomputed reference log-probs) on ``examples`` (``TokenizedPair`` s), in batches of
    ``batch_size`` pairs, in eval mode (no dropout) and without gradients; ``bf16``: under
    bf16 autocast, as training's evaluation runs; ``fused``: the fused LM-head log-probs."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from smoothalign.progress import bar_disable
    from smoothalign.train.trainer import model_sequence_logps, pair_forecasts

    models = [m for m in (policy, reference) if m is not None]
    for m in models:
        m.eval().to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    loader = DataLoader(examples, batch_size=batch_size, collate_fn=collator)
    bar = tqdm(loader, desc="scoring pairs", unit="batch", leave=False,
               disable=bar_disable(len(loader) < 2))  # fmt: skip

    def logps(model, batch):
        with autocast:
            out, _ = model_sequence_logps(
                model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=fused
            )
        b = out.shape[0] // 2
        return out[:b], out[b:]

    def policy_and_reference(batch):
        if reference is None:
            ref = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            ref = logps(reference, batch)
        return (*logps(policy, batch), *ref)

    batches = ({k: v.to(device) for k, v in batch.items()} for batch in bar)
    return pair_forecasts(batches, policy_and_reference, beta)


def _forecast_line(ex, margin: float) -> str:
    record: dict[str, Any] = {"row": ex.row, "file": ex.file}  # file None: a list's row
    record |= {
        "margin": margin,
        "forecast": _sigmoid(margin),
        "label": 1,
    }
    if ex.confidence is not None:
        record["confidence"] = ex.confidence
    return json.dumps(record) + "\n"


def _sigmoid(h: float) -> float:
    """``σ(h)`` in float64, without overflowing ``exp`` for a large ``|h|``."""
    if h >= 0:
        return 1.0 / (1.0 + math.exp(-h))
    e = math.exp(h)
    return e / (1.0 + e)


def _write_report(out: Path, result: dict[str, Any], validation_md: str, notes: list[str]) -> None:
    from smoothalign.io import atomic_write_text
    from smoothalign.train.report import MIRRORED_NOTE, TABLE_ROWS
    from smoothalign.train.report_md import (
        config_section,
        metrics_table,
        report_head,
        section,
        true_rows,
    )

    metrics = result["metrics"]
    lines = report_head("smoothalign preference evaluation", notes)
    lines += [f"## Forecasts σ(h) on {result['data']} ({result['split']} split)", ""]
    past = result["n_not_scored"]
    lines += [
        f"{result['n_pairs']} pairs scored ({result['n_skipped']} of {result['n_rows']} rows "
        f"skipped as bad" + (f", {past} past --max-pairs" if past else "") + ").",
        "",
    ]
    lines += metrics_table(true_rows(TABLE_ROWS, metrics), metrics)
    lines += ["", MIRRORED_NOTE, "", "![reliability](reliability.png)", ""]
    lines += section("Data validation", validation_md)
    lines += config_section(result["config"])
    atomic_write_text(out / "report.md", "\n".join(lines))
