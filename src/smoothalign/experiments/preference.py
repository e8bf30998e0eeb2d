"""The noisy-preference benchmark: DPO, cDPO, rDPO, IPO, CALS and oracle-α on the same pairs.

For every ``(seed, flip rate)`` the world (:mod:`.token_world`) draws one training set of
labelled pairs; every method trains a copy of the reference policy on exactly those pairs,
in the same minibatch order, with the project's own objective
(:func:`smoothalign.train.objective.dpo_terms`: the same losses and smoothing policies as
``smoothalign dpo``), and is then scored on held-out prompts against the truth:

1. ``accuracy_true``: the sign of the margin ``h`` on held-out pairs against the true
   preference (pairs with ``q = ½`` left out);
2. ``ece_true`` / ``rms_true`` / ``kl_true``: the forecasts ``σ(h)`` against the true ``q``
   (:func:`smoothalign.calibration.true_preference_metrics`);
3. ``reward``: the mean oracle reward of responses sampled from the policy, and ``kl_ref``:
   the Monte-Carlo estimate of ``KL(π ‖ π_ref)`` on those samples,
   ``mean[log π(y|x) − log π_ref(y|x)]``;
4. ``win_rate``: how often the method's sample beats DPO's sample for the same prompt and
   draw index, judged by the oracle reward (ties count ½), or by a reward model (a judge).

The training loop is deliberately lean (Adam, constant step size, fixed steps): the study
runs hundreds of fits, and ``transformers.Trainer``'s overhead would dominate at this size.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smoothalign.calibration import true_preference_metrics
from smoothalign.experiments.logreg import mean_std
from smoothalign.experiments.token_world import LabelledPairs, PairSet, TokenWorld, TokenWorldConfig
from smoothalign.smoothing import make_policy
from smoothalign.smoothing.votes import vote_confidence
from smoothalign.train.objective import dpo_terms

ALPHA_BINS = 20  # histogram of α over [0, ½]


@dataclass(frozen=True)
class Method:
    """One trained variant. ``flip_rate``: rDPO's assumed ε — a number, ``"true"`` (the
    world's flip rate) or ``"wrong"`` (the true rate + 0.1 up to 0.2, −0.1 above)."""

    name: str
    loss: str = "sigmoid"
    smoothing: str = "none"
    init_confidence: float | None = None  # CALS c₀
    flip_rate: float | str | None = None  # rDPO ε
    warmup_fraction: float | None = None  # CALS warm-up (α = a*(c₀)), a fraction of the steps
    # the q that an oracle-* policy smooths with: "true" (the world's q of each label),
    # "crossfit" (estimated out of fold by plain DPO: crossfit_confidence), or the posterior
    # mean of q given K fresh annotators' votes (smoothalign.smoothing.votes) under a uniform
    # prior ("votes:K") or a prior fitted to all the pairs' votes ("votes-eb:K")
    confidence: str = "true"
    # with a q̂: train on the pairs relabelled so that q̂ >= ½ (chosen ↔ rejected where the
    # estimate says the label is more likely wrong than right), with q̂ → 1 − q̂ there
    relabel: bool = False

    def assumed_flip_rate(self, true_rate: float) -> float:
        if self.flip_rate == "true":
            return float(true_rate)
        if self.flip_rate == "wrong":
            return round(true_rate + 0.1 if true_rate <= 0.2 else true_rate - 0.1, 10)
        return float(self.flip_rate)


def grid_methods() -> list[Method]:
    """The issue's grid (plus CALS warm-up): what ``study preference`` runs by default."""
    methods = [Method("dpo")]
    methods += [Method(f"cdpo-{a:g}", smoothing=f"constant:{a:g}") for a in (0.05, 0.1, 0.2, 0.3)]
    methods += [
        Method("rdpo-true", loss="robust", flip_rate="true"),
        Method("rdpo-wrong", loss="robust", flip_rate="wrong"),
        Method("ipo", loss="ipo"),
    ]
    for metric in ("l0", "l2"):
        for c0 in (0.8, 0.9, 1.0):
            methods.append(
                Method(f"cals-{metric}-c{c0:g}", smoothing=f"cals-{metric}", init_confidence=c0)
            )
    # Not in the grid: the SPEC §4 warm-up, as a remedy for the cold-start stall
    # (plain DPO for the first 20% of the steps, then CALS).
    for metric in ("l0", "l2"):
        methods.append(
            Method(
                f"cals-{metric}-c1-warmup",
                smoothing=f"cals-{metric}",
                init_confidence=1.0,
                warmup_fraction=0.2,
            )
        )
    methods += [Method(f"oracle-{m}", smoothing=f"oracle-{m}") for m in ("l0", "l2")]
    return methods


