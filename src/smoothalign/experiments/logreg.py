"""The logistic-regression study (SPEC §7): does confidence-aware smoothing help a model
learn calibrated preference probabilities from noisy labels, and when does it hurt?

Set-up (every choice below is a field of :class:`LogRegConfig` and lands in the results):

* Ground truth ``θ* = signal · u``, ``u`` uniform on the unit sphere of ``R^d``; features
  ``x ~ N(0, I_d)``; true preference ``p*(x) = σ(θ*·x)``; label ``z ~ Bernoulli(p*)``.
  ``θ*·x ~ N(0, signal²)``, so ``signal`` sets the label noise: the default 2.5 gives a
  mean label confidence ``E[max(p*, 1 − p*)] ≈ 0.81`` (19% of labels point the wrong way).
* Each sample is a preference pair presented labelled-winner-first: margin
  ``h = (2z − 1)·θ·x``, forecast ``σ(h)``; the labelled winner's true confidence is
  ``q = p*`` if ``z = 1`` else ``1 − p*``.
* ``θ`` starts at 0 and follows full-batch gradient descent (fixed ``lr``, fixed ``steps``)
  on the mean of ``smoothalign.pairwise_loss('sigmoid', h, α)``, with ``α`` from the
  method's ``smoothalign.make_policy(...)`` ``.step(h, confidence)``, called once per step
  on the whole training set (so a CALS calibrator sees every pair every step).
* For one ``(d, seed)`` the training sets are nested: pair ``i`` depends only on
  ``(seed, d, i)``, the training set of size ``n`` is the first ``n`` pairs, and every ``n``
  shares ``θ*`` and the test set. This makes the curves against ``n`` smoother without
  changing any single point's distribution, and a sub-grid reproduces the full grid's fits.
* Metrics on ``n_test`` fresh ``x`` (exact expectations over the label, no label noise):
  ``KL(p* ‖ σ(θ·x))`` (Bernoulli), the cross-entropy against ``p*`` (= KL + the Bayes
  entropy ``H(p*)``), the accuracy of ``sign(θ·x)`` against ``sign(θ*·x)``, and the ECE of
  ``σ(θ·x)`` against ``p*``.

The methods of all runs of one ``(d, n, seed)`` share one data set and are fitted together:
``θ`` is a ``[M, d]`` matrix and the per-method losses are summed (each row's gradient is its
own method's): ``M`` independent fits (equal to fitting each alone up to floating-point
rounding) for the price of one matrix product per step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

import smoothalign
from smoothalign.calibration import expected_calibration_error

DTYPE = torch.float64

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Method:
    """One way of choosing ``α``: a ``make_policy`` spec and, for CALS, the prior ``c₀``."""

    name: str  # key in results.json
    label: str  # for tables and plots
    policy: str  # smoothalign.make_policy spec
    init_confidence: float | None = None  # CALS c₀; None: the library default

    def make(self) -> smoothalign.smoothing.SmoothingPolicy:
        if self.init_confidence is None:
            return smoothalign.make_policy(self.policy)
        return smoothalign.make_policy(self.policy, init_confidence=self.init_confidence)


MAIN_METHODS: tuple[Method, ...] = (
    Method("mle", "MLE", "none"),
    Method("cals-l2", "CALS-ℓ2", "cals-l2"),
    Method("cals-l0", "CALS-ℓ0", "cals-l0"),
    Method("oracle-l2", "oracle-ℓ2", "oracle-l2"),
    Method("oracle-l0", "oracle-ℓ0", "oracle-l0"),
)


@dataclass(frozen=True)
class LogRegConfig:
    """Everything that determines the study's numbers (written into results.json).

    The optimiser: ``lr = 1`` is stable for full-batch descent on the mean loss (its Hessian
    is at most ``¼·λ_max(XᵀX/n) ≤ 0.73`` for ``n ≥ 2d``); at ``n ≥ 20d`` 150 steps reach the
    minimiser (the test KL moves by < 0.002 from 150 to 200 steps). At ``n ≤ 5d`` the data are
    near or past separability, the MLE does not exist or is inflated, and the fixed budget
    acts as early stopping: small-``n`` numbers depend on ``steps``. Larger ``lr`` makes
    CALS-ℓ2 oscillate with its calibrator's moving average (see docs/results.md).
    """

    dims: tuple[int, ...] = (10, 50, 100)
    n_multipliers: tuple[int, ...] = (2, 5, 10, 20, 50, 100)  # n = multiplier · d
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    signal: float = 2.5  # ‖θ*‖
    steps: int = 150  # full-batch gradient-descent steps
    lr: float = 1.0  # step size on the mean loss
    n_test: int = 20000
    c0_values: tuple[float, ...] = (0.8, 0.9, 1.0)  # CALS prior-confidence ablation

    def __post_init__(self) -> None:
        if not self.dims or any(d < 1 for d in self.dims):
            raise ValueError(f"dims: need positive integers, got {self.dims}")
        if not self.n_multipliers or any(m < 1 for m in self.n_multipliers):
            raise ValueError(f"n_multipliers: need positive integers, got {self.n_multipliers}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        for name in ("seeds", "dims", "n_multipliers", "c0_values"):  # a repeat would be
            values = getattr(self, name)  # aggregated as one more seed
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated value in {values}")
        if not self.signal > 0:
            raise ValueError(f"signal: must be > 0, got {self.signal}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.n_test < 1:
            raise ValueError(f"n_test: must be >= 1, got {self.n_test}")
        if any(not 0.0 <= c <= 1.0 for c in self.c0_values):
            raise ValueError(f"c0_values: must lie in [0, 1], got {self.c0_values}")

    @classmethod
    def quick(cls, **overrides: Any) -> LogRegConfig:
        """A seconds-long version for tests and smoke runs (same code path, tiny grid)."""
        base: dict[str, Any] = dict(
            dims=(5, 10), n_multipliers=(2, 10, 50), seeds=(0, 1), steps=40, n_test=2000
        )
        base.update(overrides)
        return cls(**base)

    def n_values(self, d: int) -> list[int]:
        return [m * d for m in self.n_multipliers]


def default_init_confidence() -> float:
    """The library's default CALS ``c₀`` (read from the library, not assumed)."""
    return smoothalign.CALSCalibrator().init_confidence


