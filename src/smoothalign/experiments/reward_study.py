"""Reward models from soft labels: which loss recovers the true preference, and a calibrated one?

The world (every choice is a field of :class:`RewardStudyConfig` and lands in the results):

* each response has features ``φ ~ N(0, I_d)``; the true reward is ``r*(y) = θ*·φ(y)`` with
  ``θ* = signal · u``, ``u`` uniform on the unit sphere;
* a pair's true preference is Bradley–Terry with temperature ``τ``:
  ``q = P(y₁ ≻ y₂) = σ((r*(y₁) − r*(y₂)) / τ)``;
* ``K`` annotators vote independently under that ``q`` (``votes ~ Binomial(K, q)``); by
  default the pair is written majority first, as data sets label ``chosen`` (a tie keeps
  the random order; ``order="random"``: a fair coin), with ``p_chosen`` = the vote share of
  the first response. ``bt`` sees only the majority label, the others the share.
* the models are linear, ``r(y) = θ·φ(y)`` from ``θ = 0``: Adam (or SGD) with a
  cosine-decayed step size on minibatches (the posterior target's normaliser is a batch
  statistic, SPEC §6), the same minibatch sequence for every method: each pass is a fresh
  shuffle cut into full batches, its last ``n mod batch_size`` pairs left for that pass (a
  different few each pass; with ``n`` < ``batch_size`` each step is the whole set). All methods of one
  ``(K, seed)`` and training size are fitted together, each on its own row of ``θ`` ``[M, d]``.
* held-out metrics on ``n_test`` fresh pairs against the *truth*: accuracy of
  ``sign(θ·x)`` against ``sign(θ*·x)``, ECE / RMS (20 bins, both orders) and mean
  ``KL(q ‖ σ(θ·x))`` against the true ``q``, the cosine of ``θ`` with ``θ*`` and the scale
  ``‖θ‖ / ‖θ*/τ‖`` (1 for a calibrated model). Convergence: held-out KL and accuracy at
  ``eval_points`` log-spaced steps; summarised as both after 5% of the steps, and the lowest
  KL along the way with its step (what early stopping on the truth could get).

Run it: ``python -m smoothalign.experiments.reward_study --output-dir outputs/reward_study``
(``--quick`` for a seconds-long smoke run, ``--lm`` adds the tiny-LM pipeline on the oracle
text world). Writes ``results.json``, ``table.md`` and ``reward_convergence.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smoothalign.calibration import true_preference_metrics
from smoothalign.experiments.logreg import mean_pm, mean_std, n_of
from smoothalign.reward.objective import majority_first_margins, reward_loss
from smoothalign.smoothing import make_policy

DTYPE = torch.float64


@dataclass(frozen=True)
class RewardMethod:
    name: str  # key in results.json
    label: str  # for tables and plots
    loss: str  # smoothalign.reward.objective loss
    posterior: bool = False
    smoothing: str = "none"


METHODS: tuple[RewardMethod, ...] = (
    RewardMethod("bt", "BT (majority)", "bt"),
    RewardMethod("bt-cals-l2", "BT + CALS-ℓ2", "bt", smoothing="cals-l2"),
    RewardMethod("soft-bce", "soft-BCE", "soft-bce"),
    RewardMethod("fkl", "FKL", "fkl"),
    RewardMethod("rkl", "RKL", "rkl"),
    RewardMethod("jsd", "JSD", "jsd"),
    RewardMethod("fkl-post", "FKL + post.", "fkl", posterior=True),
    RewardMethod("rkl-post", "RKL + post.", "rkl", posterior=True),
    RewardMethod("jsd-post", "JSD + post.", "jsd", posterior=True),
)
BASELINE = "bt"


@dataclass(frozen=True)
class RewardStudyConfig:
    """Everything that determines the study's numbers (written into results.json)."""

    dim: int = 16
    n_train: tuple[int, ...] = (500, 2000)
    annotators: tuple[int, ...] = (1, 3, 7, 15)
    seeds: tuple[int, ...] = tuple(range(10))
    signal: float = 1.5  # ‖θ*‖
    temperature: float = 1.0  # τ of the annotators' Bradley–Terry model
    steps: int = 600
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.05  # peak step size (cosine decay to 0)
    eval_points: int = 40  # held-out evaluations, log-spaced over the steps
    n_test: int = 20000
    order: str = "majority-first"  # how pairs are presented: majority-first | random
    methods: tuple[str, ...] = tuple(m.name for m in METHODS)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim: must be >= 1, got {self.dim}")
        if not self.n_train or any(n < 2 for n in self.n_train):
            raise ValueError(f"n_train: need sizes >= 2, got {self.n_train}")
        if not self.annotators or any(k < 1 for k in self.annotators):
            raise ValueError(f"annotators: need counts >= 1, got {self.annotators}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed (--seeds N runs seeds 0..N-1)")
        for name in ("seeds", "n_train", "annotators"):  # a repeat would count as a seed
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated value in {values}")
        for name in ("signal", "temperature", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("steps", "batch_size", "eval_points", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer: {self.optimizer!r}; choose adam or sgd")
        if self.order not in ("majority-first", "random"):
            raise ValueError(f"order: {self.order!r}; choose majority-first or random")
        known = {m.name for m in METHODS}
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods:
            raise ValueError(f"methods: unknown {unknown}; choose from {sorted(known)}")

    @classmethod
    def quick(cls, **overrides: Any) -> RewardStudyConfig:
        """A seconds-long version for tests and smoke runs (same code path, tiny grid)."""
        base: dict[str, Any] = dict(
            dim=8, n_train=(400,), annotators=(5,), seeds=(0, 1), steps=150, n_test=4000
        )
        base.update(overrides)
        return cls(**base)

    def method_list(self) -> list[RewardMethod]:
        by_name = {m.name: m for m in METHODS}
        return [by_name[n] for n in self.methods]


# ----------------------------------------------------------------------------- world
@dataclass
class World:
    """One ``(K, seed)``: the truth, a training pool of ``max(n_train)`` pairs, a test set."""

    theta_star: Tensor  # [d]
    phi_chosen: Tensor  # [N, d] features of the majority-preferred response
    phi_rejected: Tensor  # [N, d]
    p_chosen: Tensor  # [N] vote share of chosen
    q_chosen: Tensor  # [N] true P(chosen wins)
    x_test: Tensor  # [T, d] φ(y₁) − φ(y₂) of fresh pairs
    q_test: Tensor  # [T] true P(y₁ wins)


def make_world(
    dim: int,
    annotators: int,
    seed: int,
    *,
    n_train: int,
    n_test: int,
    signal: float,
    temperature: float,
    order: str = "majority-first",
) -> World:
    """Draw the truth, ``n_train`` voted training pairs and ``n_test`` test pairs.

    ``θ*`` and the test set depend on ``(dim, seed)`` only, so runs with different numbers
    of annotators share the truth and the test set; the votes depend on ``annotators`` too.
    """
    from smoothalign.reward.data import simulate_votes

    rng = np.random.default_rng([int(seed), int(dim), 7])
    u = rng.standard_normal(dim)
    theta_star = signal * u / np.linalg.norm(u)
    x_test = rng.standard_normal((n_test, dim)) - rng.standard_normal((n_test, dim))
    q_test = _sigmoid(x_test @ theta_star / temperature)
    rng_train = np.random.default_rng([int(seed), int(dim), 11])
    phi1 = rng_train.standard_normal((n_train, dim))
    phi2 = rng_train.standard_normal((n_train, dim))
    q1 = _sigmoid((phi1 - phi2) @ theta_star / temperature)
    rng_votes = np.random.default_rng([int(seed), int(dim), int(annotators), 13])
    votes = simulate_votes(q1, annotators, rng_votes)
    if order == "majority-first":
        swap = 2 * votes < annotators
    else:  # a fair coin per pair, independent of the votes
        swap = np.random.default_rng([int(seed), int(dim), 17]).random(n_train) < 0.5
    chosen = np.where(swap[:, None], phi2, phi1)
    rejected = np.where(swap[:, None], phi1, phi2)
    p = np.where(swap, annotators - votes, votes) / annotators
    q = np.where(swap, 1 - q1, q1)
    t = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
    return World(t(theta_star), t(chosen), t(rejected), t(p), t(q), t(x_test), t(q_test))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ----------------------------------------------------------------------------- fitting
@dataclass
class Fit:
    theta: Tensor  # [M, d]
    curve_steps: list[int]
    curves: dict[str, list[list[float]]]  # metric -> [M][len(curve_steps)]


def fit_linear(
    world: World,
    n: int,
    methods: Sequence[RewardMethod],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eval_points: int,
    seed: int,
    optimizer: str = "adam",
) -> Fit:
    """Fit every method on the first ``n`` pairs of ``world`` (see the module docstring)."""
    phi1, phi2, p = world.phi_chosen[:n], world.phi_rejected[:n], world.p_chosen[:n]
    # the majority winner's true confidence (what an oracle smoothing policy reads)
    q_major = torch.where(p < 0.5, 1 - world.q_chosen[:n], world.q_chosen[:n])
    d = phi1.shape[1]
    theta = torch.zeros(len(methods), d, dtype=DTYPE, requires_grad=True)
    opt = (
        torch.optim.Adam([theta], lr=lr) if optimizer == "adam" else torch.optim.SGD([theta], lr=lr)
    )
    checkpoints = set(np.unique(np.round(np.geomspace(1, steps, eval_points))).astype(int).tolist())
    checkpoints.add(early_step(steps))  # the "after 5% of the steps" columns read this one
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    policies = [make_policy(m.smoothing) for m in methods]
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
    order = torch.randperm(n, generator=gen)
    pos = 0
    curve_steps: list[int] = []
    curves: dict[str, list[list[float]]] = {
        k: [[] for _ in methods] for k in ("kl_true", "accuracy_true", "ece_true")
    }

    def record(step: int) -> None:
        curve_steps.append(step)
        margins = world.x_test @ theta.detach().T  # [T, M]
        for i in range(len(methods)):
            m = true_preference_metrics(margins[:, i].numpy(), world.q_test.numpy())
            for k in curves:
                curves[k][i].append(m[k])

    record(0)
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        r1, r2, pb = phi1[idx] @ theta.T, phi2[idx] @ theta.T, p[idx]  # [B, M]
        total = theta.new_zeros(())
        for i, (m, policy) in enumerate(zip(methods, policies, strict=True)):
            h = majority_first_margins((r1[:, i] - r2[:, i]).detach(), pb)
            alpha = policy.alpha(h, q_major[idx] if policy.needs_confidence else None)
            policy.update(h[pb != 0.5])  # as the reward trainer: a tied vote is no evidence
            terms = reward_loss(m.loss, r1[:, i], r2[:, i], pb, alpha=alpha, posterior=m.posterior)
            total = total + terms.loss  # row i of θ only enters method i's loss
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        if step in checkpoints or step == steps:
            record(step)
    return Fit(theta.detach(), curve_steps, curves)


def value_at(steps: Sequence[int], curve: Sequence[float], step: int) -> float:
    """``curve`` at the last recorded step ``<= step``."""
    i = max(j for j, s in enumerate(steps) if s <= step)
    return float(curve[i])


def run_fit(cfg: RewardStudyConfig, annotators: int, seed: int, n: int) -> list[dict[str, Any]]:
    """Fit every method on one ``(K, seed, n)``; one record per method."""
    world = make_world(
        cfg.dim,
        annotators,
        seed,
        n_train=max(cfg.n_train),
        n_test=cfg.n_test,
        signal=cfg.signal,
        temperature=cfg.temperature,
        order=cfg.order,
    )
    methods = cfg.method_list()
    t0 = time.perf_counter()
    fit = fit_linear(
        world,
        n,
        methods,
        steps=cfg.steps,
        batch_size=min(cfg.batch_size, n),
        lr=cfg.lr,
        eval_points=cfg.eval_points,
        seed=seed,
        optimizer=cfg.optimizer,
    )
    seconds = time.perf_counter() - t0
    margins = world.x_test @ fit.theta.T
    true_scale = world.theta_star.norm() / cfg.temperature
    early = early_step(cfg.steps)
    records = []
    for i, m in enumerate(methods):
        th = fit.theta[i]
        metrics = true_preference_metrics(margins[:, i].numpy(), world.q_test.numpy())
        cos = float(th @ world.theta_star / (th.norm() * world.theta_star.norm()).clamp_min(1e-300))
        kl_curve, acc_curve = fit.curves["kl_true"][i], fit.curves["accuracy_true"][i]
        records.append(
            {
                "annotators": annotators,
                "n": n,
                "seed": seed,
                "method": m.name,
                **metrics,
                "cosine": cos,
                "scale": float(th.norm() / true_scale),
                "kl_true_early": value_at(fit.curve_steps, kl_curve, early),
                "accuracy_true_early": value_at(fit.curve_steps, acc_curve, early),
                "kl_true_best": float(min(kl_curve)),
                "kl_true_best_step": int(fit.curve_steps[int(np.argmin(kl_curve))]),
                "curve_steps": fit.curve_steps,
                "curve_kl_true": kl_curve,
                "curve_accuracy_true": acc_curve,
                "train_mean_p": float(world.p_chosen[:n].mean()),
                "fit_seconds_all_methods": seconds,
            }
        )
    return records


# ----------------------------------------------------------------------------- aggregation
METRICS = (
    "accuracy_true",
    "ece_true",
    "rms_true",
    "kl_true",
    "cosine",
    "scale",
    "kl_true_early",
    "accuracy_true_early",
    "kl_true_best",
    "kl_true_best_step",
)
EARLY_FRACTION = 0.05  # kl_true_early: the held-out KL after 5% of the steps


def early_step(steps: int) -> int:
    """The step at which the ``*_early`` columns are read (recorded in every fit)."""
    return max(1, round(EARLY_FRACTION * steps))


def aggregate(runs: Sequence[dict[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Mean ± std over seeds per ``(K, n, method)``, with paired comparisons to ``baseline``:
    seeds with a lower ``kl_true`` and with a higher ``accuracy_true`` than it."""
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    base: dict[tuple[int, int, int], dict[str, Any]] = {}
    for r in runs:
        groups.setdefault((r["annotators"], r["n"], r["method"]), []).append(r)
        if r["method"] == baseline:
            base[(r["annotators"], r["n"], r["seed"])] = r
    out = []
    for (k, n, method), rs in groups.items():
        row: dict[str, Any] = {"annotators": k, "n": n, "method": method, "seeds": len(rs)}
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in rs])
        curves = np.array([r["curve_kl_true"] for r in rs])
        row["curve_steps"] = rs[0]["curve_steps"]
        row["curve_kl_true_mean"] = curves.mean(0).tolist()
        row["curve_kl_true_std"] = (
            curves.std(0, ddof=1) if len(rs) > 1 else 0 * curves[0]
        ).tolist()
        paired = [(r, base[(k, n, r["seed"])]) for r in rs if (k, n, r["seed"]) in base]
        if paired:
            row["paired_seeds"] = len(paired)
            # better by more than rounding: soft-bce and fkl are the same fit up to it
            row["seeds_lower_kl_than_baseline"] = sum(
                b["kl_true"] - r["kl_true"] > 1e-9 * b["kl_true"] for r, b in paired
            )
            row["seeds_higher_accuracy_than_baseline"] = sum(
                r["accuracy_true"] - b["accuracy_true"] > 1e-9 for r, b in paired
            )
            row["kl_minus_baseline_mean"], row["kl_minus_baseline_std"] = mean_std(
                [r["kl_true"] - b["kl_true"] for r, b in paired]
            )
        out.append(row)
    return out


@contextlib.contextmanager
def single_thread():
    """One torch thread (restored after): the fits are many tiny operations."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_study(cfg: RewardStudyConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole grid ``(K, seed, n)``; return ``{"config", "runs", "aggregates", ...}``."""
    from tqdm.auto import tqdm

    jobs = [(k, s, n) for k in cfg.annotators for s in cfg.seeds for n in cfg.n_train]
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with single_thread():
        for k, s, n in tqdm(jobs, desc="reward study fits", disable=not progress):
            runs += run_fit(cfg, k, s, n)
    return {
        "config": asdict(cfg),
        "methods": [asdict(m) for m in cfg.method_list()],
        "runs": runs,
        "aggregates": aggregate(runs),
        "seconds": time.perf_counter() - t0,
        "torch_version": torch.__version__,
    }


# ----------------------------------------------------------------------------- tiny LM
LM_METHODS = tuple(m.name for m in METHODS)


def run_lm_study(
    output_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = LM_METHODS,
    steps: int = 150,
    pairs: int = 600,
    annotators: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """The same comparison with the tiny Llama reward model on the oracle text world
    (``smoothalign reward`` defaults otherwise); held-out metrics after training.
    ``progress``: the runs' progress bars (training, saving, scoring)."""
    from smoothalign.progress import progress_bars
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.run import run_reward

    by_name = {m.name: m for m in METHODS}
    runs = []
    t0 = time.perf_counter()
    # two torch threads on a shared 2-core machine ran ~10x slower
    with single_thread(), progress_bars(progress):
        for seed in seeds:
            for name in methods:
                m = by_name[name]
                cfg = RewardConfig(
                    model="tiny",
                    loss=m.loss,
                    posterior=m.posterior,
                    smoothing=m.smoothing,
                    seed=seed,
                    max_steps=steps,
                    oracle_pairs=pairs,
                    annotators=annotators,
                    eval_steps=0,
                    report=False,
                    output_dir=str(Path(output_dir) / "lm" / f"{name}-seed{seed}"),
                )
                result = run_reward(cfg)
                runs.append({"method": name, "seed": seed, **result.after})
    aggregates = []
    for name in methods:
        rs = [r for r in runs if r["method"] == name]
        row: dict[str, Any] = {"method": name, "seeds": len(rs)}
        for key in ("accuracy", "accuracy_true", "ece", "ece_true", "kl_true"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in rs])
        aggregates.append(row)
    return {
        "steps": steps,
        "pairs": pairs,
        "annotators": annotators,
        "seeds": list(seeds),
        "runs": runs,
        "aggregates": aggregates,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- reporting
def _fmt(row: dict[str, Any], key: str, digits: int) -> str:
    """``mean ± std`` of ``row``'s ``key`` over its seeds (``± n/a`` over one)."""
    return mean_pm(row[f"{key}_mean"], row[f"{key}_std"], row["seeds"], digits)


TABLE_METRICS = (
    ("accuracy_true", "acc. vs truth ↑", 3, False),
    ("ece_true", "ECE vs q ↓", 4, True),
    ("kl_true", "KL(q‖σ) ↓", 4, True),
    ("cosine", "cos(θ, θ*) ↑", 4, False),
    ("scale", "‖θ‖/‖θ*/τ‖", 2, None),
    ("kl_true_early", "KL after 5% of steps ↓", 4, True),
    ("accuracy_true_early", "acc. after 5% ↑", 3, False),
    ("kl_true_best", "best KL on the way ↓", 4, True),
    ("kl_true_best_step", "at step", 0, None),
)


def markdown_report(results: dict[str, Any]) -> str:
    """One table per ``(K, n)``: methods as rows, metrics as columns (mean ± std over seeds)."""
    cfg = results["config"]
    labels = {m["name"]: m["label"] for m in results["methods"]}
    idx = {(a["annotators"], a["n"], a["method"]): a for a in results["aggregates"]}
    parts = [
        "# Reward models from soft labels: linear world",
        "",
        f"d = {cfg['dim']}, ‖θ*‖ = {cfg['signal']:g}, τ = {cfg['temperature']:g}, pairs "
        f"{cfg['order']}; {cfg['optimizer']} (peak lr {cfg['lr']:g}, cosine decay) for "
        f"{cfg['steps']} steps of {cfg['batch_size']} pairs from θ = 0; {cfg['n_test']} test "
        f"pairs; mean ± std over {n_of(len(cfg['seeds']))}"
        f"{' (one seed: no spread, ± n/a)' if len(cfg['seeds']) < 2 else ''}. Bold: best mean of the column. `vs BT`: seeds with a lower held-out KL than "
        "BT on the same data.",
        "",
    ]
    for k in cfg["annotators"]:
        for n in cfg["n_train"]:
            rows = [idx[(k, n, m)] for m in cfg["methods"] if (k, n, m) in idx]
            parts += [f"## K = {k} annotators, n = {n} training pairs", ""]
            head = "| method | " + " | ".join(t[1] for t in TABLE_METRICS) + " | vs BT |"
            parts += [head, "|---|" + "---:|" * (len(TABLE_METRICS) + 1)]
            best = {}
            for key, _, _, lower in TABLE_METRICS:
                if lower is None:
                    continue
                means = [r[f"{key}_mean"] for r in rows]
                best[key] = (min if lower else max)(means)
            for r in rows:
                cells = []
                for key, _, digits, _ in TABLE_METRICS:
                    s = _fmt(r, key, digits)
                    bold = key in best and math.isclose(r[f"{key}_mean"], best[key], rel_tol=1e-9)
                    cells.append(f"**{s}**" if bold else s)
                vs = (
                    f"{r['seeds_lower_kl_than_baseline']}/{r['paired_seeds']}"
                    if r["method"] != BASELINE and "paired_seeds" in r
                    else "–"
                )
                parts.append(f"| {labels[r['method']]} | " + " | ".join(cells) + f" | {vs} |")
            parts.append("")
    return "\n".join(parts)


def lm_markdown(lm: dict[str, Any]) -> str:
    lines = [
        "# Tiny Llama reward model on the oracle text world",
        "",
        f"{lm['pairs']} pairs (80/20 split), {lm['annotators']} annotators, {lm['steps']} steps; "
        f"mean ± std over seeds {lm['seeds']}.",
        "",
        "| method | acc. vs majority | acc. vs truth | ECE vs votes | ECE vs q | KL(q‖σ) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in lm["aggregates"]:
        cells = [
            _fmt(r, "accuracy", 3),
            _fmt(r, "accuracy_true", 3),
            _fmt(r, "ece", 4),
            _fmt(r, "ece_true", 4),
            _fmt(r, "kl_true", 4),
        ]
        label = next((m.label for m in METHODS if m.name == r["method"]), r["method"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


STYLE = {
    "bt": dict(color="black", ls="-"),
    "bt-cals-l2": dict(color="grey", ls="--"),
    "soft-bce": dict(color="tab:blue", ls="-", lw=3, alpha=0.4),
    "fkl": dict(color="tab:blue", ls="-"),
    "rkl": dict(color="tab:red", ls="-"),
    "jsd": dict(color="tab:green", ls="-"),
    "fkl-post": dict(color="tab:blue", ls=":"),
    "rkl-post": dict(color="tab:red", ls=":"),
    "jsd-post": dict(color="tab:green", ls=":"),
}


def plot_convergence(results: dict[str, Any], n: int | None = None):
    """Held-out KL(q ‖ σ(θ·x)) against steps, one panel per K (largest n by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    n = max(cfg["n_train"]) if n is None else n
    labels = {m["name"]: m["label"] for m in results["methods"]}
    idx = {(a["annotators"], a["n"], a["method"]): a for a in results["aggregates"]}
    ks = cfg["annotators"]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 4.0), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for m in cfg["methods"]:
            a = idx[(k, n, m)]
            steps, mean = np.array(a["curve_steps"]), np.array(a["curve_kl_true_mean"])
            std = np.array(a["curve_kl_true_std"])
            style = STYLE.get(m, {})
            ax.plot(steps, mean, label=labels[m], **style)
            ax.fill_between(steps, mean - std, mean + std, color=style.get("color"), alpha=0.08)
        ax.set(xscale="log", yscale="log", xlabel="step", title=f"K = {k} annotators, n = {n}")
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("held-out KL(q ‖ σ(θ·x))")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle("Convergence of linear reward models (mean ± std over seeds)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line
LM_SEEDS, LM_STEPS = 3, 150  # --lm's defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, q = RewardStudyConfig(), RewardStudyConfig.quick()

    def show(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    def default(name: str) -> str:
        full, quick = getattr(d, name), getattr(q, name)
        return f"default {show(full)}" + (f"; --quick: {show(quick)}" if quick != full else "")

    parser.add_argument("--quick", action="store_true", help="seconds-long smoke grid")
    parser.add_argument("--output-dir", default="outputs/reward_study", help="where the results go")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"number of seeds (default {len(d.seeds)}; --quick: {len(q.seeds)})",
    )
    parser.add_argument(
        "--annotators",
        type=int,
        nargs="+",
        default=None,
        help=f"K values ({default('annotators')}); odd, so that no pair's votes tie (an "
        "even K runs, with a warning: bt drops the tied pairs, which the other losses train on "
        "at a share of 1/2)",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        nargs="+",
        default=None,
        help=f"training sizes ({default('n_train')})",
    )
    parser.add_argument(
        "--dim", type=int, default=None, help=f"feature dimension ({default('dim')})"
    )
    parser.add_argument(
        "--steps", "--max-steps", type=int, default=None, help=f"({default('steps')})"
    )
    parser.add_argument("--signal", type=float, default=None, help=f"‖θ*‖ ({default('signal')})")
    parser.add_argument(
        "--temperature", type=float, default=None, help=f"annotators' τ ({default('temperature')})"
    )
    parser.add_argument(
        "--optimizer", choices=("adam", "sgd"), default=None, help=f"({default('optimizer')})"
    )
    parser.add_argument(
        "--lr",
        "--learning-rate",
        type=float,
        default=None,
        help=f"peak step size, cosine decay ({default('lr')})",
    )
    parser.add_argument("--batch-size", type=int, default=None, help=f"({default('batch_size')})")
    parser.add_argument(
        "--order",
        choices=("majority-first", "random"),
        default=None,
        help=f"how pairs are presented ({default('order')})",
    )
    parser.add_argument(
        "--lm", action="store_true", help="also run the tiny-LM pipeline (minutes on CPU)"
    )
    parser.add_argument(
        "--lm-seeds", type=int, default=None, help=f"with --lm: seeds 0 .. N-1 (default {LM_SEEDS})"
    )
    parser.add_argument(
        "--lm-steps", type=int, default=None, help=f"with --lm: training steps (default {LM_STEPS})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace) -> RewardStudyConfig:
    overrides: dict[str, Any] = {}
    if args.seeds is not None:
        overrides["seeds"] = tuple(range(args.seeds))
    if args.annotators is not None:
        overrides["annotators"] = tuple(args.annotators)
    if args.n_train is not None:
        overrides["n_train"] = tuple(args.n_train)
    for key in ("dim", "steps", "signal", "temperature", "optimizer", "lr", "batch_size", "order"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return RewardStudyConfig.quick(**overrides) if args.quick else RewardStudyConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    from smoothalign.experiments.run_info import RunClock, invoked_command
    from smoothalign.experiments.study_dir import check_study_output_dir, study_command
    from smoothalign.io import atomic_write_json, atomic_write_text, save_figure

    cfg = build_config(args)  # a bad option: cli.main names it (SMOOTHALIGN_DEBUG=1 raises)
    lm_only = [
        f"--{k.replace('_', '-')}" for k in ("lm_seeds", "lm_steps") if getattr(args, k) is not None
    ]
    if lm_only and not args.lm:
        raise ValueError(
            f"{' and '.join(lm_only)}: only the tiny-LM pipeline uses "
            f"{'it' if len(lm_only) == 1 else 'them'}; add --lm, or leave "
            f"{'it' if len(lm_only) == 1 else 'them'} out"
        )
    lm_seeds = LM_SEEDS if args.lm_seeds is None else args.lm_seeds
    lm_steps = LM_STEPS if args.lm_steps is None else args.lm_steps
    if args.lm and (lm_seeds < 1 or lm_steps < 1):
        raise ValueError(f"--lm-seeds / --lm-steps: must be >= 1, got {lm_seeds} / {lm_steps}")
    # not into another study's, a run's or a model's folder: its files would be replaced
    check_study_output_dir(
        args.output_dir, "reward", "results.json, table.md, reward_convergence.png, lm/"
    )
    even = [k for k in cfg.annotators if k % 2 == 0]
    if even:  # docs/results.md reads its tables with odd K: no tied votes
        print(
            f"smoothalign study reward: warning: --annotators {' '.join(map(str, even))}: with "
            "an even K a pair's votes can tie (p_chosen = 0.5): bt (the majority label) drops "
            "those pairs, which the other losses train on, so the methods no longer see the "
            "same pairs; the documented results use odd K only",
            file=sys.stderr,
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = RunClock(invoked_command("smoothalign.experiments.reward_study"))
    results = run_study(cfg, progress=not args.no_progress)
    results = {"command": study_command("reward"), **results}  # which study wrote it
    table = markdown_report(results)
    atomic_write_json(out / "results.json", results)  # kept even if the LM part fails
    if args.lm:
        lm = run_lm_study(
            out,
            seeds=tuple(range(lm_seeds)),
            steps=lm_steps,
            progress=not args.no_progress,
        )
        results["lm"] = lm
        table += "\n" + lm_markdown(lm)
    results["run_info"] = clock.info()
    written = [
        atomic_write_json(out / "results.json", results),
        atomic_write_text(out / "table.md", table),
        save_figure(plot_convergence(results), out / "reward_convergence.png"),
    ]
    print(table)
    print(f"study: {results['seconds']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smoothalign.experiments.reward_study",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "METHODS",
    "RewardMethod",
    "RewardStudyConfig",
    "World",
    "aggregate",
    "fit_linear",
    "make_world",
    "markdown_report",
    "run_fit",
    "run_lm_study",
    "run_study",
]
