"""``run_rank_calibration(config)``: preference model → prompts → (generate → score → rank →
train) per epoch → evaluate before and after → save → report.

The wiring of the pieces in :mod:`~smoothalign.rank.candidates`,
:mod:`~smoothalign.rank.objective`, :mod:`~smoothalign.rank.trainer` and
:mod:`~smoothalign.rank.metrics`, each tested on its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import set_seed

from smoothalign._options import option
from smoothalign.data.loading import folder_held_out
from smoothalign.io import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    config_flags,
    follow_umask,
    swap_in_folder,
)
from smoothalign.models.loading import loaded_model_path
from smoothalign.rank.candidates import (
    PROMPT_TEXT_FIELDS,
    PromptExample,
    RankedPrompt,
    candidates_jsonl,
    generate_candidates,
    load_prompts,
    score_and_rank,
)
from smoothalign.rank.config import RankConfig
from smoothalign.rank.metrics import ranking_metrics
from smoothalign.rank.trainer import RankTrainer, candidate_mean_logps
from smoothalign.reward.scoring import (
    PreferenceModelScorer,
    check_preference_model,
    load_preference_model,
    resolve_reward_model_path,
)
from smoothalign.train.checkpoints import (
    RESUMABLE_OPTIONS,
    check_resume_config,
    clear_earlier_outputs,
    clear_for_new_run,
    clear_incomplete_checkpoints,
    incomplete_checkpoint_names,
    prepare_output_dir,
    refuse_own_final_as_input,
    resolve_resume,
    rotate_checkpoints,
    run_config_record,
)
from smoothalign.train.common import (
    SPLIT_FILE,
    check_scheduler,
    load_checked,
    resolve_bf16,
    split_record,
    train_eval_split,
)
from smoothalign.train.data_fingerprint import (
    check_resume_data,
    data_fingerprint,
    record_data_fingerprint,
)
from smoothalign.train.run_result import BaseRunResult

SUMMARY_KEYS = (
    "spearman_within",
    "spearman_pooled",
    "pair_accuracy",
    "score_mean",
    "policy_top_score",
    "logp_mean",
)
EVAL_SEED_OFFSET = 10_000  # held-out sampling uses seed + this, the same before and after
VALIDATION_FILE = "validation.json"  # the data check, under the other commands' name
PROMPTS_FILE = "prompts.json"  # the same record under the name this command wrote before
RANK_RESUMABLE = (RESUMABLE_OPTIONS - {"max_new_tokens"}) | {
    "policy_as_given",
    "reward_model_as_given",
    "save_model",  # whether final/ is written at the end, as report is whether report.md is
}
"""The options a resumed rank-calibrate run may change: the other commands' (how often to
log and save, what the report shows, ...) and what its models were typed as (``policy`` and
``reward_model``, the models loaded, are compared), but not ``max_new_tokens``, which here
is the length of the candidates trained on (an evaluation's sampling length elsewhere).
``max_eval_prompts`` and ``epochs`` (the schedule's length) define the run too: the
held-out evaluation before training is made again on a resume, and must be the same."""
RANK_PATHS = ("policy", "reward_model", "prompts", "eval_prompts")
RANK_MODELS = ("policy", "reward_model")
TRAIN_READS = ("prompt", "prompt_ids")
"""What training reads of a prompt (its data fingerprint's content): its tokens, and the
prompt itself, which the preference model scores the candidates with; with the NLL term,
its reference response's tokens and scored spans too (:func:`prompt_reads`)."""


def prompt_reads(config: RankConfig) -> tuple[str, ...]:
    """:data:`TRAIN_READS`, with the reference's tokens where the NLL term reads them."""
    reference = ("reference_ids", "reference_spans") if config.nll_weight > 0 else ()
    return TRAIN_READS + reference


@dataclass
class RankRunResult(BaseRunResult):
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    SUMMARY_KEYS: ClassVar[tuple[str, ...]] = SUMMARY_KEYS
    KEY_WIDTH: ClassVar[int] = 17
    ONLY_AFTER: ClassVar[bool] = False  # every key, nan where a side lacks it

    def headline(self) -> str:
        return (
            f"smoothalign rank-calibrate: {self.n_train} train / {self.n_eval} held-out prompts, "
            f"{self.train_seconds:.0f} s of calibration"
        )


def _prompt_source(config: RankConfig) -> tuple[Any, str]:
    if config.prompts is not None:
        return config.prompts, str(config.prompts)
    from smoothalign.assets import embedded_dataset_path

    path = embedded_dataset_path()
    return path, f"{path.name} (shipped)"


def load_rank_prompts(
    config: RankConfig, tokenizer: Any
) -> tuple[list[PromptExample], list[PromptExample], dict[str, Any], str, list[str]]:
    """``(train, eval, prompts_dict, prompts_markdown, notes)``. The eval prompts are
    ``--eval-prompts``, else a prompts folder's eval files beside its train files, else the
    prompts' ``split == 'eval'`` rows, else a seeded holdout (copies of a prompt together);
    with the NLL term on, every *training* prompt needs a reference response. ``train`` and
    ``eval`` are cut to ``max_prompts`` / ``max_eval_prompts``."""
    split = _split_rank_prompts(config, tokenizer)
    train, held_out, info, md, notes = (
        split.train,
        split.held_out,
        split.info,
        split.md,
        split.notes,
    )
    return _cut_to_the_limits(config, train, held_out, notes) + (info, md, notes)


@dataclass
class _RankPrompts:
    """The prompts as split, before ``max_prompts`` / ``max_eval_prompts`` cut them:
    ``held_out`` is every held-out prompt (``split.json`` lists them all), and
    ``held_out_set`` how ``split.json`` names a held-out set given apart (else ``None``)."""

    train: list[PromptExample]
    held_out: list[PromptExample]
    info: dict[str, Any]
    md: str
    notes: list[str]
    held_out_set: str | None


def _cut_to_the_limits(
    config: RankConfig, train: list, evals: list, notes: list[str]
) -> tuple[list, list]:
    """The first ``max_prompts`` training and ``max_eval_prompts`` held-out prompts (0: all),
    each cut said in ``notes``."""
    if config.max_prompts and len(train) > config.max_prompts:
        notes.append(f"training prompts: the first {config.max_prompts} of {len(train)}")
        train = train[: config.max_prompts]
    if config.max_eval_prompts and len(evals) > config.max_eval_prompts:
        notes.append(f"held-out prompts: the first {config.max_eval_prompts} of {len(evals)}")
        evals = evals[: config.max_eval_prompts]
    return train, evals


def _split_rank_prompts(config: RankConfig, tokenizer: Any) -> _RankPrompts:
    """:func:`load_rank_prompts` before its cut to the limits."""
    source, name = _prompt_source(config)
    common = dict(max_length=config.max_length, on_bad_rows=config.on_bad_rows)
    report = load_prompts(source, tokenizer, source_name=name, **common)
    info: dict[str, Any] = {"train": report.to_dict()}
    md = [report.to_markdown()]
    # a prompts folder's eval.* beside its train.* is the held-out set, unless --eval-prompts
    folder = folder_held_out(
        config.prompts,
        config.eval_prompts,
        eval_option="--eval-prompts",
        text_fields=PROMPT_TEXT_FIELDS,
        what="prompts",
    )
    eval_examples = None
    eval_source = config.eval_prompts if config.eval_prompts is not None else folder.rows
    if eval_source is not None:
        eval_report = load_prompts(
            eval_source,
            tokenizer,
            source_name=str(config.eval_prompts) if folder.rows is None else folder.option,
            held_out=True,
            **common,
        )
        info["eval"] = eval_report.to_dict()
        md.append(eval_report.to_markdown())
        eval_examples = eval_report.examples
    train, evals, notes = train_eval_split(
        report.examples,
        eval_examples,
        lambda ex: ex.metadata,
        lambda ex: ex.location,
        config.eval_fraction,
        config.seed,
        what="prompts",
        eval_option=folder.option,
        key_of=lambda ex: ex.content_key,  # copies of a prompt stay on one side
    )
    notes = folder.notes + notes
    if config.nll_weight > 0:
        missing = [ex for ex in train if ex.reference_ids is None]
        if missing:
            where = ", ".join(ex.location for ex in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            if config.on_bad_rows == "error":  # listed as the other bad rows are
                listed = "\n".join(
                    f"  {ex.location}, field 'reference': no reference response (reference, "
                    "completion or chosen) for the NLL term"
                    for ex in missing[:10]
                )
                rest = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise ValueError(
                    f"prompts: {len(missing)} training row(s) without a reference (pass "
                    f"{option('nll_weight', 0)}, or {option('on_bad_rows', 'skip')} to drop "
                    f"them):\n{listed}{rest}"
                )
            train = [ex for ex in train if ex.reference_ids is not None]
            notes.append(
                f"{len(missing)} training prompts without a reference skipped: {where}{more}"
            )
            # on disk too (validation.json, report): every skipped row, not only a note
            info["train"]["skipped_without_reference"] = [ex.location for ex in missing]
            md.append(
                f"- training prompts skipped for want of a reference response (--nll-weight "
                f"> 0): {len(missing)}: {', '.join(ex.location for ex in missing)}"
            )
            if not train:
                raise ValueError("prompts: no training prompt has a reference response")
    if config.eval_prompts is not None:
        held_out_set: str | None = "--eval-prompts"
    elif folder.rows is not None:
        held_out_set = "the prompts folder's eval files"
    else:
        held_out_set = None
    return _RankPrompts(train, evals, info, "\n".join(md), notes, held_out_set)


def _fit_the_preference_model(
    examples: list[PromptExample],
    scorer,
    on_bad_rows: str,
    info: dict,
    split: str,
    notes: list[str] | None = None,
) -> list[PromptExample]:
    """The prompts that leave room for a response under the preference model's tokenizer;
    the others raise (``on_bad_rows='error'``) or are dropped and listed in ``info``."""
    kept, bad = [], []
    for ex in examples:
        try:
            scorer.tokens(ex.prompt, "x")
        except ValueError as err:
            bad.append(f"{ex.location}, field 'prompt': {err}")
        else:
            kept.append(ex)
    if bad and on_bad_rows == "error":
        listed = "\n  ".join(bad[:10]) + (
            f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        )
        raise ValueError(
            f"{len(bad)} {split} prompts do not fit the preference model:\n  {listed}\n"
            f"Raise {option('max_length')}, or pass {option('on_bad_rows', 'skip')} to drop them."
        )
    if bad:
        info.setdefault(split, {})["too_long_for_the_preference_model"] = bad
        if not kept:
            raise ValueError(f"no {split} prompt fits the preference model: {bad[0]}")
        if notes is not None:  # listed in the report too, as skipped bad rows are
            more = f"; and {len(bad) - 1} more (all in validation.json)" if len(bad) > 1 else ""
            notes.append(
                f"{len(bad)} {split} prompt(s) skipped, too long for the preference model: "
                f"{bad[0]}{more}"
            )
    return kept


@dataclass
class _CheckedPrompts:
    """The prompts as the run uses them, every check made: ``train`` and ``scored`` (the
    held-out prompts evaluated) cut to the limits and fitting the preference model;
    ``held_out`` every held-out prompt (``split.json``), less those too long for it;
    ``notes`` the checks' notes, in the order the run reports them; ``fingerprint`` the
    data's (:func:`~smoothalign.train.data_fingerprint.data_fingerprint`) and
    ``resume_note`` what checking it against a resumed checkpoint's had to say."""

    train: list[PromptExample]
    scored: list[PromptExample]
    held_out: list[PromptExample]
    info: dict[str, Any]
    md: str
    notes: list[str]
    held_out_set: str | None
    fingerprint: dict[str, Any]
    resume_note: str | None


def _preference_tokenizer(folder: Path) -> Any:
    """The preference model's tokenizer as :func:`~smoothalign.reward.scoring.
    load_preference_model` reads it (local files only, no remote code, a pad token: its EOS
    where it has none), without its weights."""
    from transformers import AutoTokenizer

    from smoothalign.models import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    )
    ensure_pad_token(None, tokenizer)
    return tokenizer


def _check_rank_prompts(config: RankConfig, tokenizer: Any, out: Path) -> _CheckedPrompts:
    """Every check of the prompts, with tokenizers and configs alone (no weights): their
    rows under the policy's ``tokenizer`` (:func:`_split_rank_prompts`), the preference
    model's class (its config), the cut to the limits, the prompts that leave no room
    for a response under the preference model's tokenizer (:func:`_fit_the_preference_model`:
    all its scorer reads of the model is its tokenizer, and ``max_length``), then, resuming
    into ``out``, that they are those its checkpoint was trained on."""
    prompts = _split_rank_prompts(config, tokenizer)
    folder = check_preference_model(config.reward_model)
    # the scorer's tokens need its tokenizer and max_length only: no model to score with
    scorer = PreferenceModelScorer(
        None,
        _preference_tokenizer(folder),
        max_length=config.max_length,
        batch_size=config.score_batch_size,
    )
    info, notes = prompts.info, list(prompts.notes)
    train, evals = _cut_to_the_limits(config, prompts.train, prompts.held_out, notes)
    # a prompt can fit the policy's tokens but not the preference model's (another
    # tokenizer or chat template): find out now, not when its candidates are scored
    train = _fit_the_preference_model(train, scorer, config.on_bad_rows, info, "train", notes)
    scored = _fit_the_preference_model(evals, scorer, config.on_bad_rows, info, "eval", notes)
    # split.json: every held-out prompt (those past --max-eval-prompts too, unscored), less
    # those dropped as too long for the preference model (bad rows, listed in validation.json)
    unfit = {id(ex) for ex in evals} - {id(ex) for ex in scored}
    held_out = [ex for ex in prompts.held_out if id(ex) not in unfit]
    # a resume's prompts: those its checkpoint was trained on (all held-out ones, scored or
    # not: --max-eval-prompts may not change either)
    fingerprint = data_fingerprint(train, held_out, prompt_reads(config), ("prompt", "prompt_ids"))
    resume_note = check_resume_data(config.resume, out, fingerprint)
    return _CheckedPrompts(
        train,
        scored,
        held_out,
        info,
        prompts.md,
        notes,
        prompts.held_out_set,
        fingerprint,
        resume_note,
    )


def save_model_atomically(model: Any, tokenizer: Any, dest: Path) -> Path:
    """``save_pretrained`` (safetensors) into a temp folder beside ``dest``, then swap it in
    (:func:`smoothalign.io.swap_in_folder`): the old folder or the complete new one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        follow_umask(tmp)
        swap_in_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _refuse_an_earlier_final_left_beside(config: RankConfig, out: Path) -> None:
    """With ``save_model`` off, an earlier run's ``final/`` in ``out`` would stay beside
    this run's results and pass for its model: refuse (deleting a model is the user's
    call), unless that folder is the policy being calibrated."""
    final = out / "final"
    if config.save_model or not final.exists():
        return
    policy = Path(config.policy)
    if policy.exists() and final.resolve() in (policy.resolve(), policy.resolve() / "final"):
        return
    raise ValueError(
        f"output_dir: {final} holds an earlier run's model, which this run (--no-save-model) "
        "would leave beside its own results; remove it, save this model (drop "
        "--no-save-model), or choose another --output-dir"
    )


def run_rank_calibration(config: RankConfig) -> RankRunResult:
    """Calibrate ``config.policy`` by ranking its own candidates with ``config.reward_model``.

    Candidates come from the policy being calibrated: generated for every training prompt at
    the start of each epoch (``regenerate``, the default: each round is on-policy) or once
    before the first. Writes into ``config.output_dir``: ``config.json``, ``validation.json``
    (the prompts' data check; ``prompts.json``, its earlier name, holds the same),
    ``data_fingerprint.json`` (the prompts trained and evaluated on; each checkpoint holds
    its own), ``checkpoint-N/`` (every ``save_steps`` and at the last step; what ``resume``
    continues from), ``candidates-epoch-N.jsonl`` (each round's ranked candidates),
    ``metrics.jsonl``,
    ``eval_results.json`` (held-out metrics before/after), ``eval_candidates_before.jsonl``
    / ``eval_candidates_after.jsonl`` (the held-out samples, ranked and scored, with the
    policy's ``s̄`` of each: ``policy_mean_logp``), ``split.json`` (every held-out prompt's
    file and row: ``train.common.split_record``), ``final/``
    (the calibrated policy, safetensors) and, with
    ``config.report``, ``report.md`` and its plots.
    """
    config.validate()
    out = check_output_dir(config.output_dir)  # a file in the way: said before any work
    reward_model = resolve_reward_model_path(config.reward_model)  # a missing path: at once
    loaded = {"policy": loaded_model_path(config.policy), "reward_model": reward_model}
    # before the models load: a mixed-up folder, a bad --resume or a changed option
    prepare_output_dir(out, config.resume)
    found_incomplete = incomplete_checkpoint_names(out)  # what the run may clear at its end
    resume_from = resolve_resume(config.resume, out)
    if resume_from is not None:
        check_resume_config(
            resume_from.parent / "config.json",
            run_config_record(config, loaded),
            config_flags(config),
            resumable=RANK_RESUMABLE,
            paths=RANK_PATHS,
            models=RANK_MODELS,
        )
    _refuse_an_earlier_final_left_beside(config, out)
    if config.save_model and resume_from is None:  # a new run removes an earlier final/
        refuse_own_final_as_input(out, loaded)
    bf16 = resolve_bf16(config.precision)
    check_scheduler(config)
    set_seed(config.seed)
    notes: list[str] = []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    from smoothalign.models import load_model_and_tokenizer

    # every check of the prompts before any weights load (where the policy's tokenizer can
    # be read on its own; else right after the policy loads, still before the preference
    # model): its tokens, the preference model's class (its config alone) and its tokens,
    # and a resume's data
    policy, tok, prompts = load_checked(
        config.policy,
        config.trust_remote_code,
        lambda t: _check_rank_prompts(config, t, out),
        lambda t: load_model_and_tokenizer(
            config.policy, trust_remote_code=config.trust_remote_code, tokenizer=t
        ),
    )
    rm, rm_tok, rm_folder = load_preference_model(config.reward_model)
    notes.append(f"preference model: {rm_folder} ({type(rm).__name__})")
    policy.to(device)
    rm.to(device)
    info, prompts_md, notes = prompts.info, prompts.md, notes + prompts.notes
    train_ex, eval_ex, held_out = prompts.train, prompts.scored, prompts.held_out
    scorer = PreferenceModelScorer(
        rm, rm_tok, max_length=config.max_length, batch_size=config.score_batch_size
    )
    split = split_record(
        train_ex,
        held_out,
        lambda ex: ex,
        held_out_set=prompts.held_out_set,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        n_scored=len(eval_ex),
        eval_limit="--max-eval-prompts",
    )
    if split["held_out_from"] == "--data":  # the held-out rows are the prompts' own
        split["held_out_from"] = "--prompts"
    notes.append(f"held-out prompts: each one's file and row in {SPLIT_FILE}")
    fingerprint, resume_note = prompts.fingerprint, prompts.resume_note
    notes += [resume_note] if resume_note else []
    # every check passed and both models loaded: the run is on. An earlier run's results go
    # now (its report, plots, per-epoch candidates, and the model it saved, which an
    # interrupted run would leave as this folder's), so none of them can pass for this run's
    # (with --no-save-model an earlier final/ is refused above, unless it is the policy).
    # The folder is made only now: a run refused before leaves none, as the other commands
    # A resumed run keeps metrics.jsonl (its trainer rewrites it from the checkpoint's
    # records), its own final/ and the rounds' candidates files up to the checkpoint's.
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        clear_for_new_run(
            out, notes, "candidates-epoch-*.jsonl", "eval_candidates_*.jsonl",
            final=config.save_model,
        )  # fmt: skip
    else:
        clear_earlier_outputs(out, "eval_candidates_*.jsonl", keep=("metrics.jsonl",))
    # the models it loads (a run folder stands for its final/), as dpo, sft and reward record
    # theirs; what was typed is kept as policy_as_given / reward_model_as_given
    atomic_write_json(out / "config.json", run_config_record(config, loaded))
    atomic_write_json(out / VALIDATION_FILE, info)
    atomic_write_json(out / PROMPTS_FILE, info)
    atomic_write_json(out / SPLIT_FILE, split)
    pad_id = int(tok.pad_token_id)
    steps_per_epoch = RankTrainer.steps_per_epoch(len(train_ex), config)
    trainer = RankTrainer(
        policy, config, pad_id=pad_id, steps_per_epoch=steps_per_epoch, bf16=bf16, output_dir=out
    )
    record_data_fingerprint(trainer, out, config.resume, fingerprint)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    def ranked_candidates(examples: list[PromptExample], seed: int, desc: str):
        set_seed(seed)
        ids = generate_candidates(
            policy,
            tok,
            examples,
            num_candidates=config.num_candidates,
            decoding=config.decoding,
            temperature=config.temperature,
            top_k=config.top_k,
            num_beam_groups=config.num_beam_groups,
            diversity_penalty=config.diversity_penalty,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.generation_batch_size,
            desc=desc,
        )
        return score_and_rank(examples, ids, decode, scorer)

    def evaluate(tag: str) -> tuple[dict[str, float], dict[str, np.ndarray], list[RankedPrompt]]:
        ranked = ranked_candidates(
            eval_ex, config.seed + EVAL_SEED_OFFSET, f"held-out candidates ({tag})"
        )
        logps = candidate_mean_logps(
            policy, ranked, pad_id, config.max_length,
            batch_size=config.batch_size, bf16=bf16,
        )  # fmt: skip
        scores = np.array([rp.scores for rp in ranked], dtype=np.float64)
        lengths = np.array([[len(c.ids) for c in rp.candidates] for rp in ranked], dtype=float)
        metrics = ranking_metrics(logps, scores, config.tie_tolerance)
        metrics["length_mean"] = float(lengths.mean())
        return metrics, {"logps": logps, "scores": scores, "lengths": lengths}, ranked

    # a resume evaluates the policy it starts from again (the same samples: their seed is
    # fixed), then takes the checkpoint's weights
    before, arrays_before, ranked_before = evaluate("before")
    atomic_write_text(
        out / "eval_candidates_before.jsonl",
        candidates_jsonl(ranked_before, arrays_before["logps"]),
    )

    start_epoch, start_step, ranked = 0, 0, None
    if resume_from is not None:
        start_epoch, start_step, ranked = trainer.load_checkpoint(resume_from, train_ex)
        notes.append(f"resumed from {resume_from}")
        for path in out.glob("candidates-epoch-*.jsonl"):  # later rounds are made again
            number = path.name[len("candidates-epoch-") : -len(".jsonl")]
            if number.isdigit() and int(number) > start_epoch + 1:
                path.unlink(missing_ok=True)
        trainer.write_metrics()  # the records after the checkpoint are written again
        trainer.restore_rng(resume_from)
    elif config.resume == "latest":
        notes.append("--resume latest: no complete checkpoint yet, started fresh")

    def checkpoint(epoch: int, round_: list[RankedPrompt]):
        def after_step(step_in_epoch: int) -> None:
            step = trainer.global_step
            if not config.save_steps or (step % config.save_steps and step != trainer.total_steps):
                return
            folder = trainer.save_checkpoint(
                out / f"checkpoint-{step}",
                epoch=epoch,
                step_in_epoch=step_in_epoch,
                ranked=round_,
                tokenizer=tok,
            )
            rotate_checkpoints(out, config.save_total_limit, newest=folder)

        return after_step

    t0 = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        resumed = resume_from is not None and epoch == start_epoch
        if resumed:  # the checkpoint's round, from its step on
            trainer.train_epoch(
                ranked, epoch, start=start_step, after_step=checkpoint(epoch, ranked)
            )
            continue
        if ranked is None or config.regenerate:
            ranked = ranked_candidates(
                train_ex, config.seed + epoch, f"candidates (epoch {epoch + 1}/{config.epochs})"
            )
            atomic_write_text(out / f"candidates-epoch-{epoch + 1}.jsonl", candidates_jsonl(ranked))
            scores = np.array([rp.scores for rp in ranked])
            trainer.log(
                {
                    "step": trainer.global_step,
                    "split": "candidates",
                    "epoch": epoch + 1,
                    "candidates/score_mean": float(scores.mean()),
                    "candidates/score_best": float(scores[:, 0].mean()),
                    "candidates/score_spread": float((scores[:, 0] - scores[:, -1]).mean()),
                    "candidates/length_mean": float(
                        np.mean([len(c.ids) for rp in ranked for c in rp.candidates])
                    ),
                }
            )
        trainer.train_epoch(ranked, epoch, after_step=checkpoint(epoch, ranked))
    train_seconds = time.perf_counter() - t0

    after, arrays_after, ranked_after = evaluate("after")
    atomic_write_text(
        out / "eval_candidates_after.jsonl",
        candidates_jsonl(ranked_after, arrays_after["logps"]),
    )
    trainer.log({"step": trainer.global_step, "split": "eval_final", **after})
    atomic_write_json(out / "eval_results.json", {"before": before, "after": after})
    if config.save_model:
        save_model_atomically(policy, tok, out / "final")
    # the run is done: nothing can save there
    clear_incomplete_checkpoints(out, notes, found_incomplete)
    notes.append(
        f"calibration time {train_seconds:.0f} s on {'CUDA' if device.type == 'cuda' else 'CPU'}"
        f" ({trainer.global_step} optimizer step(s))"
    )
    if config.report:
        from smoothalign.rank.report import write_rank_report

        write_rank_report(
            out,
            config=config.to_dict(),
            before=before,
            after=after,
            arrays_before=arrays_before,
            arrays_after=arrays_after,
            records=trainer.records,
            prompts_markdown=prompts_md,
            notes=notes,
        )
    return RankRunResult(
        out, before, after, train_seconds, len(train_ex), len(eval_ex), notes, trainer.records
    )
