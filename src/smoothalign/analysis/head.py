"""The LM-head entropy lower bound (SPEC §5): how confident can this head be at all?

With logits ``z = C·e`` (``C``: ``[V, D]`` head weights, ``e``: a ``[D]`` hidden state),
``ρ = σ_C·σ_h`` (standard deviation of the head's weights times that of the hidden states)
and ``γ = exp(−ρ·sqrt(D|V|/(|V|−1)))``, SPEC §5 states

    H ≥ log(1 + (|V|−1)γ) + ρ·γ·sqrt(D|V|(|V|−1)) / (1 + (|V|−1)γ).

Writing ``a = ρ·sqrt(D|V|/(|V|−1))`` (so ``γ = e^{−a}`` and ``ρ·sqrt(D|V|(|V|−1)) =
a·(|V|−1)``), the right side is the entropy of the distribution whose logits are one value
``a`` above all the others: ``softplus(x) + a·sigmoid(x)`` with ``x = log(|V|−1) − a``, which
is how it is computed here (stable for any ``a``). ``a`` is the logit gap that a head of this
scale can reach: with ``ρ → 0`` the bound is ``log|V|`` (uniform), and it falls towards 0 as
``ρ·sqrt(D)`` grows past ``log|V|``.

**What it means for label smoothing.** Smoothing ``β`` makes the target of a token
``q_β`` = ``1 − β + β/|V|`` on the label and ``β/|V|`` elsewhere, of entropy
:func:`smoothed_target_entropy`. When that entropy is *below* the head's bound, the head
could not be that confident anyway: smoothing with such a ``β`` can hardly change what is
learned. :func:`smoothing_for_entropy` gives the ``β`` whose target entropy equals the bound:
smoothing only bites above it.

The standard deviations are over all entries (population ``std``, ``ddof = 0``), in float64;
``σ_h`` over the hidden states that feed the head (after the final norm) at real tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "HeadEntropyBound",
    "entropy_lower_bound",
    "head_entropy_bound",
    "smoothed_target_entropy",
    "smoothing_for_entropy",
]


@dataclass(frozen=True)
class HeadEntropyBound:
    """The bound and its ingredients (entropies in nats)."""

    vocab_size: int
    width: int
    sigma_head: float
    sigma_hidden: float
    rho: float
    gamma: float
    bound: float
    log_vocab: float
    beta_threshold: float
    n_hidden: int

    @property
    def fraction_of_max(self) -> float:
        """``bound / log|V|``: 0 = the head can be one-hot, 1 = it is forced to uniform."""
        return self.bound / self.log_vocab

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "fraction_of_max": self.fraction_of_max}

    def reading(self, observed: torch.Tensor | None = None) -> str:
        """One line on what the bound implies for label smoothing at this |V| and D.

        With ``observed`` (entropies the head actually produced on sampled tokens), the line
        also says whether they respect the bound; when over 1% of them fall below it, the
        bound's premise does not hold for this head and the line says so instead of drawing
        the bound's conclusion.
        """
        head = (
            f"SPEC §5 bound H >= {self.bound:.3g} nats ({100 * self.fraction_of_max:.3g}% of "
            f"log|V| = {self.log_vocab:.2f}) at |V| = {self.vocab_size}, D = {self.width}, "
            f"rho = {self.rho:.3g}"
        )
        if self.beta_threshold < 1e-3:
            implied = (
                ": the head can express near one-hot predictions, so label smoothing of any "
                "useful size (beta >= 0.001) still changes the optimum"
            )
        else:
            implied = (
                f": the head could not be more confident than a target smoothed with beta = "
                f"{self.beta_threshold:.3g}, so smoothing below that would hardly matter"
            )
        if observed is None or observed.numel() == 0:
            return head + implied + "."
        obs = observed.detach().to(torch.float64).flatten()
        below = float((obs < self.bound).double().mean())
        if below <= 0.01:
            return (
                head
                + implied
                + f"; {100 * below:.3g}% of {obs.numel()} sampled tokens fall below it."
            )
        p05 = float(torch.quantile(obs, 0.05))
        beta_obs = smoothing_for_entropy(p05, self.vocab_size)
        return (
            head
            + f", which would mean smoothing below beta = {self.beta_threshold:.3g} hardly matters"
            + f"; but {100 * below:.3g}% of {obs.numel()} sampled tokens have lower entropy "
            + f"(5th percentile {p05:.3g} nats, as confident as a beta = {beta_obs:.2g} target), "
            + "so the bound's premise (logit spread <= rho*sqrt(D)) fails for this head and "
            + f"label smoothing with beta above about {beta_obs:.2g} still changes the optimum."
        )


def entropy_lower_bound(rho: float, width: int, vocab_size: int) -> tuple[float, float]:
    """``(bound, γ)`` of SPEC §5 for ``ρ``, ``D = width`` and ``|V| = vocab_size`` (float64)."""
    if vocab_size < 2 or width < 1:
        raise ValueError(f"need |V| >= 2 and D >= 1, got |V| = {vocab_size}, D = {width}")
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho: must be finite and >= 0, got {rho}")
    V, D = vocab_size, width
    a = rho * math.sqrt(D * V / (V - 1))
    x = math.log(V - 1) - a
    softplus = x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
    sigmoid = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    return softplus + a * sigmoid, math.exp(-a)


def smoothed_target_entropy(beta: float, vocab_size: int) -> float:
    """Entropy (nats) of the label-smoothed one-hot target: ``1 − β + β/|V|`` on the label,
    ``β/|V|`` on each other token."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: must lie in [0, 1], got {beta}")
    V = vocab_size
    top, rest = 1.0 - beta + beta / V, beta / V
    h = -top * math.log(top)
    if rest > 0:
        h -= (V - 1) * rest * math.log(rest)
    return h


def smoothing_for_entropy(entropy: float, vocab_size: int, tol: float = 1e-12) -> float:
    """The ``β ∈ [0, 1]`` whose smoothed target has this entropy (bisection: the target
    entropy rises monotonically from 0 at ``β = 0`` to ``log|V|`` at ``β = 1``)."""
    if entropy <= 0:
        return 0.0
    if entropy >= math.log(vocab_size):
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if smoothed_target_entropy(mid, vocab_size) < entropy:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def head_entropy_bound(head_weight: torch.Tensor, hidden: torch.Tensor) -> HeadEntropyBound:
    """The bound for head weights ``[V, D]`` and hidden-state samples ``[N, D]``."""
    if head_weight.ndim != 2:
        raise ValueError(f"head_weight: expected shape [V, D], got {list(head_weight.shape)}")
    V, D = head_weight.shape
    if hidden.ndim != 2 or hidden.shape[1] != D or hidden.shape[0] < 1:
        raise ValueError(f"hidden: expected shape [N >= 1, {D}], got {list(hidden.shape)}")
    sigma_c = float(head_weight.detach().to(torch.float64).std(correction=0))
    sigma_h = float(hidden.detach().to(torch.float64).std(correction=0))
    rho = sigma_c * sigma_h
    bound, gamma = entropy_lower_bound(rho, D, V)
    return HeadEntropyBound(
        vocab_size=V,
        width=D,
        sigma_head=sigma_c,
        sigma_hidden=sigma_h,
        rho=rho,
        gamma=gamma,
        bound=bound,
        log_vocab=math.log(V),
        beta_threshold=smoothing_for_entropy(bound, V),
        n_hidden=int(hidden.shape[0]),
    )