def source_methods() -> list[Method]:
    """Where a per-pair confidence can come from, besides CALS (the ``sources`` preset):

    * ``xfit-*``: ``a*(q̂)`` with ``q̂`` forecast out of fold by plain DPO (cross-fitting), to
      test whether CALS stalls because it estimates ``q`` from the model being trained;
    * ``votes{K}-*`` / ``votes-eb{K}-*``: ``a*(q̂)`` with ``q̂`` the posterior mean of ``q``
      given ``K`` fresh annotators' votes per pair (:mod:`smoothalign.smoothing.votes`), under
      a uniform or an empirical-Bayes prior — what data sets with several ratings per pair
      offer (``smoothalign dpo``'s per-row ``confidence``);
    * the baselines that use the same votes without the ``a*`` rules (which never reverse a
      label): ``majority{K}``, DPO on the majority vote, and ``soft-eb{K}``, DPO on the
      posterior soft label (relabelled so ``q̂ ≥ ½``, then ``α = 1 − q̂``: the target is
      ``q̂``); and ``oracle-soft``, the same with the true ``q`` (the ideal gradient of
      SPEC §2, ``σ(h) − q``, exactly).
    """
    methods = [
        Method(f"xfit-{m}", smoothing=f"oracle-{m}", confidence="crossfit") for m in ("l0", "l2")
    ]
    methods += [
        Method(f"{kind}{k}-{m}", smoothing=f"oracle-{m}", confidence=f"{kind}:{k}")
        for kind in ("votes", "votes-eb")
        for k in (3, 5)
        for m in ("l0", "l2")
    ]
    for k in (3, 5):
        methods.append(Method(f"majority{k}", confidence=f"votes:{k}", relabel=True))
        methods.append(
            Method(f"soft-eb{k}", smoothing="oracle-l0", confidence=f"votes-eb:{k}", relabel=True)
        )
    methods.append(Method("oracle-soft", smoothing="oracle-l0", relabel=True))
    return methods


METHODS = {m.name: m for m in grid_methods() + source_methods()}
PRESETS = {
    "grid": tuple(m.name for m in grid_methods()),
    "sources": (
        "dpo",
        "cdpo-0.1",
        "cals-l2-c1",
        "oracle-l0",
        "oracle-l2",
        "oracle-soft",
        "xfit-l0",
        "xfit-l2",
        "votes5-l0",
        "votes5-l2",
        "votes-eb3-l0",
        "votes-eb3-l2",
        "votes-eb5-l0",
        "votes-eb5-l2",
        "majority3",
        "majority5",
        "soft-eb3",
        "soft-eb5",
    ),
}
"""Named method lists for ``--methods``: ``grid`` (the default) and ``sources``."""
BASELINE = "dpo"