def study_methods(cfg: LogRegConfig) -> list[Method]:
    """The five main methods, then one CALS run per metric and non-default ``c₀``.

    The ablation's ``c₀`` equal to the library default is the main CALS run itself.
    """
    methods = list(MAIN_METHODS)
    default_c0 = default_init_confidence()
    for metric in ("l2", "l0"):
        for c0 in cfg.c0_values:
            if not math.isclose(c0, default_c0):
                methods.append(
                    Method(
                        f"cals-{metric}-c0={c0:g}",
                        f"CALS-ℓ{metric[1]} c₀={c0:g}",
                        f"cals-{metric}",
                        c0,
                    )
                )
    return methods


def resolved_c0(method: Method) -> float | None:
    if not method.policy.startswith("cals-"):
        return None
    return default_init_confidence() if method.init_confidence is None else method.init_confidence


def ablation_method(methods: Sequence[Method], metric: str, c0: float) -> Method | None:
    """The method of the c₀ ablation for ``metric`` ('l0'/'l2') and ``c₀``, if it ran."""
    for m in methods:
        c = resolved_c0(m)
        if m.policy == f"cals-{metric}" and c is not None and math.isclose(c, c0):
            return m
    return None


# ----------------------------------------------------------------------------- data


@dataclass
class Task:
    """One ``(d, seed)``: the truth, a training pool of ``max(n)`` pairs and a test set."""

    d: int
    seed: int
    theta_star: Tensor  # [d]
    x_train: Tensor  # [N, d]
    z_train: Tensor  # [N] 0/1 labels: 1 = the first response (x's "positive" side) won
    x_test: Tensor  # [T, d]


STREAM_TRUTH, STREAM_TRAIN, STREAM_TEST = 0, 1, 2
TRAIN_BLOCK = 1024  # training pairs are drawn in blocks of this many rows


