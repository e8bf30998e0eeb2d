"""The calibration loop: batches of ranked candidates → length-normalised log-likelihoods →
ranking loss (+ NLL of the reference) → AdamW.

A lean loop rather than ``transformers.Trainer`` (the DPO and reward runs use ``Trainer``):
calibration alternates *generate → score → train* rounds from the current policy, and
``Trainer`` assumes one fixed data set whose length sets its schedule, progress and resume
position; regenerating would mean a new ``Trainer`` per round with the optimizer carried
over by hand and its step counter restarted. The loop here is what a round needs and no
more: seeded shuffling, gradient accumulation, clipping, a ``transformers`` LR schedule
over all rounds, bf16 autocast on CUDA, a progress bar and ``metrics.jsonl`` in the same
record format as the other runs (``step``, ``split``). Single device.

Checkpoints (``--save-steps``) follow the other commands' layout and certification
(:mod:`smoothalign.train.checkpoints`): ``checkpoint-N/`` holds the policy (safetensors, with
its tokenizer: it loads as a model), ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pt``,
:data:`RANK_STATE` (the loop's position, the records and the open logging window, and the
round's ranked candidates, which a resume mid-round trains on again rather than generating
other ones from weights already updated), the run's ``data_fingerprint.json``, and, written
last, ``smoothalign_complete.json``. :meth:`RankTrainer.load_checkpoint` puts all of it back.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from smoothalign.data import IGNORE_INDEX, fit_response
from smoothalign.data.collate import response_labels
from smoothalign.data.tokenization import Spans
from smoothalign.io import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe
from smoothalign.progress import bar_disable
from smoothalign.rank.candidates import Candidate, PromptExample, RankedPrompt
from smoothalign.rank.config import RankConfig
from smoothalign.rank.objective import calibration_terms, mean_token_logps


def collate_sequences(
    sequences: Sequence[tuple[list[int], list[int], Spans | None]], pad_id: int, max_length: int
) -> dict[str, Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``[N, L]`` for
    ``(prompt_ids, response_ids, spans)``; labels hold the response ids (cut to fit
    ``max_length``; with ``spans``, only those of its replies: ``response_labels``) and
    ``IGNORE_INDEX`` elsewhere."""
    rows = []
    for prompt, response, spans in sequences:
        response, _ = fit_response(list(response), len(prompt), max_length)
        scored = response_labels(response, spans)
        if all(t == IGNORE_INDEX for t in scored):
            raise ValueError(
                f"a response has no token left to score within max_length {max_length} "
                f"(prompt of {len(prompt)} tokens)"
            )
        rows.append((list(prompt), response, scored))
    width = max(len(p) + len(r) for p, r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, r, scored) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(scored, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_ranked(
    batch: Sequence[RankedPrompt], pad_id: int, max_length: int, *, with_reference: bool
) -> dict[str, Any]:
    """One forward's worth: the ``B·K`` candidates (prompt-major, best first), then the
    ``B`` references when ``with_reference``; ``scores`` ``[B, K]`` (float64)."""
    ks = {len(rp.candidates) for rp in batch}
    if len(ks) != 1:
        raise ValueError(f"candidates: every prompt needs the same K, got {sorted(ks)}")
    seqs = [(rp.example.prompt_ids, c.ids, None) for rp in batch for c in rp.candidates]
    if with_reference:
        for rp in batch:
            if rp.example.reference_ids is None:
                raise ValueError(f"{rp.example.location}: no reference response for the NLL term")
            ex = rp.example
            seqs.append((ex.prompt_ids, ex.reference_ids, ex.reference_spans))
    out: dict[str, Any] = collate_sequences(seqs, pad_id, max_length)
    out["scores"] = torch.tensor([rp.scores for rp in batch], dtype=torch.float64)
    out["k"] = ks.pop()
    return out


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def policy_mean_logps(model: Any, batch: dict[str, Any], *, bf16: bool = False) -> Tensor:
    """``s̄`` ``[N]`` of every row of a collated batch under ``model`` (float32)."""
    device = next(model.parameters()).device
    with _autocast(device, bf16):
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            use_cache=False,
        ).logits
    s, _ = mean_token_logps(logits.float(), batch["labels"].to(device), IGNORE_INDEX)
    return s


