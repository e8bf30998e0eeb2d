"""What the DPO, reward-model and SFT runs share: the smoothing policy a config asks for, the
``transformers.TrainingArguments`` built from the fields their configs have, the
train/eval split of their data and its record (``split.json``), and the data check whose
refusal writes ``refused_validation.json`` (:class:`DataCheck`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from smoothalign._options import option
from smoothalign._warn import main_process, peft_wrap_quietly, warn_main
from smoothalign.data import BadRow
from smoothalign.data.loading import location
from smoothalign.data.report import RefusedRowsError, format_bad_rows
from smoothalign.data.validation import identical_after_truncation
from smoothalign.io import atomic_write_json
from smoothalign.progress import enabled as progress_enabled
from smoothalign.smoothing import SmoothingPolicy, make_policy

CALIBRATOR_FIELDS = ("bins", "momentum", "init_confidence", "prior_strength", "warmup_steps")


def calibrator_options(config: Any) -> dict[str, Any]:
    """The CALS calibrator's options from ``config`` (empty unless it asks for CALS, in
    which case a calibrator option set away from its default is refused: it would be
    recorded in ``config.json`` but change nothing)."""
    if not config.smoothing.startswith("cals-"):
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        moved = [n for n in CALIBRATOR_FIELDS if getattr(config, n) != defaults.get(n)]
        if (
            moved
            and config.smoothing == "none"
            and getattr(config, "loss", None) in ("robust", "ipo", "hinge")
        ):  # the loss takes no smoothing (train.config.UNSMOOTHED_LOSSES): no cals-* helps
            raise ValueError(
                f"{moved[0]}: a CALS calibrator option; the {config.loss!r} loss takes no "
                f"label smoothing, so it has no calibrator (leave {option(moved[0])} at its "
                f"default, or use {option('loss', 'sigmoid')} with cals-l0 or cals-l2)"
            )
        if moved:
            raise ValueError(
                f"{moved[0]}: a CALS calibrator option; {option('smoothing', config.smoothing)} "
                "has no calibrator (use cals-l0 or cals-l2, or leave it at its default)"
            )
        return {}
    return {name: getattr(config, name) for name in CALIBRATOR_FIELDS}


def smoothing_policy(config: Any) -> SmoothingPolicy:
    return make_policy(config.smoothing, **calibrator_options(config))


def resolve_bf16(precision: str) -> bool:
    """``auto``: bf16 where the GPU supports it, fp32 otherwise (and always on CPU)."""
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise ValueError("precision: bf16 needs a CUDA GPU that supports it; use fp32 or auto")
    return precision == "bf16" or (precision == "auto" and supported)


def check_scheduler(config: Any) -> None:
    """Fail before any model is loaded on a learning-rate schedule the run could not build:
    a scheduler ``transformers`` does not know, one that needs an evaluation metric (our
    evaluation logs calibration, not a loss), one that needs options the CLI does not pass
    (``cosine_with_min_lr``: ``min_lr``), one that refuses the numbers (``polynomial``
    with a learning rate under its 1e-7 floor), or warm-up steps asked of ``constant``, which
    ignores them (the default warm-up is not an ask: ``constant`` sets ``lr_warmup_steps``
    to 0, so that ``config.json`` records the warm-up that runs).
    Reads ``config.lr_scheduler``, ``learning_rate``, ``lr_warmup_steps`` and ``max_steps``."""
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    name = config.lr_scheduler
    needs_metric = ("reduce_lr_on_plateau", "greedy")
    names = [s.value for s in SchedulerType if s.value not in needs_metric]
    if name not in names:
        raise ValueError(f"lr_scheduler: {name!r} is not supported; choose one of {names}")
    default_warmup = {f.name: f.default for f in dataclasses.fields(config)}["lr_warmup_steps"]
    if name == "constant" and config.lr_warmup_steps not in (0, default_warmup):  # one asked for
        raise ValueError(
            f"lr_scheduler: 'constant' ignores {option('lr_warmup_steps')} "
            f"({config.lr_warmup_steps}); use 'constant_with_warmup', or pass "
            f"{option('lr_warmup_steps', 0)}"
        )
    if name == "constant":  # the default warm-up, which constant does not run: recorded as 0
        config.lr_warmup_steps = 0
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    try:
        get_scheduler(
            name,
            probe,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=getattr(config, "max_steps", None) or 1000,  # rank: epochs
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"lr_scheduler: {name!r} cannot be used here: {err}") from None


def _checkpointing_arguments(on: bool) -> dict[str, Any]:
    """``TrainingArguments`` for gradient checkpointing, non-reentrant (it needs no input
    gradients, so a LoRA model's frozen embeddings are fine), under the names this
    ``transformers`` uses: later 5.x releases renamed it activation checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    kind = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{kind}_checkpointing": on, f"{kind}_checkpointing_kwargs": {"use_reentrant": False}}


def training_arguments(config: Any, bf16: bool):
    """``TrainingArguments`` from a run config (``DPOConfig``, ``SFTConfig`` or
    ``RewardConfig``)."""
    from transformers import TrainingArguments

    report_to = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return TrainingArguments(
        output_dir=config.output_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.lr_warmup_steps,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if config.eval_steps > 0 else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        **_checkpointing_arguments(config.gradient_checkpointing),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # without a GPU, torchrun's ranks then train data-parallel (gloo) as accelerate's
        # --cpu does, instead of each running the whole job on the same data
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        report_to=report_to,
        # transformers' messages (a checkpoint's tied weights reported missing on load...)
        # from the main process only, as every rank would give the same
        log_level_replica="error",
        disable_tqdm=not progress_enabled(),  # a study's --no-progress: no Trainer bar
    )


def split_by_column(
    examples: list, metadata_of: Callable[[Any], dict], row_of: Callable[[Any], Any]
) -> dict[str, list] | None:
    """``{"train": [...], "eval": [...]}`` from the data's ``split`` column, or ``None`` when
    no row has one. Any other value (``test``, null, …) is an error naming the rows: rows are
    never dropped silently."""
    if not any("split" in metadata_of(ex) for ex in examples):
        return None
    parts: dict[str, list] = {"train": [], "eval": []}
    other: Counter = Counter()
    bad_rows = []
    for ex in examples:
        value = metadata_of(ex).get("split")
        if value in parts:
            parts[value].append(ex)
        else:
            other[value] += 1
            bad_rows.append(row_of(ex))
    if other:
        raise ValueError(
            f"split: every row's 'split' must be 'train' or 'eval'; found {dict(other)} "
            f"(rows {bad_rows[:5]}{' ...' if len(bad_rows) > 5 else ''}). Fix or drop those rows."
        )
    return parts


def holdout(
    examples: list, fraction: float, seed: int, key_of: Callable[[Any], Any] | None = None
) -> tuple[list, list]:
    """A seeded random ``(train, eval)`` split with ``round(fraction·n)`` (≥ 1) eval items.

    With ``key_of`` (an example's ``content_key``: ``None`` for one that has none), examples
    of one key, copies of one row, count as one item of ``n``, and all go to the side it
    draws: a held-out row is never a copy of a training row. Without copies the split is
    the one drawn without ``key_of``."""
    items: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        key = None if key_of is None else key_of(ex)
        items.setdefault((i,) if key is None else key, []).append(i)  # (i,): no str key
    members = list(items.values())
    order = list(range(len(members)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(members))) if fraction > 0 else 0
    eval_ids = {i for item in order[:n_eval] for i in members[item]}
    train = [ex for i, ex in enumerate(examples) if i not in eval_ids]
    return train, [ex for i, ex in enumerate(examples) if i in eval_ids]


def _as_typed(eval_option: str) -> str:
    """``eval_option`` as its reader types it: the flags split.json records (``--eval-data``,
    ``--data``, ``--eval-prompts``: :func:`split_record`'s fixed vocabulary) are the Python
    keywords outside the command line (:func:`smoothalign._options.option`); a description
    (``the data folder's eval files``) stays."""
    keyword = {"--eval-data": "eval_data", "--data": "data", "--eval-prompts": "eval_prompts"}
    return option(keyword[eval_option]) if eval_option in keyword else eval_option


def train_eval_split(
    examples: list,
    eval_examples: list | None,
    metadata_of: Callable[[Any], dict],
    row_of: Callable[[Any], Any],
    eval_fraction: float,
    seed: int,
    *,
    what: str = "pairs",
    eval_option: str = "--eval-data",
    key_of: Callable[[Any], Any] | None = None,
    where_of: Callable[[Any], Any] | None = None,
) -> tuple[list, list, list[str]]:
    """``(train, eval, notes)``: a separate eval set when given (the data's own ``eval`` rows
    are then not trained on), else the data's ``split`` column, else a seeded holdout.
    ``what`` and ``eval_option`` name the rows and the caller's eval-set option in errors.
    ``key_of`` gives an example's ``content_key`` (rows with the same one are copies): the
    holdout keeps copies on one side (:func:`holdout`), and held-out examples that copy a
    training one (the eval set's or the split column's choice) are a note and a warning,
    naming them by ``where_of`` (default ``row_of``)."""
    by_split = split_by_column(examples, metadata_of, row_of)
    notes = []
    if eval_examples is not None:
        train, evals = examples, eval_examples
        if by_split is not None:
            train = by_split["train"]
            notes.append(
                f"{_as_typed(eval_option)} given: the data's {len(by_split['eval'])} 'eval' rows were not "
                "trained on"
            )
    elif by_split is not None:
        train, evals = by_split["train"], by_split["eval"]
        notes.append("train/eval split: the data's 'split' column")
    else:
        train, evals = holdout(examples, eval_fraction, seed, key_of)
        notes.append(_holdout_note(examples, evals, eval_fraction, key_of, what, eval_option))
    if not train:
        raise ValueError(f"data: no training {what} left after validation and the eval split")
    if not evals:
        if by_split is not None and eval_examples is None:
            raise ValueError(
                f"eval_data: the data's split column marks no row 'eval' (it decides the "
                f"split, {option('eval_fraction')} does not); mark some {what} 'eval', or pass "
                f"{_as_typed(eval_option)}"
            )
        raise ValueError(
            f"eval_data: no evaluation {what}; pass {_as_typed(eval_option)} or {option('eval_fraction')} > 0"
        )
    if key_of is not None:
        notes += _held_out_copies(train, evals, key_of, where_of or row_of, what)
    return train, evals, notes


def _n_distinct(examples: list, key_of: Callable[[Any], Any] | None) -> int:
    """How many distinct rows ``examples`` hold: copies (one ``key_of``) count once."""
    keys = [None if key_of is None else key_of(ex) for ex in examples]
    return len({k for k in keys if k is not None}) + sum(k is None for k in keys)


def _holdout_note(
    examples: list,
    evals: list,
    fraction: float,
    key_of: Callable[[Any], Any] | None,
    what: str,
    eval_option: str,
) -> str:
    """The note of a seeded holdout, with the counts it drew: it draws ``fraction`` of the
    distinct rows, each with all its copies, so heavy copies can make the held-out share of
    rows far from ``fraction``; past twice it (or the share of distinct rows, where rounding
    up to one row raised that), or under half of it (or of that share, where rounding
    lowered it), a warning says so, from the main process."""
    n_rows, n_distinct = len(examples), _n_distinct(examples, key_of)
    n_eval, n_eval_distinct = len(evals), _n_distinct(evals, key_of)
    head = f"train/eval split: a seeded {fraction:.0%} holdout"
    if n_distinct == n_rows:
        return f"{head}: {n_eval} of {n_rows} {what}"
    note = (
        f"{head} of the distinct {what}: {n_eval_distinct} of {n_distinct} ({n_eval} of "
        f"{n_rows} {what} with their copies)"
    )
    share, drawn = n_eval / n_rows, n_eval_distinct / n_distinct
    if share > 2 * max(fraction, drawn) or share < min(fraction, drawn) / 2:
        percent = f"{share:.0%}" if share >= 0.01 else f"{100 * share:.2g}%"  # not "0%"
        warn_main(  # every rank split the same data: said by the main process
            f"the seeded {fraction:.0%} holdout holds {n_eval} of the {n_rows} {what} "
            f"({percent}, {'over twice' if share > fraction else 'under half'} the "
            f"{fraction:.0%} asked for): it draws {n_eval_distinct} of the {n_distinct} "
            f"distinct {what} with all their copies, and copies moved its share; drop the "
            f"copies, or give the held-out {what} with {_as_typed(eval_option)}",
            stacklevel=3,
        )
    return note


def _held_out_copies(
    train: list, evals: list, key_of: Callable[[Any], Any], where_of: Callable[[Any], Any], what
) -> list[str]:
    """A note (and a warning) on the held-out examples whose ``key_of`` a training example
    has: their metrics are partly on what was trained on."""
    trained = {key_of(ex) for ex in train} - {None}
    copies = [ex for ex in evals if key_of(ex) in trained]
    if not copies:
        return []
    listed = ", ".join(str(where_of(ex)) for ex in copies[:5])
    more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
    note = (
        f"{len(copies)} of the {len(evals)} held-out {what} repeat training {what} "
        f"({listed}{more}): the held-out metrics are partly on rows trained on"
    )
    warn_main(note, stacklevel=3)  # every rank split the same data: said by the main process
    return [note]


def split_validated(
    report: Any,
    eval_report: Any | None,
    base_of: Callable[[Any], Any],
    eval_fraction: float,
    seed: int,
    what: str = "pairs",
    eval_option: str = "--eval-data",
) -> tuple[list, list, dict[str, Any], str, list[str]]:
    """``(train, eval, validation_dict, validation_markdown, notes)`` from a validation report
    of the data and one of the ``--eval-data`` (or ``None``), split by
    :func:`train_eval_split` (a bad ``split`` value is a bad row of validation already).
    ``base_of(example)`` is the example's validated row (its ``metadata`` and ``row``);
    ``eval_option`` names where the held-out rows came from (the eval option, or a data
    folder's eval files: ``data.loading.folder_held_out``)."""
    info, md = validation_summary(report, eval_report)
    eval_examples = eval_report.examples if eval_report is not None else None
    train, evals, notes = train_eval_split(
        report.examples,
        eval_examples,
        lambda ex: base_of(ex).metadata,
        lambda ex: base_of(ex).row,
        eval_fraction,
        seed,
        what=what,
        eval_option=eval_option,
        key_of=lambda ex: base_of(ex).content_key,
        where_of=lambda ex: location(base_of(ex).file, base_of(ex).row),
    )
    return train, evals, info, md, notes


SPLIT_FILE = "split.json"
"""The run-folder file that records the train/eval split: :func:`split_record`."""


def scored_held_out(
    held_out: list, limit: int, option_name: str, what: str, notes: list[str]
) -> list:
    """The first ``limit`` of the ``held_out`` examples, which the held-out metrics score
    (``0``: all of them); a cut is said in ``notes``, naming the option (``option_name``:
    ``max_eval_pairs``, ``max_eval_rows``) as its reader types it. ``split.json`` still
    lists every held-out example (:func:`split_record`'s ``n_scored``)."""
    if not limit or len(held_out) <= limit:
        return held_out
    notes.append(
        f"eval: the first {limit} of {len(held_out)} held-out {what} ({option(option_name)})"
    )
    return held_out[:limit]


def split_record(
    train: list,
    held_out: list,
    base_of: Callable[[Any], Any],
    *,
    held_out_set: str | None,
    eval_fraction: float,
    seed: int,
    n_scored: int,
    eval_limit: str | None = None,
) -> dict[str, Any]:
    """What a run's ``split.json`` says of its train/eval split: how it was made, and every
    held-out row (its ``file``, ``None`` for rows handed over as a list, and its 0-based
    ``row`` there), in the order scored; the first ``n_scored`` of them are the ones the
    held-out metrics score (``eval_limit``: the option that cut the rest).

    ``held_out_set``: how the run names a held-out set given apart (``--eval-data``, a data
    folder's eval files), else ``None``: the held-out rows are then the data's own, by its
    ``split`` column where a kept row has one (as :func:`split_by_column` decided), else by
    the seeded holdout. ``base_of(example)``: its validated row (``metadata``, ``file``,
    ``row``), as for :func:`split_validated`.

    ``held_out_from`` (and a ``scored_limit``) name the options by their command-line flags
    whichever way the run was started: a fixed vocabulary of the file (documented so in the
    README), so that one run's ``split.json`` reads the same from the CLI and the Python API;
    messages, which advise their reader, use :func:`smoothalign._options.option` instead."""
    if held_out_set is not None:
        how: dict[str, Any] = {"split": "held-out set", "held_out_from": held_out_set}
    elif any("split" in base_of(ex).metadata for ex in (*train, *held_out)):
        how = {"split": "split column", "held_out_from": "--data"}
    else:
        how = {"split": "seeded holdout", "held_out_from": "--data",
               "eval_fraction": eval_fraction, "seed": seed}  # fmt: skip
    return {
        **how,
        "n_train": len(train),
        "n_held_out": len(held_out),
        "n_scored": n_scored,
        "scored_limit": eval_limit if n_scored < len(held_out) else None,
        "held_out": [{"file": base_of(ex).file, "row": base_of(ex).row} for ex in held_out],
    }


def held_out_set_of(eval_data: Any, validation: dict[str, Any]) -> str | None:
    """How :func:`split_record` names a run's held-out set given apart, from its
    ``eval_data`` option and its validation summary (:func:`validation_summary`, which has
    an ``eval`` part only for such a set): ``--eval-data``, a data folder's eval files, or
    ``None`` (the data's own rows are held out)."""
    if "eval" not in validation:
        return None
    return "--eval-data" if eval_data is not None else "the data folder's eval files"


REFUSED_VALIDATION_FILE = "refused_validation.json"
"""Where a run refused for its data's bad rows lists every one (:class:`DataCheck`)."""


class DataCheck:
    """The validation reports of a run's data as its loader makes them (``train``: the
    data's; ``eval``: a held-out set's given apart, ``eval_option``), so that a refusal of
    the data writes every bad row where the run's results go.

    :meth:`validate` runs one part's validation and keeps its report, a refused one's too
    (``RefusedRowsError``: bad rows with ``on_bad_rows="error"``, or none left), so that the
    held-out set is checked even when the data was refused; :meth:`check` raises the
    refusals, every part's in one message. Inside :meth:`refusals_written`, a ``ValueError``
    (those refusals, a later one such as no training row left after the eval split, or the
    training rows' missing confidences) where any kept report has bad rows writes
    ``{"refused": message, "train": ..., "eval": ...}`` (each part as in validation.json:
    every bad row with its file, row, field, code and reason) to ``output_dir``'s
    :data:`REFUSED_VALIDATION_FILE` (main process; the folder made if need be) and adds the
    file's path to the message. Its own name, not validation.json: a refused run must not
    pass its data check off as the results of the run that the folder may hold already; a
    run that starts there removes it (``checkpoints.EARLIER_OUTPUTS``)."""

    def __init__(self, output_dir: Any, eval_option: str = "--eval-data"):
        from pathlib import Path

        self.path = Path(output_dir) / REFUSED_VALIDATION_FILE
        self.eval_option = eval_option
        self.reports: dict[str, Any] = {}
        self._refused: list[tuple[str, RefusedRowsError]] = []

    def validate(self, part: str, validate: Callable[[], Any]) -> Any:
        """``validate()``, its report kept as ``part``'s; ``None`` where it refused the rows
        (:meth:`check` raises that)."""
        try:
            report = validate()
        except RefusedRowsError as err:
            self.reports[part] = err.report
            self._refused.append((part, err))
            return None
        self.reports[part] = report
        return report

    def check(self) -> None:
        """Raise the refusals :meth:`validate` kept: the data's, then the held-out set's."""
        if not self._refused:
            return
        (_, first), *rest = self._refused
        if not rest:
            raise first
        said = [str(first)] + [
            f"The held-out set ({_as_typed(self.eval_option)}): {e}" for _, e in rest
        ]
        raise RefusedRowsError("\n".join(said), first.report)

    def validate_and_split(
        self,
        validate: Callable[[Any, bool], Any],
        rows: Any,
        eval_rows: Any | None,
        eval_fraction: float,
        seed: int,
        what: str = "pairs",
    ) -> tuple[Any, Any | None, tuple[list, list, dict[str, Any], str, list[str]]]:
        """The data's and the held-out set's validation (``validate(rows, held_out)``; no
        held-out set where ``eval_rows`` is None), the refusals raised (:meth:`check`), then
        :func:`split_validated`: ``(report, eval_report, split)``."""
        report = self.validate("train", lambda: validate(rows, False))
        eval_report = None
        if eval_rows is not None:
            eval_report = self.validate("eval", lambda: validate(eval_rows, True))
        self.check()
        split = split_validated(
            report, eval_report, lambda ex: ex, eval_fraction, seed, what=what,
            eval_option=self.eval_option,
        )  # fmt: skip
        return report, eval_report, split

    @contextmanager
    def refusals_written(self):
        try:
            yield self
        except ValueError as err:
            n_bad = sum(len(r.bad_rows) for r in self.reports.values() if r is not None)
            if not n_bad:
                raise
            record = {"refused": str(err)}
            record.update({k: r.to_dict() for k, r in self.reports.items() if r is not None})
            listed = f"Every bad row ({n_bad}), with its file, row, field, code and reason, is in"
            try:
                if main_process():
                    atomic_write_json(self.path, record)
                said = f"{err}\n{listed} {self.path}"
            except OSError as write_error:  # the refusal stays the news
                said = f"{err}\n(the data check could not be written to {self.path}: {write_error})"
            if isinstance(err, RefusedRowsError):
                raise RefusedRowsError(said, err.report) from err
            raise ValueError(said) from err


def require_confidence(
    report: Any,
    train: list,
    on_bad_rows: str,
    base_of: Callable[[Any], Any] = lambda ex: ex,
) -> list:
    """The training examples with a confidence, for the oracle-* smoothing policies, which
    read each training row's: checked before the model loads (held-out rows may lack one:
    the ``*_true`` metrics skip them). Those without are bad rows of ``report``
    (``missing_confidence``): an error naming the file, the first rows, how many more, and
    the field, unless ``on_bad_rows`` skips them (then listed in ``report``, which
    ``validation_summary`` turns into validation.json). None has one: an error either way,
    without the hint to skip them.
    ``base_of(example)``: its validated ``TokenizedPair`` (index, row, file, confidence)."""
    missing = [ex for ex in train if base_of(ex).confidence is None]
    if not missing:
        return train
    bad = [
        BadRow(base_of(ex).index, base_of(ex).row, base_of(ex).file, "confidence",
               "missing_confidence",
               "missing; the oracle-* smoothing policies read each training row's confidence")
        for ex in missing
    ]  # fmt: skip
    if len(missing) == len(train):  # skipping them would leave nothing: no skip hint
        message = "no training row has a confidence. " + format_bad_rows(
            bad, len(train), what="training rows"
        )
        report.drop(bad)  # refused: the report lists them (DataCheck writes it out)
        raise RefusedRowsError(message, report)
    if on_bad_rows == "error":
        message = format_bad_rows(bad, report.n_rows, what="preference rows")
        report.drop(bad)
        raise RefusedRowsError(message, report)
    report.drop(bad)  # its nested reports and counts too (a reward report's text checks')
    drop = {id(ex) for ex in missing}
    return [ex for ex in train if id(ex) not in drop]


def check_identical_after_truncation(
    train: list,
    reports: dict[str, Any],
    max_length: int,
    *,
    whole_text: bool = False,
    eval_option: str = "--eval-data",
) -> None:
    """Say on the console (a warning) how many kept pairs of each data option's validation
    report (``{"data": report, "eval_data": report or None}``) truncation to ``max_length``
    made identical (:func:`~smoothalign.data.validation.identical_after_truncation`): their
    margin is always 0, so they teach nothing and score as ties. Refuse the run when every
    training pair (``TokenizedPair`` s) is one: there is nothing to learn. ``eval_option``:
    how the run names its held-out set (``folder_held_out``'s ``option``: a data folder's
    eval files where no ``--eval-data`` was given), which names ``eval_data``'s report."""
    what = "sequences" if whole_text else "scored tokens"
    if train and all(identical_after_truncation(ex, whole_text) for ex in train):
        raise ValueError(
            f"data: all {len(train)} training pairs have identical chosen and rejected {what} "
            f"after truncation to max_length {max_length} (they differ only past it): their "
            f"margin is always 0, there is nothing to learn; raise {option('max_length')}"
        )
    for data_option, report in reports.items():
        if report is not None and report.n_identical_after_truncation:
            # a data folder's eval files are no --eval-data the user passed: named as read
            folder_eval = data_option == "eval_data" and eval_option != "--eval-data"
            name = eval_option if folder_eval else option(data_option)
            warn_main(  # every rank validated the same data: said by the main process
                f"{name}: {report.n_identical_after_truncation} of {report.n_kept} kept pairs "
                f"have identical chosen and rejected {what} after truncation to max_length "
                f"{max_length}: their margin is always 0 (they teach nothing, and score as "
                f"ties); raise {option('max_length')}",
                stacklevel=2,
            )


def validation_summary(report: Any, eval_report: Any | None) -> tuple[dict[str, Any], str]:
    """``(validation_dict, validation_markdown)`` of the data's and the eval data's reports."""
    md = [report.to_markdown()]
    info: dict[str, Any] = {"train": report.to_dict()}
    if eval_report is not None:
        md += ["", "Eval data:", "", eval_report.to_markdown()]
        info["eval"] = eval_report.to_dict()
    return info, "\n".join(md)


def add_lora(model, config: Any):
    """A LoRA adapter on every linear layer of a causal LM (``config.lora_r``,
    ``config.lora_alpha``; no dropout: the policy must equal its reference at step 0)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with peft_wrap_quietly():  # PEFT reads a deprecated transformers alias
        return get_peft_model(model, lora)


def load_checked(
    name_or_path: str,
    trust_remote_code: bool,
    check: Callable[[Any], Any],
    load: Callable[[Any], tuple[Any, Any]],
) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, check(tokenizer))``: the data check runs before the weights load
    wherever the tokenizer can be read on its own (``models.load_tokenizer``: ``tiny``, a
    local folder, SmolLM2 once cached), else right after; ``load(tokenizer or None)`` loads
    the model, reusing a tokenizer already read."""
    from smoothalign.models import load_tokenizer

    early = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    checked = check(early) if early is not None else None
    model, tokenizer = load(early)
    if early is None:
        checked = check(tokenizer)
    return model, tokenizer, checked


def lean_layers_enabled(setting: str) -> bool:
    """``--lean-layers``: ``on`` or ``recompute``, ``off``, or ``auto`` (``recompute`` when
    training runs on CUDA, where the Triton kernels make it faster as well as leaner:
    docs/results.md)."""
    return setting in ("on", "recompute") or (setting == "auto" and torch.cuda.is_available())


def apply_lean_layers(model, setting: str = "on", checkpointing: bool = False) -> str:
    """``--lean-layers``: patch ``model`` (``smoothalign.models.lean``); the run's note.
    ``auto`` (when enabled, i.e. on CUDA) recomputes the norm outputs and SwiGLU product:
    on an H200 that cost 5 ms of a 304 ms DPO step and saved 5.8 GiB of its 28.9."""
    from smoothalign.models.lean import use_lean_layers

    recompute = setting == "recompute" or (setting == "auto" and torch.cuda.is_available())
    counts = use_lean_layers(model, recompute=recompute)
    note = (
        f"lean layers: {counts['norm']} RMSNorm, {counts['mlp']} MLP and {counts['rope']} "
        "attention (rotary embedding) modules"
    )
    if "layers" in counts:
        note += f", outputs recomputed in {counts['layers']} decoder layers"
        if checkpointing:  # --gradient-checkpointing: those layers skip it (models/lean.py)
            note += " (but not while checkpointed: --gradient-checkpointing recomputes them whole)"
    return note + ("" if any(counts.values()) else " (none of this architecture is supported)")


DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "dropout", "hidden_dropout")