def task_generator(seed: int, d: int, *stream: int) -> torch.Generator:
    """An independent, reproducible random stream per ``(seed, d, *stream)``."""
    state = np.random.SeedSequence([int(seed), int(d), *map(int, stream)]).generate_state(
        2, dtype=np.uint32
    )
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_task(d: int, seed: int, signal: float, n_train: int, n_test: int) -> Task:
    """Draw ``θ*``, ``n_train`` training pairs and ``n_test`` test features.

    Training pair ``i`` depends only on ``(seed, d, i)`` (each block of ``TRAIN_BLOCK`` rows
    has its own stream), so a grid with fewer or other ``n`` values fits exactly the same
    first ``n`` pairs.
    """
    g = task_generator(seed, d, STREAM_TRUTH)
    u = torch.randn(d, generator=g, dtype=DTYPE)
    theta_star = signal * u / u.norm()
    xs, us = [], []
    for block in range(-(-n_train // TRAIN_BLOCK)):
        g = task_generator(seed, d, STREAM_TRAIN, block)
        xs.append(torch.randn(TRAIN_BLOCK, d, generator=g, dtype=DTYPE))
        us.append(torch.rand(TRAIN_BLOCK, generator=g, dtype=DTYPE))
    x_train = torch.cat(xs)[:n_train] if xs else torch.zeros(0, d, dtype=DTYPE)
    uniform = torch.cat(us)[:n_train] if us else torch.zeros(0, dtype=DTYPE)
    z_train = (uniform < torch.sigmoid(x_train @ theta_star)).to(DTYPE)
    x_test = torch.randn(n_test, d, generator=task_generator(seed, d, STREAM_TEST), dtype=DTYPE)
    return Task(d, seed, theta_star, x_train, z_train, x_test)


def winner_confidence(p_star: Tensor, z: Tensor) -> Tensor:
    """True confidence ``q`` of each labelled winner: ``p*`` if ``z = 1`` else ``1 − p*``."""
    return torch.where(z > 0.5, p_star, 1 - p_star)


# ----------------------------------------------------------------------------- fitting


@dataclass
class FitResult:
    theta: Tensor  # [M, d]
    final_loss: Tensor  # [M] mean smoothed training loss at the last step
    final_alpha: Tensor  # [M] mean α at the last step
    policies: list[smoothalign.smoothing.SmoothingPolicy] = field(default_factory=list)


def fit_methods(
    x: Tensor,
    z: Tensor,
    q: Tensor,
    methods: Sequence[Method],
    *,
    steps: int,
    lr: float,
) -> FitResult:
    """Full-batch gradient descent from ``θ = 0`` for every method at once.

    ``x`` ``[n, d]`` features, ``z`` ``[n]`` labels, ``q`` ``[n]`` the labelled winners' true
    confidence (read only by the oracle policies). Returns ``θ`` ``[M, d]``.
    """
    n, d = x.shape
    xw = x * (2 * z - 1).unsqueeze(1)  # winner-first features: h = θ · xw
    policies = [m.make() for m in methods]
    theta = torch.zeros(len(methods), d, dtype=DTYPE, requires_grad=True)
    loss = alpha = torch.zeros(len(methods), dtype=DTYPE)
    for _ in range(steps):
        h = theta @ xw.T  # [M, n]
        hd = h.detach()
        a = torch.stack(
            [p.step(hd[i], q if p.needs_confidence else None) for i, p in enumerate(policies)]
        )
        per_pair = smoothalign.pairwise_loss("sigmoid", h.reshape(-1), a.reshape(-1))
        loss = per_pair.view(len(methods), n).mean(1)  # [M]; row i depends on θ_i only
        (grad,) = torch.autograd.grad(loss.sum(), theta)
        with torch.no_grad():
            theta -= lr * grad
        alpha = a.mean(1)
    return FitResult(theta.detach(), loss.detach(), alpha, policies)


def bernoulli_kl_from_logits(t: Tensor, f: Tensor) -> Tensor:
    """``KL(σ(t) ‖ σ(f))`` elementwise, stable for large logits."""
    p = torch.sigmoid(t)
    return p * (torch.nn.functional.logsigmoid(t) - torch.nn.functional.logsigmoid(f)) + (1 - p) * (
        torch.nn.functional.logsigmoid(-t) - torch.nn.functional.logsigmoid(-f)
    )


def evaluate(theta: Tensor, theta_star: Tensor, x_test: Tensor) -> dict[str, list[float]]:
    """Test metrics of each row of ``θ`` ``[M, d]``; every value is a list of length ``M``."""
    logsig = torch.nn.functional.logsigmoid
    t = x_test @ theta_star  # [T]
    f = x_test @ theta.T  # [T, M]
    p = torch.sigmoid(t).unsqueeze(1)
    kl = bernoulli_kl_from_logits(t.unsqueeze(1), f).mean(0)
    bce = (-(p * logsig(f)) - (1 - p) * logsig(-f)).mean(0)
    acc = ((f > 0) == (t > 0).unsqueeze(1)).to(DTYPE).mean(0)
    cos = (theta @ theta_star) / (theta.norm(dim=1) * theta_star.norm()).clamp_min(1e-300)
    ece = [expected_calibration_error(torch.sigmoid(f[:, i]), p[:, 0]) for i in range(f.shape[1])]
    return {
        "test_kl": kl.tolist(),
        "test_bce": bce.tolist(),
        "test_accuracy": acc.tolist(),
        "test_ece": ece,
        "cosine": cos.tolist(),
        "theta_norm": theta.norm(dim=1).tolist(),
    }


def bayes_entropy(theta_star: Tensor, x_test: Tensor) -> float:
    """Mean ``H(p*)`` on the test set: the lowest achievable test BCE."""
    t = x_test @ theta_star
    p = torch.sigmoid(t)
    logsig = torch.nn.functional.logsigmoid
    return float((-(p * logsig(t)) - (1 - p) * logsig(-t)).mean())


@functools.lru_cache(maxsize=2)
def _cached_task(d: int, seed: int, signal: float, n_train: int, n_test: int) -> Task:
    # The fits of one (d, seed) share this draw; callers never modify it in place.
    return make_task(d, seed, signal, n_train, n_test)


def run_fit(cfg: LogRegConfig, d: int, seed: int, n: int, methods: Sequence[Method]) -> list[dict]:
    """Fit every method on the first ``n`` pairs of the ``(d, seed)`` pool; one record per run."""
    task = _cached_task(d, seed, cfg.signal, max(cfg.n_values(d)), cfg.n_test)
    x, z = task.x_train[:n], task.z_train[:n]
    q = winner_confidence(torch.sigmoid(x @ task.theta_star), z)
    t0 = time.perf_counter()
    fit = fit_methods(x, z, q, methods, steps=cfg.steps, lr=cfg.lr)
    seconds = time.perf_counter() - t0
    metrics = evaluate(fit.theta, task.theta_star, task.x_test)
    h_bayes = bayes_entropy(task.theta_star, task.x_test)
    records: list[dict[str, Any]] = []
    for i, m in enumerate(methods):
        rec: dict[str, Any] = {
            "d": d,
            "n": n,
            "seed": seed,
            "method": m.name,
            "policy": m.policy,
            "init_confidence": resolved_c0(m),
            **{k: v[i] for k, v in metrics.items()},
            "bayes_bce": h_bayes,
            "train_label_confidence": float(q.mean()),
            "final_train_loss": float(fit.final_loss[i]),
            "final_mean_alpha": float(fit.final_alpha[i]),
            "fit_seconds_all_methods": seconds,
        }
        cal = fit.policies[i].calibrator
        if cal is not None:
            rec["cals_q_hat"] = cal.bin_confidence().tolist()
        records.append(rec)
    return records


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread, then restore. The fits are many small operations: threads
    only add synchronisation (and, on a busy machine, 10x slow-downs), and a fixed thread
    count keeps the numbers identical however many worker processes run them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_in_worker(args: tuple) -> list[dict]:
    with single_thread():
        return run_fit(*args)


# ----------------------------------------------------------------------------- aggregation

METRICS = ("test_kl", "test_bce", "test_accuracy", "test_ece", "cosine", "final_mean_alpha")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def mean_pm(mean: float, std: float, n: int, digits: int, sign: str = "") -> str:
    """``mean ± std`` as the study tables print it (``sign="+"``: the mean signed); over one
    value (``n < 2``) the spread is ``n/a``: a sample std of one value is undefined, and
    :func:`mean_std`'s 0 is no spread measured."""
    shown = f"{mean:{sign}.{digits}f}"
    return f"{shown} ± {std:.{digits}f}" if n > 1 else f"{shown} ± n/a"


def n_of(n: int, noun: str = "seed") -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def aggregate(runs: Sequence[dict[str, Any]], baseline: str = "mle") -> list[dict[str, Any]]:
    """Mean ± std over seeds for every ``(d, n, method)``, in first-seen order.

    Where the ``baseline`` method ran on the same ``(d, n, seed)``, also the paired test-KL
    difference ``KL(method) − KL(baseline)`` (mean ± std over seeds) and the number of seeds
    in which the method's test KL is strictly lower.
    """
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    base_kl: dict[tuple[int, int, int], float] = {}
    for r in runs:
        groups.setdefault((r["d"], r["n"], r["method"]), []).append(r)
        if r["method"] == baseline:
            base_kl[(r["d"], r["n"], r["seed"])] = r["test_kl"]
    out = []
    for (d, n, method), rs in groups.items():
        row: dict[str, Any] = {"d": d, "n": n, "method": method, "seeds": len(rs)}
        for k in (*METRICS, "bayes_bce"):
            mean, std = mean_std([r[k] for r in rs])
            row[f"{k}_mean"], row[f"{k}_std"] = mean, std
        paired = [
            r["test_kl"] - base_kl[(d, n, r["seed"])] for r in rs if (d, n, r["seed"]) in base_kl
        ]
        if paired:
            mean, std = mean_std(paired)
            row[f"kl_minus_{baseline}_mean"], row[f"kl_minus_{baseline}_std"] = mean, std
            row[f"seeds_better_than_{baseline}"] = sum(x < 0 for x in paired)
            row["paired_seeds"] = len(paired)
        out.append(row)
    return out


def run_study(cfg: LogRegConfig, *, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run the whole grid; return ``{"config", "methods", "runs", "aggregates", ...}``.

    ``workers > 1`` fits in that many processes (one torch thread each); the numbers do not
    depend on ``workers``: every fit is seeded by its ``(seed, d)`` alone and runs on one
    thread either way. Runs are returned in grid order ``(d, seed, n, method)``.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    methods = study_methods(cfg)
    jobs = [
        (cfg, d, seed, n, methods) for d in cfg.dims for seed in cfg.seeds for n in cfg.n_values(d)
    ]
    t0 = time.perf_counter()
    out: list[list[dict[str, Any]] | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs) * len(methods), desc="logreg runs", unit="run", disable=not progress)
    with bar:
        if workers == 1:
            with single_thread():
                for i, job in enumerate(jobs):
                    out[i] = run_fit(*job)
                    bar.update(len(methods))
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            # Largest fits first, so that the last ones to finish are short.
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1] * jobs[i][3])
            ctx = mp.get_context("spawn")  # no fork of a process that already runs torch
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_fit_in_worker, jobs[i]): i for i in order}
                for fut in cf.as_completed(futures):
                    out[futures[fut]] = fut.result()
                    bar.update(len(methods))
    runs = [r for recs in out if recs is not None for r in recs]
    calibrator = smoothalign.CALSCalibrator().state_dict()
    return {
        "config": asdict(cfg),
        "calibrator_defaults": {
            k: v for k, v in calibrator.items() if k not in ("wins", "losses", "step")
        },
        "methods": [asdict(m) | {"init_confidence": resolved_c0(m)} for m in methods],
        "runs": runs,
        "aggregates": aggregate(runs),
        "seconds": time.perf_counter() - t0,
        "workers": workers,
        "torch_version": torch.__version__,
    }