@dataclass(frozen=True)
class PreferenceStudyConfig:
    flip_rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = PRESETS["grid"]
    train_pairs: int = 4096
    eval_pairs: int = 1024
    sample_prompts: int = 256  # held-out prompts for the samples (one sample each per draw)
    samples_per_prompt: int = 2
    steps: int = 150  # 150 × 128 pairs: ~4.7 epochs of the training pairs
    batch_size: int = 128
    lr: float = 2e-3
    beta: float = 0.5
    ipo_beta: float = 0.1  # IPO's own β: its target log-ratio margin is 1/(2β) = 5
    alpha_windows: int = 30  # α histograms are summed over this many windows of steps
    # the vote-based methods' simulated votes: False, fresh annotators untouched by the flips
    # (the flips corrupt only the released label); True, each vote flipped at the flip rate too
    noisy_votes: bool = False
    world: TokenWorldConfig = field(default_factory=TokenWorldConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
        if not self.methods:
            raise ValueError("methods: at least one")
        bad = [e for e in self.flip_rates if not 0.0 <= e < 0.5]
        if bad or not self.flip_rates:
            raise ValueError(f"flip_rates: each must lie in [0, 0.5), got {list(self.flip_rates)}")
        if not self.seeds:
            raise ValueError("seeds: at least one")
        for name in ("seeds", "flip_rates", "methods"):  # a repeat would be aggregated as
            values = getattr(self, name)  # one more seed
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated value in {list(values)}")
        for key in ("train_pairs", "eval_pairs", "sample_prompts", "samples_per_prompt"):
            if getattr(self, key) < 2:
                raise ValueError(f"{key}: must be >= 2, got {getattr(self, key)}")
        for key in ("steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "beta", "ipo_beta"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")

    @classmethod
    def quick(cls, **overrides: Any) -> PreferenceStudyConfig:
        """About a minute on 2 CPU cores: 7 methods, two flip rates, two seeds, 60 steps."""
        base = dict(
            flip_rates=(0.0, 0.2),
            seeds=(0, 1),
            methods=("dpo", "cdpo-0.1", "rdpo-true", "ipo", "cals-l0-c0.9", "cals-l2-c1")
            + ("oracle-l2",),
            train_pairs=1024,
            eval_pairs=512,
            sample_prompts=128,
            steps=60,  # 60 × 128 pairs: 7.5 epochs of the 1024 training pairs
            world=TokenWorldConfig(ref_steps=120),
        )
        base.update(overrides)
        return cls(**base)

    def ordered_methods(self) -> list[Method]:
        """The methods, the baseline first (the win rates are against its samples)."""
        names = list(dict.fromkeys(self.methods))
        if BASELINE in names:
            names.remove(BASELINE)
        return [METHODS[BASELINE]] + [METHODS[n] for n in names]


# ----------------------------------------------------------------------------- one group
@dataclass
class Heldout:
    """What every method of one seed is scored on."""

    pairs: PairSet
    ref_first: Tensor  # [N] log π_ref(y₁|x)
    ref_second: Tensor
    prompts: Tensor  # [S·M, P]: each sample prompt repeated M times


def make_heldout(world: TokenWorld, cfg: PreferenceStudyConfig) -> Heldout:
    pairs = world.pairs(cfg.eval_pairs, 2)
    with torch.no_grad():
        ref_first = world.logps(world.reference, pairs.prompts, pairs.first)
        ref_second = world.logps(world.reference, pairs.prompts, pairs.second)
    prompts = world.sample_prompts(cfg.sample_prompts, world.generator(5))
    return Heldout(
        pairs, ref_first, ref_second, prompts.repeat_interleave(cfg.samples_per_prompt, 0)
    )


def train_method(
    world: TokenWorld,
    data: LabelledPairs,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    method: Method,
    flip_rate: float,
    cfg: PreferenceStudyConfig,
    order_seed: int,
    confidence: Tensor | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a copy of the reference on ``data``; return it and the training trace.
    ``confidence`` (``[N]``) replaces the true ``q`` of each label for oracle-* policies."""
    q = data.q_chosen if confidence is None else confidence
    options: dict[str, Any] = {}
    if method.init_confidence is not None:
        options["init_confidence"] = method.init_confidence
    if method.warmup_fraction is not None:
        options["warmup_steps"] = round(method.warmup_fraction * cfg.steps)
    policy = make_policy(method.smoothing, **options)
    loss_options: dict[str, Any] = {}
    if method.loss == "robust":
        loss_options["flip_rate"] = method.assumed_flip_rate(flip_rate)
    elif method.loss == "ipo":
        loss_options["beta"] = cfg.ipo_beta
    beta = cfg.ipo_beta if method.loss == "ipo" else cfg.beta  # IPO's h/β is its log-ratio

    model = copy.deepcopy(world.reference).train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = world.generator(6, order_seed)
    n = data.prompts.shape[0]
    perm, pos = torch.randperm(n, generator=g), 0
    window = -(-cfg.steps // cfg.alpha_windows)  # steps per histogram window
    alpha_hist = np.zeros((-(-cfg.steps // window), ALPHA_BINS), dtype=np.int64)
    losses, alpha_mean = [], []
    for step in range(cfg.steps):
        if pos >= n:  # a new epoch (a last partial batch was its own, smaller batch)
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += idx.shape[0]
        prompts = data.prompts[idx]
        both = world.logps(
            model, torch.cat([prompts, prompts]), torch.cat([data.chosen[idx], data.rejected[idx]])
        )
        b = idx.shape[0]
        terms = dpo_terms(
            both[:b],
            both[b:],
            ref_chosen[idx],
            ref_rejected[idx],
            beta=beta,
            loss=method.loss,
            policy=policy,
            loss_options=loss_options,
            confidence=q[idx].float(),
        )
        loss = terms.losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        a = terms.alpha.double().clamp(0, 0.5)
        alpha_mean.append(float(a.mean()))
        alpha_hist[step // window] += (
            torch.histc(a, bins=ALPHA_BINS, min=0.0, max=0.5).long().numpy()
        )
    model.eval().requires_grad_(False)
    trace = {
        "loss": losses,
        "alpha_mean": alpha_mean,
        "alpha_hist": alpha_hist.tolist(),
        "alpha_hist_window": window,
    }
    return model, trace


CROSSFIT_FOLDS = 2


def crossfit_confidence(
    world: TokenWorld,
    data: LabelledPairs,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    cfg: PreferenceStudyConfig,
    folds: int = CROSSFIT_FOLDS,
) -> Tensor:
    """Each label's confidence ``q̂ = σ(h)`` ``[N]`` (float64), forecast by plain DPO trained
    on the *other* folds of the pairs (as many epochs as the full run), so no pair's estimate
    has seen its own label. Folds are a seeded random partition."""
    n = data.prompts.shape[0]
    fold = torch.randperm(n, generator=world.generator(8)) % folds
    q_hat = torch.empty(n, dtype=torch.float64)
    steps = max(1, round(cfg.steps * (folds - 1) / folds))
    sub_cfg = replace(cfg, steps=steps)
    for k in range(folds):
        train, held = fold != k, fold == k
        sub = LabelledPairs(
            data.prompts[train],
            data.chosen[train],
            data.rejected[train],
            data.q_chosen[train],
            data.flipped[train],
        )
        model, _ = train_method(
            world,
            sub,
            ref_chosen[train],
            ref_rejected[train],
            METHODS[BASELINE],
            0.0,
            sub_cfg,
            k + 1,
        )
        with torch.no_grad():
            lp_c = world.logps(model, data.prompts[held], data.chosen[held])
            lp_r = world.logps(model, data.prompts[held], data.rejected[held])
        h = cfg.beta * ((lp_c - ref_chosen[held]) - (lp_r - ref_rejected[held]))
        q_hat[held] = torch.sigmoid(h.double())
    return q_hat


def simulated_votes(
    world: TokenWorld, data: LabelledPairs, annotators: int, flip_rate: float = 0.0
) -> Tensor:
    """``annotators`` fresh Bradley–Terry annotators' votes for each labelled winner ``[N]``:
    ``Binomial(K, q')`` with ``q' = q·(1 − ε) + (1 − q)·ε``, the pair's true ``q`` with each
    vote flipped at rate ``ε = flip_rate`` (0: the votes ignore the label's flip)."""
    from smoothalign.reward.data import simulate_votes

    q = data.q_chosen.numpy()
    q = q * (1 - flip_rate) + (1 - q) * flip_rate
    rng = np.random.default_rng([world.seed, 0x7073, annotators])
    return torch.from_numpy(simulate_votes(q, annotators, rng))


def relabelled(
    data: LabelledPairs, ref_chosen: Tensor, ref_rejected: Tensor, q_hat: Tensor
) -> tuple[LabelledPairs, Tensor, Tensor, Tensor]:
    """The pairs with chosen ↔ rejected swapped where ``q̂ < ½``; their reference log-probs
    and ``q̂`` (``1 − q̂`` where swapped) to match."""
    swap = q_hat < 0.5
    col = swap[:, None]
    out = LabelledPairs(
        prompts=data.prompts,
        chosen=torch.where(col, data.rejected, data.chosen),
        rejected=torch.where(col, data.chosen, data.rejected),
        q_chosen=torch.where(swap, 1 - data.q_chosen, data.q_chosen),
        flipped=data.flipped ^ swap,
    )
    return (
        out,
        torch.where(swap, ref_rejected, ref_chosen),
        torch.where(swap, ref_chosen, ref_rejected),
        torch.where(swap, 1 - q_hat, q_hat),
    )


def method_confidence(
    method: Method,
    world: TokenWorld,
    data: LabelledPairs,
    crossfit: Callable[[], Tensor],
    vote_flip_rate: float = 0.0,
) -> Tensor | None:
    """The ``q`` that ``method``'s oracle-* policy smooths with; None: the world's true q.
    Votes are flipped at ``vote_flip_rate``."""
    if method.confidence == "true":
        return None
    if method.confidence == "crossfit":
        return crossfit()
    kind, _, k = method.confidence.partition(":")
    priors = {"votes": "uniform", "votes-eb": "empirical"}
    if kind not in priors or not k.isdigit() or int(k) < 1:
        raise ValueError(f"{method.name}: unknown confidence {method.confidence!r}")
    votes = simulated_votes(world, data, int(k), vote_flip_rate)
    return vote_confidence(votes, int(k), prior=priors[kind])


@torch.no_grad()
def evaluate(
    world: TokenWorld, model: torch.nn.Module, held: Heldout, beta: float, sample_seed: int
) -> tuple[dict[str, float], Tensor]:
    """Held-out metrics against the truth; also the samples ``[S·M, L]`` and their oracle
    rewards ``[S·M]``."""
    p = held.pairs
    lp_first = world.logps(model, p.prompts, p.first)
    lp_second = world.logps(model, p.prompts, p.second)
    margins = beta * ((lp_first - held.ref_first) - (lp_second - held.ref_second))
    metrics = true_preference_metrics(margins.double().numpy(), p.q.numpy())
    samples = world.sample(model, held.prompts, world.generator(7, sample_seed))
    reward = world.reward(held.prompts, samples)
    kl = world.logps(model, held.prompts, samples) - world.logps(
        world.reference, held.prompts, samples
    )
    metrics |= {"reward": float(reward.mean()), "kl_ref": float(kl.mean())}
    return metrics, samples, reward


def win_rate(scores: Tensor, baseline_scores: Tensor) -> float:
    """``P(score > baseline) + ½·P(score = baseline)`` over paired samples."""
    s, b = scores.double(), baseline_scores.double()
    return float(((s > b).double() + 0.5 * (s == b).double()).mean())


def run_group(
    cfg: PreferenceStudyConfig,
    seed: int,
    flip_rate: float,
    judge_path: str | None = None,
    methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Every method on one ``(seed, flip rate)``: the same pairs, batches and sample draws.

    The forecasts of every method, IPO's included, are read at the study's DPO ``β``, so
    that their calibration is comparable; IPO trains with its own ``ipo_beta``.
    ``methods``: only these methods' records (the others of the group were run before); the
    baseline still trains first, its samples being what the win rates are against. A
    method's record does not depend on which other methods run beside it.
    """
    wanted = None if methods is None else set(methods)
    judge = _judge(judge_path)
    sw = seed_world(cfg, seed)
    world, held = sw.world, sw.held
    data = sw.train.labelled(flip_rate)
    with torch.no_grad():
        ref_c = world.logps(world.reference, data.prompts, data.chosen)
        ref_r = world.logps(world.reference, data.prompts, data.rejected)
    records: list[dict[str, Any]] = []
    base_scores: Tensor | None = None
    q_hat: list[Tensor] = []  # cross-fitted label confidences, shared by the xfit methods

    def crossfit() -> Tensor:
        if not q_hat:
            q_hat.append(crossfit_confidence(world, data, ref_c, ref_r, cfg))
        return q_hat[0]

    for method in cfg.ordered_methods():
        if wanted is not None and method.name not in wanted and method.name != BASELINE:
            continue
        t0 = time.perf_counter()
        vote_flips = flip_rate if cfg.noisy_votes else 0.0
        confidence = method_confidence(method, world, data, crossfit, vote_flips)
        train, train_c, train_r = data, ref_c, ref_r
        if method.relabel:
            if confidence is None:  # the true q
                confidence = data.q_chosen
            train, train_c, train_r, confidence = relabelled(data, ref_c, ref_r, confidence)
        model, trace = train_method(
            world, train, train_c, train_r, method, flip_rate, cfg, 0, confidence
        )
        metrics, samples, reward = evaluate(world, model, held, cfg.beta, 0)
        scores = reward if judge is None else judge.score_tokens(world, held.prompts, samples)
        if method.name == BASELINE:
            base_scores = scores
        rec: dict[str, Any] = {
            "seed": seed,
            "flip_rate": flip_rate,
            "method": method.name,
            **metrics,
            "win_rate": win_rate(scores, base_scores) if base_scores is not None else None,
            "final_loss": float(np.mean(trace["loss"][-10:])),
            "final_alpha_mean": float(np.mean(trace["alpha_mean"][-10:])),
            "flipped_fraction": float(data.flipped.double().mean()),
            "seconds": time.perf_counter() - t0,
        }
        if confidence is not None:  # how good the estimate of q was, on the training pairs
            q_true = train.q_chosen.numpy()
            rec["q_hat_mae"] = float(np.abs(confidence.numpy() - q_true).mean())
            rec["q_hat_corr"] = float(np.corrcoef(confidence.numpy(), q_true)[0, 1])
        if method.smoothing.startswith(("cals", "oracle")):
            rec["alpha_hist"] = trace["alpha_hist"]
            rec["alpha_hist_window"] = trace["alpha_hist_window"]
        rec["alpha_mean_curve"] = trace["alpha_mean"]
        if wanted is None or method.name in wanted:
            records.append(rec)
    return records


@dataclass
class SeedWorld:
    """One seed's world, its training pairs (before flips) and its held-out sets."""

    world: TokenWorld
    train: PairSet
    held: Heldout


# Cached per process: the reference SFT is the costly part of a (seed, flip rate) group.
_SEED_WORLDS: dict[tuple[Any, ...], SeedWorld] = {}


def seed_world(cfg: PreferenceStudyConfig, seed: int) -> SeedWorld:
    sizes = (cfg.train_pairs, cfg.eval_pairs, cfg.sample_prompts, cfg.samples_per_prompt)
    key = (cfg.world, seed, *sizes)
    if key not in _SEED_WORLDS:
        _SEED_WORLDS.clear()
        world = TokenWorld(cfg.world, seed)
        _SEED_WORLDS[key] = SeedWorld(
            world, world.pairs(cfg.train_pairs, 1), make_heldout(world, cfg)
        )
    return _SEED_WORLDS[key]


_JUDGES: dict[str, Any] = {}


def _judge(path: str | None) -> Any | None:
    """The reward-model judge at ``path`` (loaded once per process), or None: the oracle."""
    if path is None:
        return None
    if path not in _JUDGES:
        from smoothalign.experiments.judge import RewardModelJudge

        _JUDGES[path] = RewardModelJudge(path)
    return _JUDGES[path]


# ----------------------------------------------------------------------------- the grid
def single_thread_group(args: tuple) -> list[dict[str, Any]]:
    from smoothalign.experiments.logreg import single_thread

    with single_thread():
        return run_group(*args)


# ----------------------------------------------------------------------------- finished runs
FINISHED_DIR = "finished_groups"  # in the output folder, while a study is under way
RESULTS_FILE = "results.json"  # in the output folder, once a study has finished

EXTENDABLE = ("seeds", "flip_rates", "methods")
"""What a rerun into the same output folder may add to: every ``(seed, flip rate, method)``
run depends only on the other options, so the runs already there are reused."""

# how the refusals name a config field: its flag, where the command has one
_FLAGS = {
    "train_pairs": "--train-pairs",
    "eval_pairs": "--eval-pairs",
    "sample_prompts": "--sample-prompts",
    "steps": "--steps",
    "lr": "--lr",
    "beta": "--beta",
    "noisy_votes": "--noisy-votes",
    "world": "--quick (the world: its reference's training)",
    "judge": "--judge",
}

RunKey = tuple[int, float, str]  # (seed, flip rate, method)
Definitions = dict[str, dict[str, Any]]  # method name -> method_definition
# a run read back, with the definitions of the methods that its study recorded (None: none)
Found = dict[RunKey, tuple[dict[str, Any], Definitions | None]]


def method_definition(method: Method) -> dict[str, Any]:
    """A method's definition, canonical: every field of its :class:`Method` (loss, smoothing,
    c₀, ε, warm-up, confidence source, relabelling), as JSON gives it back. A study records
    the definitions of its methods beside its runs (``methods`` in ``results.json`` and in
    each finished group), so that a rerun reuses a run only if its method, and the baseline
    whose samples its win rate is against, are still defined the same: a method is known to
    a rerun by its name, and a name can come to mean another method."""
    import json

    return json.loads(json.dumps(asdict(method)))


def _recorded_definitions(methods: Any) -> Definitions | None:
    """A study's recorded ``methods`` (a list of definitions) by name; None if it has none
    (a finished group written before they were recorded)."""
    if methods is None:
        return None
    return {m["name"]: m for m in methods}


def _changes(was: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if was is None:
        return "not recorded"
    return ", ".join(
        f"{k} {was.get(k)!r} (now {now.get(k)!r})"
        for k in sorted({*was, *now})
        if was.get(k) != now.get(k)
    )


def _stale_reason(name: str, recorded: Definitions | None, now: Definitions) -> str | None:
    """Why a run of method ``name`` made with the ``recorded`` definitions is not what this
    study would make (None: it is, or the study does not ask for ``name``)."""
    if name not in now:
        return None
    if recorded is None:
        return "their methods' definitions were not recorded (an earlier version's runs)"
    if recorded.get(name) != now[name]:
        return f"{name} was defined otherwise: {_changes(recorded.get(name), now[name])}"
    if name != BASELINE and recorded.get(BASELINE) != now[BASELINE]:
        return (
            f"the baseline {BASELINE}, whose samples the win rates are against, was defined "
            f"otherwise: {_changes(recorded.get(BASELINE), now[BASELINE])}"
        )
    return None


def _reusable(
    found: Found, cfg: PreferenceStudyConfig
) -> tuple[dict[RunKey, dict[str, Any]], dict[RunKey, str]]:
    """``found`` split into the runs that this study may reuse and the stale ones: runs of
    a method, or against a baseline, defined otherwise than now, or whose definitions were
    not recorded (with why), which are trained again rather than trusted."""
    now = {m.name: method_definition(m) for m in cfg.ordered_methods()}
    reuse: dict[RunKey, dict[str, Any]] = {}
    stale: dict[RunKey, str] = {}
    for key, (run, recorded) in found.items():
        reason = _stale_reason(key[2], recorded, now)
        if reason is None:
            reuse[key] = run
        else:
            stale[key] = reason
    return reuse, stale


def _group_file(folder: Path, seed: int, flip_rate: float) -> Path:
    return folder / f"seed-{seed}_flip-{flip_rate!r}.json"


def _group_options(cfg: PreferenceStudyConfig, judge_path: str | None) -> dict[str, Any]:
    """What a finished group's records depend on, as JSON gives it back."""
    import json

    judge = None if judge_path is None else os.path.abspath(judge_path)
    return json.loads(json.dumps({"config": asdict(cfg), "judge": judge}))


def _differences(saved: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The options, beside :data:`EXTENDABLE`, in which ``saved`` (a ``_group_options``)
    differs from ``want``: ``--steps 2 (this run: 3)``."""
    old, new = saved.get("config") or {}, want["config"]
    pairs = [(k, old.get(k), new.get(k)) for k in sorted({*old, *new}) if k not in EXTENDABLE]
    pairs.append(("judge", saved.get("judge"), want["judge"]))
    return [
        f"{_FLAGS.get(k, k)} {was!r} (this run: {now!r})" for k, was, now in pairs if was != now
    ]


def _refuse_other_options(where: str, differ: list[str], remove: Path) -> None:
    raise ValueError(
        f"{where} holds runs of a study with other options: {', '.join(differ)}. A rerun into "
        "the same --output-dir may add seeds, flip rates and methods, and nothing else: rerun "
        f"with those options, or pass another --output-dir (or delete {remove}) to start afresh"
    )


def _runs_of_groups(folder: Path, cfg: PreferenceStudyConfig, judge_path: str | None) -> Found:
    """The runs of the groups that an earlier, interrupted run finished, from ``folder``
    (none there: none), each with its methods' recorded definitions."""
    import json

    found: Found = {}
    if not folder.is_dir():
        return found
    want = _group_options(cfg, judge_path)
    for path in sorted(folder.glob("seed-*_flip-*.json")):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            options, records = saved["options"], saved["runs"]
            recorded = _recorded_definitions(saved.get("methods"))
            found.update({(r["seed"], r["flip_rate"], r["method"]): (r, recorded) for r in records})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not a finished group of this study ({e}); delete {folder} to start afresh"
            ) from e
        differ = _differences(options, want)
        if differ:
            where = f"{folder} (an interrupted study's finished groups)"
            _refuse_other_options(where, differ, folder)
    return found


def _runs_of_results(path: Path, cfg: PreferenceStudyConfig, judge_path: str | None) -> Found:
    """The runs of a finished study's ``results.json`` (none there: none), each with its
    methods' recorded definitions."""
    import json

    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        config, runs = results["config"], results["runs"]
        recorded = _recorded_definitions(results.get("methods"))
        found = {(r["seed"], r["flip_rate"], r["method"]): (r, recorded) for r in runs}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not a preference study's results ({e}); pass another --output-dir, or "
            "delete it"
        ) from e
    if "judge_path" in results:
        judge = results["judge_path"]
    else:  # written before the judge's path was: the oracle's name, or a judge's description
        judge = None if results.get("judge") == "oracle reward" else results.get("judge")
    differ = _differences({"config": config, "judge": judge}, _group_options(cfg, judge_path))
    if differ:
        _refuse_other_options(f"{path} (a finished study)", differ, path)
    return found


def finished_runs(
    out_dir: str | os.PathLike, cfg: PreferenceStudyConfig, judge_path: str | None
) -> tuple[dict[RunKey, dict[str, Any]], dict[RunKey, str]]:
    """The runs that an earlier study left in ``out_dir``, by ``(seed, flip rate, method)``:
    a finished one's ``results.json`` and an interrupted one's ``finished_groups/``. Returns
    those to be reused instead of trained again, and the stale ones, to be trained again,
    with why: runs of a method (or against a baseline) that is now defined otherwise than
    when they were made (compared by :func:`method_definition`, not by name), or whose
    definitions were not recorded (made by an earlier version: they might be anything). A
    ``ValueError`` if they were made with other options than ``cfg``'s beside
    :data:`EXTENDABLE` (naming them), and if ``cfg`` does not ask for all of them (the new
    ``results.json`` would lose those): both before any training."""
    out = Path(out_dir)
    runs = _runs_of_results(out / RESULTS_FILE, cfg, judge_path)
    runs.update(_runs_of_groups(out / FINISHED_DIR, cfg, judge_path))
    asked = {
        "seeds": set(cfg.seeds),
        "flip rates": set(cfg.flip_rates),
        "methods": {m.name for m in cfg.ordered_methods()},
    }
    left_out = {what: sorted({k[i] for k in runs} - asked[what]) for i, what in enumerate(asked)}
    left_out = {what: values for what, values in left_out.items() if values}
    if left_out:
        listed = "; ".join(f"{what} {', '.join(map(str, v))}" for what, v in left_out.items())
        raise ValueError(
            f"{out} holds runs that this study does not ask for ({listed}): the new "
            f"{RESULTS_FILE} would lose them. A rerun into the same --output-dir may add seeds, "
            "flip rates and methods: ask for those too, or pass another --output-dir"
        )
    return _reusable(runs, cfg)


def run_study(
    cfg: PreferenceStudyConfig,
    *,
    workers: int = 1,
    judge_path: str | None = None,
    progress: bool = True,
    finished_dir: str | os.PathLike | None = None,
    reuse: dict[RunKey, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every ``(seed, flip rate)`` group; return config, runs and aggregates.

    ``reuse``: runs made earlier with these options (:func:`finished_runs`), by ``(seed,
    flip rate, method)``, which are not trained again; a group trains only its other
    methods (and the baseline, whose samples the win rates need). With ``finished_dir``,
    each group's runs are written there (atomically) as soon as the group finishes, and
    when ``reuse`` is None the groups already there are read (other options are refused;
    runs of methods defined otherwise now train again)."""
    from tqdm.auto import tqdm

    from smoothalign.io import atomic_write_json

    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    folder = Path(finished_dir) if finished_dir is not None else None
    if reuse is None:
        found = _runs_of_groups(folder, cfg, judge_path) if folder is not None else {}
        reuse = _reusable(found, cfg)[0]  # the stale ones train again
    names = [m.name for m in cfg.ordered_methods()]
    keys = [(s, e) for s in cfg.seeds for e in cfg.flip_rates]
    missing = [[n for n in names if (*k, n) not in reuse] for k in keys]
    out: list[list[dict[str, Any]] | None] = [
        None if miss else [reuse[(*k, n)] for n in names]
        for k, miss in zip(keys, missing, strict=True)
    ]
    todo = [i for i, group in enumerate(out) if group is None]
    jobs = {
        i: (cfg, *keys[i], judge_path, None if len(missing[i]) == len(names) else missing[i])
        for i in todo
    }
    options = _group_options(cfg, judge_path) if folder is not None else None
    definitions = [method_definition(m) for m in cfg.ordered_methods()]

    def finished(i: int, records: list[dict[str, Any]]) -> None:
        new = {r["method"]: r for r in records}
        out[i] = [new[n] if n in new else reuse[(*keys[i], n)] for n in names]
        if folder is not None:
            seed, flip_rate = keys[i]
            record = {
                "options": options,
                "methods": definitions,  # a rerun reuses a run only if they still hold
                "seed": seed,
                "flip_rate": flip_rate,
                "runs": out[i],
            }
            atomic_write_json(_group_file(folder, seed, flip_rate), record)

    n_runs = len(keys) * len(names)
    t0 = time.perf_counter()
    bar = tqdm(
        total=n_runs,
        initial=n_runs - sum(len(missing[i]) for i in todo),
        desc="preference runs",
        unit="run",
        disable=not progress,
    )
    with bar:
        if workers == 1 or len(jobs) <= 1:
            for i, job in jobs.items():
                finished(i, single_thread_group(job))
                bar.update(len(missing[i]))
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(single_thread_group, job): i for i, job in jobs.items()}
                for fut in cf.as_completed(futures):
                    finished(futures[fut], fut.result())
                    bar.update(len(missing[futures[fut]]))
    runs = [r for group in out if group is not None for r in group]
    return {
        "config": asdict(cfg),
        # every run's method and the baseline are defined so (a rerun compares them)
        "methods": definitions,
        "runs": runs,
        "aggregates": aggregate(runs),
        "seconds": time.perf_counter() - t0,
        "workers": workers,
        "judge": "oracle reward" if judge_path is None else _judge(judge_path).describe(),
        "judge_path": _group_options(cfg, judge_path)["judge"],  # a rerun checks it
        "torch_version": torch.__version__,
        # read from an earlier run (a finished study's results.json, an interrupted one's
        # finished groups): whole (seed, flip rate) groups, and runs
        "groups_resumed": len(keys) - len(todo),
        "runs_reused": n_runs - sum(len(missing[i]) for i in todo),
    }


METRICS = ("accuracy_true", "ece_true", "rms_true", "kl_true", "reward", "kl_ref", "win_rate")
METRICS_EXTRA = ("final_alpha_mean", "brier_true", "q_hat_mae", "q_hat_corr")


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds for every ``(flip rate, method)``, in first-seen order."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["flip_rate"], r["method"]), []).append(r)
    out = []
    for (eps, method), rs in sorted(groups.items(), key=lambda kv: kv[0][0]):
        row: dict[str, Any] = {"flip_rate": eps, "method": method, "seeds": len(rs)}
        for k in (*METRICS, *METRICS_EXTRA):
            # an undefined value (NaN; null once written to results.json) is left out, the
            # same way in the run and in --from-results
            vals = [r[k] for r in rs if r.get(k) is not None and not math.isnan(r[k])]
            if vals:
                row[f"{k}_mean"], row[f"{k}_std"] = mean_std(vals)
                if len(vals) < len(rs):  # the seeds behind the std, where fewer: its table
                    row[f"{k}_n"] = len(vals)  # prints no spread over one
        out.append(row)
    return out