@torch.no_grad()
def candidate_mean_logps(
    model: Any,
    ranked: Sequence[RankedPrompt],
    pad_id: int,
    max_length: int,
    *,
    batch_size: int = 8,
    bf16: bool = False,
) -> np.ndarray:
    """``s̄`` of every candidate ``[P, K]`` (rank order) under ``model``, without gradients."""
    was_training = model.training
    model.eval()
    parts = []
    try:
        for start in range(0, len(ranked), batch_size):
            batch = collate_ranked(
                ranked[start : start + batch_size], pad_id, max_length, with_reference=False
            )
            s = policy_mean_logps(model, batch, bf16=bf16)
            parts.append(s.view(-1, batch["k"]).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy()


RANK_STATE = "rank_state.pt"
OPTIMIZER, SCHEDULER, RNG_STATE = "optimizer.pt", "scheduler.pt", "rng_state.pt"


def _saved(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loaded(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's random states (CUDA's too where there is one), in types
    that ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (set_seed's)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_weights(model: Any, folder: Path) -> None:
    """Put the weights ``save_pretrained`` wrote into ``folder`` (one safetensors file or
    shards) into ``model``; a weight tied to one loaded (the LM head to the embeddings)
    may be missing, any other missing or unexpected one is an error."""
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        state = load_file(single)
    else:
        index = json.loads((folder / "model.safetensors.index.json").read_text("utf-8"))
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(folder / shard))
    result = model.load_state_dict(state, strict=False)
    params = model.state_dict(keep_vars=True)
    loaded = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if untied or result.unexpected_keys:
        raise ValueError(
            f"resume: {folder}'s weights do not fit the policy (missing {untied[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]})"
        )


class RankTrainer:
    """AdamW on the policy with the calibration loss; one :meth:`train_epoch` per round."""

    def __init__(
        self,
        model: Any,
        config: RankConfig,
        *,
        pad_id: int,
        steps_per_epoch: int,
        bf16: bool = False,
        output_dir: str | Path | None = None,
    ) -> None:
        from transformers import get_scheduler

        self.model, self.config, self.pad_id, self.bf16 = model, config, pad_id, bf16
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
        )
        self.total_steps = max(1, steps_per_epoch * config.epochs)
        self.scheduler = get_scheduler(
            config.lr_scheduler,
            self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=self.total_steps,
        )
        self.global_step = 0
        self.records: list[dict[str, Any]] = []
        self.metrics_path = Path(output_dir or config.output_dir) / "metrics.jsonl"
        self._window: dict[str, list[float]] = {}
        # the rows the run trains on (train.data_fingerprint), saved into each checkpoint
        self.data_fingerprint: dict[str, Any] | None = None

    @staticmethod
    def steps_per_epoch(n_prompts: int, config: RankConfig) -> int:
        return math.ceil(math.ceil(n_prompts / config.batch_size) / config.grad_accum)

    def loss_on(self, batch: dict[str, Any]):
        """The calibration terms of one collated batch (gradients flow)."""
        cfg = self.config
        s = policy_mean_logps(self.model, batch, bf16=self.bf16)
        k = batch["k"]
        n_prompts = batch["scores"].shape[0]
        cand = s[: n_prompts * k].view(n_prompts, k)
        ref = s[n_prompts * k :] if cfg.nll_weight > 0 else None
        return calibration_terms(
            cand,
            batch["scores"].to(cand.device),  # float64: the tie mask reads score gaps of 1e-6
            margin=cfg.margin,
            reference_logps=ref,
            nll_weight=cfg.nll_weight,
            tie_tolerance=cfg.tie_tolerance,
        )

    def is_world_process_zero(self) -> bool:
        """One process: it writes everything (``train.data_fingerprint`` asks)."""
        return True

    def train_epoch(
        self,
        ranked: Sequence[RankedPrompt],
        epoch: int,
        *,
        start: int = 0,
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        """One round over ``ranked``, from its optimizer step ``start`` on (a resume: the
        earlier ones were trained before the checkpoint, whose logging window this one
        goes on with); ``after_step(n)`` after its ``n``-th step (a checkpoint's turn)."""
        cfg = self.config
        order = list(range(len(ranked)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        batches = [
            [ranked[i] for i in order[s : s + cfg.batch_size]]
            for s in range(0, len(order), cfg.batch_size)
        ]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n_steps = math.ceil(len(batches) / cfg.grad_accum)
        bar = tqdm(
            total=n_steps,
            initial=start,
            desc=f"calibrating (epoch {epoch + 1}/{cfg.epochs})",
            leave=False,
            disable=bar_disable(False),  # --no-progress
        )
        for step, first in enumerate(range(0, len(batches), cfg.grad_accum)):
            if step < start:
                continue
            group = batches[first : first + cfg.grad_accum]
            n_in_group = sum(len(b) for b in group)
            for b in group:
                batch = collate_ranked(
                    b, self.pad_id, cfg.max_length, with_reference=cfg.nll_weight > 0
                )
                terms = self.loss_on(batch)
                # weight by prompts so that a short last batch counts per prompt, not more
                (terms.losses.sum() / n_in_group).backward()
                self._collect(terms, batch["scores"])
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad],
                cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"),
            )
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            self._window.setdefault("grad_norm", []).append(float(grad_norm))
            bar.update(1)
            if self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps:
                rec = self._flush(epoch)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['rank/pair_accuracy']:.2f}")
            if after_step is not None:
                after_step(step + 1)
        bar.close()
        if self._window:
            self._flush(epoch)

    def _collect(self, terms, scores: Tensor) -> None:
        values = {
            "loss": terms.losses.detach(),
            "rank/loss": terms.ranking.detach(),
            "rank/nll": terms.nll,
            "rank/pair_accuracy": terms.pair_accuracy,
            "candidates/score_mean": scores.mean(1),
            "candidates/score_spread": scores[:, 0] - scores[:, -1],
        }
        for name, t in values.items():
            self._window.setdefault(name, []).extend(t.float().cpu().tolist())

    def _flush(self, epoch: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": self.global_step, "split": "train", "epoch": epoch + 1}
        for name, vals in self._window.items():
            arr = np.asarray(vals, dtype=np.float64)
            rec[name] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
        rec["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        self._window = {}
        self.log(rec)
        return rec

    def log(self, record: dict[str, Any]) -> None:
        """Append a record and rewrite ``metrics.jsonl`` atomically (it is small)."""
        self.records.append(record)
        self.write_metrics()

    def write_metrics(self) -> None:
        text = "".join(json.dumps(json_safe(r)) + "\n" for r in self.records)
        atomic_write_text(self.metrics_path, text)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        folder: Path,
        *,
        epoch: int,
        step_in_epoch: int,
        ranked: Sequence[RankedPrompt],
        tokenizer: Any = None,
    ) -> Path:
        """Save everything a resume needs into ``folder``, certified by
        :data:`~smoothalign.train.checkpoints.COMPLETE_MARKER` written last (a folder saved
        over is uncertified until then). ``epoch`` (0-based) and ``step_in_epoch`` (its
        optimizer steps done) say where the loop is; ``ranked``: the round's candidates."""
        from smoothalign.train.checkpoints import COMPLETE_MARKER
        from smoothalign.train.data_fingerprint import DATA_FINGERPRINT, write_data_fingerprint

        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        atomic_write_bytes(folder / OPTIMIZER, _saved(self.optimizer.state_dict()))
        atomic_write_bytes(folder / SCHEDULER, _saved(self.scheduler.state_dict()))
        atomic_write_bytes(folder / RNG_STATE, _saved(rng_state()))
        state = {
            "global_step": self.global_step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "records": self.records,
            "window": self._window,
            "candidates": [[[c.ids, c.text, c.score] for c in rp.candidates] for rp in ranked],
        }
        atomic_write_bytes(folder / RANK_STATE, _saved(state))
        if self.data_fingerprint is not None:
            write_data_fingerprint(folder, self.data_fingerprint)
        else:  # a folder saved over must not keep an earlier save's
            (folder / DATA_FINGERPRINT).unlink(missing_ok=True)
        atomic_write_json(folder / COMPLETE_MARKER, {"global_step": self.global_step})
        return folder

    def load_checkpoint(
        self, folder: Path, examples: Sequence[PromptExample]
    ) -> tuple[int, int, list[RankedPrompt]]:
        """Put ``folder``'s weights, optimizer, schedule, step, records and open logging
        window back; ``(epoch, step_in_epoch, ranked)``: where the loop goes on, and the
        round's candidates for ``examples`` (the training prompts, as checked by the data
        fingerprint). The random state is put back apart (:meth:`restore_rng`), just
        before training goes on."""
        state = _loaded(folder / RANK_STATE)
        saved = state["candidates"]
        if len(saved) != len(examples):
            raise ValueError(
                f"resume: {folder} holds candidates for {len(saved)} prompts, this run has "
                f"{len(examples)} training prompts"
            )
        load_weights(self.model, folder)
        self.optimizer.load_state_dict(_loaded(folder / OPTIMIZER))
        self.scheduler.load_state_dict(_loaded(folder / SCHEDULER))
        self.global_step = int(state["global_step"])
        self.records = list(state["records"])
        self._window = {name: list(values) for name, values in state["window"].items()}
        ranked = [
            RankedPrompt(ex, [Candidate(list(ids), text, float(score)) for ids, text, score in c])
            for ex, c in zip(examples, saved, strict=True)
        ]
        return int(state["epoch"]), int(state["step_in_epoch"]), ranked

    @staticmethod
    def restore_rng(folder: Path) -> None:
        set_rng_state(_loaded(folder / RNG_STATE))