def disable_dropout(model) -> int:
    """Set every dropout of ``model`` to 0, in place; the number of places changed.

    DPO needs it: the policy trains in train mode while its reference (the adapter-disabled
    model, or a frozen copy in eval mode) must be the same function at step 0; with dropout
    the step-0 margins are noise instead of 0 (TRL disables dropout for the same reason).
    Covers ``nn.Dropout`` modules, the float rates that attention modules read at call time
    (``attention_dropout``, …) and the model config's ``*dropout*`` fields, which are saved
    with the model."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            changed += 1
        for name in DROPOUT_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
                changed += 1
    config = getattr(model, "config", None)
    for key, value in vars(config).items() if config is not None else ():
        if "dropout" in key and isinstance(value, float) and value > 0:
            setattr(config, key, 0.0)
            changed += 1
    return changed


def save_merged_model(peft_model, tokenizer, dest) -> Any:
    """Merge ``peft_model``'s LoRA adapter into a copy of its base model (trained
    ``modules_to_save``, e.g. a reward model's scalar head, replace the originals) and save
    that as a full model (safetensors) with ``tokenizer`` into ``dest``. ``peft_model`` is
    left as it was; the copy briefly doubles the model's memory."""
    import copy
    from pathlib import Path

    dest = Path(dest)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def save_final_model(
    trainer, tokenizer, final, *, lora: bool, main_process: bool, extra=None
) -> None:
    """``final/``: always a full model that ``from_pretrained`` (and every smoothalign
    command taking a model path) loads as it is. With LoRA the adapter is merged into a copy
    of the model for that, and the adapter itself is kept in ``final/adapter/``.

    Written into ``.final.partial/`` and then swapped in whole (``io.swap_in_folder``): a
    reader finds the earlier ``final/`` or the complete new one, and nothing of an earlier
    run's (an ``adapter/`` of a LoRA run under a full fine-tune's model) survives in it.
    ``extra(folder)``, on the main process, adds files (the CALS state) before the swap."""
    import shutil
    from pathlib import Path

    from smoothalign.io import follow_umask, swap_in_folder

    final = Path(final)
    partial = final.parent / f".{final.name}.partial"
    if main_process and partial.exists():  # a crash's leftover
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()  # every rank saves into the same, empty folder
    if lora:
        trainer.save_model(str(partial / "adapter"))  # the adapter and the tokenizer
        if main_process:
            save_merged_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, partial)
    else:
        trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if main_process:
        if extra is not None:
            extra(partial)
        follow_umask(partial)
        swap_in_folder(partial, final)