# ----------------------------------------------------------------------------- reporting


def _agg_index(results: dict[str, Any]) -> dict[tuple[int, int, str], dict[str, Any]]:
    return {(a["d"], a["n"], a["method"]): a for a in results["aggregates"]}


def _methods(results: dict[str, Any]) -> list[Method]:
    return [Method(**m) for m in results["methods"]]


def metric_table(
    results: dict[str, Any],
    metric: str,
    method_names: Sequence[str],
    *,
    digits: int = 4,
    lower_is_better: bool = True,
) -> str:
    """Markdown table: rows ``(d, n)``, one column per method, ``mean ± std`` over seeds.

    The best mean among the non-oracle methods of each row is bold (the oracles use the
    true ``q`` and are an upper bound, not a competitor).
    """
    idx = _agg_index(results)
    by_name = {m.name: m for m in _methods(results)}
    cfg = results["config"]
    head = "| d | n | " + " | ".join(by_name[n].label for n in method_names) + " |"
    sep = "|---:|---:|" + "---:|" * len(method_names)
    lines = [head, sep]
    for d in cfg["dims"]:
        for mult in cfg["n_multipliers"]:
            n = mult * d
            rows = [idx[(d, n, name)] for name in method_names]
            means = [r[f"{metric}_mean"] for r in rows]
            real = [
                i
                for i, name in enumerate(method_names)
                if by_name[name].policy.startswith(("none", "cals"))
            ]
            best = None
            if real:
                pick = min if lower_is_better else max
                best = pick(real, key=lambda i: means[i])
            cells = []
            for i, r in enumerate(rows):
                s = mean_pm(r[f"{metric}_mean"], r[f"{metric}_std"], r["seeds"], digits)
                cells.append(f"**{s}**" if i == best else s)
            lines.append(f"| {d} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(results: dict[str, Any], method_names: Sequence[str]) -> str:
    """Markdown table of each method against MLE on the same ``(d, n, seed)``:
    ``wins/seeds (mean paired KL difference)``; a negative difference favours the method."""
    idx = _agg_index(results)
    by_name = {m.name: m for m in _methods(results)}
    cfg = results["config"]
    lines = [
        "| d | n | " + " | ".join(by_name[n].label for n in method_names) + " |",
        "|---:|---:|" + "---:|" * len(method_names),
    ]
    for d in cfg["dims"]:
        for mult in cfg["n_multipliers"]:
            n = mult * d
            cells = []
            for name in method_names:
                a = idx[(d, n, name)]
                cells.append(
                    f"{a['seeds_better_than_mle']}/{a['paired_seeds']} "
                    f"({a['kl_minus_mle_mean']:+.4f})"
                )
            lines.append(f"| {d} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_NO_SPREAD = " (one seed: no spread, ± n/a)"


def markdown_report(results: dict[str, Any]) -> str:
    """table.md: test KL and test BCE for the main methods, then the c₀ ablation."""
    cfg = results["config"]
    main = [m.name for m in MAIN_METHODS]
    seeds = len(cfg["seeds"])
    ablation = [m.name for m in _methods(results) if m.policy.startswith("cals")]
    bayes = sorted({(a["d"], round(a["bayes_bce_mean"], 4)) for a in results["aggregates"]})
    parts = [
        "# Logistic-regression study (SPEC §7)",
        "",
        f"Mean ± std over {n_of(seeds)}{_NO_SPREAD if seeds < 2 else ''}; ‖θ*‖ = {cfg['signal']:g}, {cfg['steps']} steps of "
        f"full-batch gradient descent at lr = {cfg['lr']:g} from θ = 0, "
        f"{cfg['n_test']} test points. Bold: best non-oracle method of the row.",
        "",
        "## Test KL(p* ‖ σ(θ·x)) (lower is better)",
        "",
        metric_table(results, "test_kl", main),
        "",
        "## Test BCE against p* (lower is better; the Bayes floor is H(p*))",
        "",
        "Bayes floor per d: " + ", ".join(f"d={d}: {h:.4f}" for d, h in bayes),
        "",
        metric_table(results, "test_bce", main),
        "",
        "## Test accuracy of sign(θ·x) against sign(θ*·x) (higher is better)",
        "",
        metric_table(results, "test_accuracy", main, digits=3, lower_is_better=False),
        "",
        "## Paired with MLE on the same data: seeds where test KL is lower, and mean KL − KL(MLE)",
        "",
        paired_table(results, main[1:]),
        "",
        "## CALS initial-confidence (c₀) ablation: test KL",
        "",
        metric_table(results, "test_kl", [*main[:1], *ablation]),
        "",
    ]
    return "\n".join(parts)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STYLE = {
    "mle": dict(color="black", ls="-", marker="o"),
    "cals-l2": dict(color="tab:blue", ls="-", marker="s"),
    "cals-l0": dict(color="tab:orange", ls="-", marker="^"),
    "oracle-l2": dict(color="tab:blue", ls="--", marker=""),
    "oracle-l0": dict(color="tab:orange", ls="--", marker=""),
}


def _curve(results, d: int, method: str, metric: str):
    idx = _agg_index(results)
    ns = [m * d for m in results["config"]["n_multipliers"]]
    mean = np.array([idx[(d, n, method)][f"{metric}_mean"] for n in ns])
    std = np.array([idx[(d, n, method)][f"{metric}_std"] for n in ns])
    return np.array(ns), mean, std


def _n_axis(ax, ns) -> None:
    """Log-x axis labelled at the grid's n values only (no crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(ns)))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_test_loss(results: dict[str, Any], metric: str = "test_kl"):
    """Test KL against n (log–log), one panel per d, one line per main method, ±1 std band."""
    plt = _plt()
    dims = results["config"]["dims"]
    by_name = {m.name: m for m in _methods(results)}
    fig, axes = plt.subplots(1, len(dims), figsize=(4.6 * len(dims), 4.0), squeeze=False)
    for ax, d in zip(axes[0], dims, strict=True):
        for m in MAIN_METHODS:
            ns, mean, std = _curve(results, d, m.name, metric)
            style = STYLE[m.name]
            ax.plot(ns, mean, label=by_name[m.name].label, lw=1.6, ms=4, **style)
            lo = np.clip(mean - std, mean * 0.05, None)  # keep the band on a log axis
            ax.fill_between(ns, lo, mean + std, color=style["color"], alpha=0.12, lw=0)
        ax.set(yscale="log", xlabel="training pairs n", title=f"d = {d}")
        _n_axis(ax, ns)
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("test KL(p* ‖ σ(θ·x))")
    axes[0][0].legend(fontsize=8)
    cfg = results["config"]
    fig.suptitle(
        f"Logistic regression with noisy labels: ‖θ*‖ = {cfg['signal']:g}, "
        f"{cfg['steps']} GD steps, mean ± std over {n_of(len(cfg['seeds']))}"
    )
    fig.tight_layout()
    return fig


def plot_c0_ablation(results: dict[str, Any], metric: str = "test_kl"):
    """CALS test KL against n for each c₀, one row per metric (ℓ2, ℓ0), one panel per d; MLE
    for reference."""
    plt = _plt()
    cfg = results["config"]
    dims = cfg["dims"]
    methods = _methods(results)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(cfg["c0_values"]), 1)))
    fig, axes = plt.subplots(2, len(dims), figsize=(4.6 * len(dims), 7.2), squeeze=False)
    for row, metric_name in enumerate(("l2", "l0")):
        for ax, d in zip(axes[row], dims, strict=True):
            ns, mean, _ = _curve(results, d, "mle", metric)
            ax.plot(ns, mean, color="grey", ls=":", lw=1.5, label="MLE")
            for colour, c0 in zip(colours, cfg["c0_values"], strict=True):
                m = ablation_method(methods, metric_name, c0)
                if m is None:
                    continue
                ns, mean, std = _curve(results, d, m.name, metric)
                ax.plot(ns, mean, color=colour, marker="o", ms=3, lw=1.4, label=f"c₀ = {c0:g}")
                lo = np.clip(mean - std, mean * 0.05, None)
                ax.fill_between(ns, lo, mean + std, color=colour, alpha=0.12, lw=0)
            ax.set(yscale="log", title=f"CALS-ℓ{metric_name[1]}, d = {d}")
            _n_axis(ax, ns)
            ax.grid(True, which="both", alpha=0.25)
        axes[row][0].set_ylabel("test KL(p* ‖ σ(θ·x))")
    for ax in axes[-1]:
        ax.set_xlabel("training pairs n")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("CALS prior confidence c₀: test KL, mean ± std over seeds")
    fig.tight_layout()
    return fig
